"""featurebank demo end to end at a tiny size (real digits; the default size is measured in the README)."""

from __future__ import annotations

import json

from PIL import Image

from featurebank.cli import main


def test_demo_digits_tiny(model_cache, tmp_path, capsys):
    work = tmp_path / "demo"
    assert main(["demo", "--dataset", "digits", "--train-images", "40", "--test-images", "30", "--work-dir",
                 str(work), "--layer", "head", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "accuracy: " in out and "raw-pixel baseline accuracy" in out
    assert len(list((work / "images" / "train").rglob("*.png"))) == 40
    assert len(list((work / "images" / "test").rglob("*.png"))) == 30
    demo = json.loads((work / "report" / "demo.json").read_text())
    metrics = json.loads((work / "report" / "metrics.json").read_text())
    assert demo["accuracy"] == metrics["accuracy"] and metrics["n"] == 30
    assert demo["accuracy"] > 0.3  # 10 classes: chance is 0.1
    printed = float(out.split("\naccuracy: ")[1].split()[0])
    assert abs(printed - metrics["accuracy"]) < 1e-4
    with Image.open(work / "report" / "confusion.png") as im:
        im.verify()
