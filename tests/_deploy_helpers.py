"""Shared by the deploy tests: real digits in train/test folders, a small adopted foreign model,
trained classifiers, and the answers of ``featurebank predict`` and of a deployed file."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from featurebank.cli import main
from tests._collections import digit_images, write_folder

KINDS = ("logreg", "linear-svm", "rbf-svm")
REGISTRY_LAYERS = ["blocks.10", "head"]
FOREIGN_LAYERS = ["stage.2", "head"]


@pytest.fixture(scope="session", name="folders")
def folders_fixture(tmp_path_factory) -> dict[str, Path]:
    """Train and test folders of real digits, 3 classes and 2 (binary), disjoint images."""
    root = tmp_path_factory.mktemp("deploy_digits")
    images = digit_images(per_class=10)
    by_class: dict[str, list] = {}
    for item in images:
        by_class.setdefault(item[1], []).append(item)
    train = [x for items in by_class.values() for x in items[:6]]
    test = [x for items in by_class.values() for x in items[6:]]
    out = {"train3": write_folder(root / "train3", train),
           "test3": write_folder(root / "test3", test),
           "train2": write_folder(root / "train2", [x for x in train if x[1] != "two"]),
           "test2": write_folder(root / "test2", [x for x in test if x[1] != "two"])}
    return out


def _store(folder: Path, model, layers) -> Path:
    from featurebank import embed_collection

    store = folder.with_suffix(f".{Path(str(model)).stem}.h5")
    embed_collection([str(folder)], store, str(model), layers=layers, progress=False)
    return store


@pytest.fixture(scope="session", name="foreign_model")
def foreign_model_fixture(tmp_path_factory) -> Path:
    """A small foreign graph (batch fixed at 1, NHWC, BGR, 0-255, opaque names), adopted."""
    pytest.importorskip("torch", reason="the foreign test model is built with torch")
    from benchmarks.harness.foreign_models import CONVENTIONS, Tiny, conventions_of, export_module
    from featurebank.export import adopt

    conv = next(c for c in CONVENTIONS if c.batch == "fixed")
    root = tmp_path_factory.mktemp("deploy_foreign")
    src, dst = root / "foreign.onnx", root / "foreign.adopted.onnx"
    export_module(Tiny(conv.layout == "nhwc", conv.head, conv.size), conv, src)
    adopt(src, dst, **conventions_of(conv))
    return dst


def _train(store: Path, layers, kind: str, out: Path) -> Path:
    from featurebank.classical import train

    train(store, layers, kind, baseline=False).save(out)
    return out


def _cli(argv: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(argv)
    return code, buf.getvalue()


def predict_answers(classifier: Path, images: Path, model: Path | None = None) -> dict:
    """``featurebank predict --json --top 99``: path -> (label, {class: probability})."""
    argv = ["predict", str(classifier), str(images), "--json", "--top", "99"]
    code, out = _cli(argv + (["--model", str(model)] if model else []))
    assert code == 0, out
    rows = [json.loads(line) for line in out.splitlines()]
    return {r["path"]: (r["label"], {t["label"]: t["probability"] for t in r["top"]})
            for r in rows}


def fused_answers(path: Path, images: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The deployed file in plain onnxruntime, on pixels decoded as its README says."""
    from featurebank.extractor import decode
    from featurebank.spec import Preprocessing

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    description = json.loads(meta["featurebank.deploy"])
    pre = Preprocessing.from_dict(description["lineage"]["specs"][0]["model"]["preprocessing"])
    pixels = np.stack([decode(p, pre) for p in images])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    proba, label = session.run(["probabilities", "label"], {"pixels": pixels})
    return proba, label, description["classes"]
