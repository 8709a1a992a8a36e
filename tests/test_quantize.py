"""Static int8 quantization: tracks the float graph on real images, keys its own spec, and runs\nthrough embed / train / predict."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from skimage import data

from featurebank.errors import FeaturebankError
from featurebank.extractor._extractor import Extractor
from featurebank.extractor.graphs._int8 import int8_graph_path, quantize_feature_graph


def _photos(ex: Extractor, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    srcs = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    out = []
    for i in range(n):
        a = srcs[i % len(srcs)]
        h, w = a.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1)), int(w * rng.uniform(0.6, 1))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        img = Image.fromarray(np.ascontiguousarray(a[y:y + ch, x:x + cw]))
        out.append(ex.decode(np.asarray(img)))
    return np.stack(out)


@pytest.fixture(scope="module")
def int8(model_cache):
    fp32 = Extractor("efficientnet_lite0", layers=("head",), threads=1)
    calibration = list(_photos(fp32, 16, 0))
    return fp32, Extractor("efficientnet_lite0", layers=("head",), threads=1, precision="int8",
                           calibration=calibration)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.slow  # the int8 fixture calibrates and quantizes Lite0: ~30-60 s on 2 cores
def test_int8_graph_tracks_fp32_with_a_spec_of_its_own(int8, model_cache):
    fp32, q = int8
    model = q.graph.model
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    assert model.ByteSize() < 0.5 * fp32.graph.model.ByteSize()  # int8 weights
    pixels = _photos(fp32, 8, 1)  # held-out crops, not the calibration ones
    f, v = fp32.embed_pixels(pixels)[0], q.embed_pixels(pixels)[0]
    assert v.shape == f.shape and v.dtype == np.float32
    # measured 0.95 mean on Fashion-MNIST (benchmarks/int8.py); a broken graph gives < 0.5
    assert _cosines(v, f).mean() > 0.85, _cosines(v, f)
    spec, float_spec = q.specs[0], fp32.specs[0]
    assert spec.quantization.startswith("int8-")
    assert spec.fingerprint() != float_spec.fingerprint()
    assert replace(spec, quantization=None).fingerprint() == float_spec.fingerprint()
    assert type(spec).from_json(spec.to_json()) == spec  # the tag survives the store and models
    # cached by tag: a new extractor finds the same graph without calibrating, same vectors
    path = int8_graph_path(spec.quantization)
    mtime = path.stat().st_mtime_ns
    again = Extractor("efficientnet_lite0", layers=("head",), threads=1, precision="int8",
                      calibration=spec.quantization)
    np.testing.assert_array_equal(again.embed_pixels(pixels)[0], v)
    assert path.stat().st_mtime_ns == mtime
    shipped = pickle.loads(pickle.dumps(q))  # to workers: the tag travels, not 16 images
    assert len(pickle.dumps(q)) < 10_000 and shipped.options.calibration == spec.quantization
    np.testing.assert_array_equal(shipped.embed_pixels(pixels)[0], v)


@pytest.mark.slow
def test_int8_tag_refuses_another_graph_and_missing_files(int8):
    _, q = int8
    tag = q.specs[0].quantization
    other = Extractor("efficientnet_lite0", layers=("blocks.13",), precision="int8", calibration=tag)
    with pytest.raises(FeaturebankError, match="quantized from another feature graph"):
        _ = other.specs
    with pytest.raises(FeaturebankError, match="not in the cache"):
        _ = Extractor(precision="int8", calibration="int8-0123456789abcdef").specs
    with pytest.raises(FeaturebankError, match="needs calibration images"):
        _ = Extractor(precision="int8").specs


def test_int8_refused_with_the_ray_engine(digits_dir, tmp_path):
    from featurebank.extractor import embed_collection

    with pytest.raises(FeaturebankError, match="engine 'local' only"):
        embed_collection([str(digits_dir)], tmp_path / "x.h5", precision="int8", engine="ray")
    assert not (tmp_path / "x.h5").exists()  # refused before any store is made


def test_embed_int8_cli_train_predict(model_cache, digits_dir, tmp_path, capsys):
    """featurebank embed --precision int8 calibrates on the collection, a second run appends
    to the same int8 feature set, and a model trained on it predicts through the same graph."""
    import h5py

    from featurebank.cli import main

    classes = sorted(p.name for p in digits_dir.iterdir())
    train = tmp_path / "train"
    for c in classes:  # 12 digits per class to embed, 4 more for a second run and prediction
        files = sorted((digits_dir / c).glob("*.png"))
        (train / c).mkdir(parents=True)
        for f in files[:12]:
            (train / c / f.name).write_bytes(f.read_bytes())
    store = tmp_path / "digits.h5"
    args = ["embed", str(train), "--store", str(store), "--precision", "int8",
            "--calibration", "24", "--no-progress"]
    assert main(args) == 0
    for c in classes:
        for f in sorted((digits_dir / c).glob("*.png"))[12:14]:
            (train / c / f.name).write_bytes(f.read_bytes())
    assert main(args) == 0
    with h5py.File(store, "r") as h5:
        sets = list(h5["features"])
        assert len(sets) == 1, sets  # the second run kept the store's calibration
        assert len(h5["features"][sets[0]]["X"]) == 140
    model = tmp_path / "m.joblib"
    assert main(["train", str(store), "-o", str(model)]) == 0
    held_out = [sorted((digits_dir / c).glob("*.png"))[20] for c in classes]
    capsys.readouterr()
    assert main(["predict", str(model), *map(str, held_out), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in rows] == list(map(str, held_out))
    assert sum(r["label"] == c for r, c in zip(rows, classes, strict=True)) >= 7


def test_quantize_rejects_empty_calibration(tmp_path):
    ex = Extractor("efficientnet_lite0", layers=("head",), threads=1)
    with pytest.raises(FeaturebankError, match="calibration"):
        quantize_feature_graph(ex.graph.model, [], tmp_path / "x.onnx")
