"""The whole flow as a user runs it: the ``featurebank`` command in a folder that is neither
the repository nor the images' folder, with relative paths on the command line, and the later
steps run from yet another folder (the stores must find their images wherever they are read).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from featurebank.datasets import load_digits_images, write_image_folder

REPO = Path(__file__).resolve().parents[1]


def _fb(cwd: Path, *argv: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "featurebank", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"featurebank {' '.join(argv)}:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_embed_train_evaluate_predict_sweep_from_elsewhere(model_cache, tmp_path):
    X, y = load_digits_images()
    rng = np.random.default_rng(0)
    train, test = [], []
    for label in (0, 1, 7):
        idx = rng.permutation(np.flatnonzero(y == label))
        train += list(idx[:10])
        test += list(idx[10:15])
    images = tmp_path / "my photos"  # a space in the name, as users' folders have
    write_image_folder(X[train], y[train], images / "train")
    write_image_folder(X[test], y[test], images / "test")
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    assert REPO not in work.parents and images not in work.parents

    layers = ["--layer", "blocks.13", "--layer", "head"]
    out = _fb(work, "embed", "../my photos/train", "--store", "train.h5", *layers, "--no-progress")
    assert "embedded 30" in out and "3 label(s)" in out
    _fb(work, "embed", "../my photos/test", "--store", "test.h5", *layers, "--no-progress")

    # from another folder: the baseline re-reads the images through the stored paths
    out = _fb(elsewhere, "train", "../work/train.h5", "-o", "model.joblib", *layers)
    # the default kind is chosen by cross-validation, and the output says which and how
    assert re.search(r"trained (logreg|linear-svm|rbf-svm|knn) \(chosen by 5-fold cross-"
                     r"validation on the training images\) on 30 images, 3 classes", out), out
    assert "probabilities: " in out
    out = _fb(elsewhere, "evaluate", "model.joblib", "../work/test.h5", "--report", "report")
    metrics = json.loads((elsewhere / "report" / "metrics.json").read_text())
    assert metrics["n"] == 15 and metrics["accuracy"] > 0.5
    assert "raw_pixel_baseline_accuracy" in metrics and "raw-pixel baseline accuracy" in out

    out = _fb(elsewhere, "predict", "model.joblib", "../my photos/test", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 15 and all(Path(r["path"]).is_file() for r in rows)
    right = sum(r["label"] == Path(r["path"]).parent.name for r in rows)
    assert right / 15 == pytest.approx(metrics["accuracy"], abs=0.01)  # the same classifier

    _fb(elsewhere, "sweep", "../work/train.h5", "--test", "../work/test.h5",
        "--report", "sweep")
    sweep = json.loads((elsewhere / "sweep" / "sweep.json").read_text())["rows"]
    assert [r["layer"] for r in sweep][:2] == ["blocks.13", "head"]
    assert (elsewhere / "sweep" / "sweep.png").is_file()
    # nothing was written next to the images or in the repository's working folder
    assert sorted(p.name for p in (images / "train").iterdir()) == ["0", "1", "7"]
    assert sorted(p.name for p in work.iterdir()) == ["test.h5", "train.h5"]


def test_demo_says_it_exports_the_model_once(lite0_onnx, tmp_path, monkeypatch, capsys):
    """The first demo run exports the model (~100 s): a line says so instead of silence."""
    from featurebank.demo import _say_if_exporting

    _say_if_exporting("efficientnet_lite0", print)  # the test cache holds it: nothing to say
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("FEATUREBANK_CACHE", str(tmp_path / "empty-cache"))
    _say_if_exporting("efficientnet_lite0", print)
    out = capsys.readouterr().out
    assert "exporting efficientnet_lite0 to ONNX once" in out and str(tmp_path / "empty-cache") in out
