"""The command line with a foreign model and no Python: adopt -> layers -> embed -> train ->
evaluate -> predict (-> serve), with the models of benchmarks/harness/foreign_models.py."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
from benchmarks.harness.foreign_models import (  # noqa: E402 - torch first, or skip
    CONVENTIONS,
    LITE_FLAGS,
    conventions_of,
    make_foreign,
    make_foreign_lite,
)


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    return make_foreign(tmp_path_factory.mktemp("foreign_models"))


@pytest.fixture(scope="module")
def foreign_lite(tmp_path_factory):
    return make_foreign_lite(tmp_path_factory.mktemp("foreign_lite"))


def cli(capsys, *argv) -> tuple[int, str, str]:
    from featurebank.cli import main

    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    """80 real images in 10 classes (Fashion-MNIST when installed, else scikit-learn digits)."""
    from featurebank.datasets import load_labelled_images, subsample, write_image_folder

    X, y, classes = load_labelled_images("test")
    idx = subsample(y, 80, seed=5)
    return write_image_folder(X[idx], y[idx], tmp_path_factory.mktemp("small") / "images", classes)


def test_cli_adopt_layers_embed_train_evaluate_predict(foreign, small_folder, tmp_path, capsys,
                                                       monkeypatch):
    conv, src, _ = foreign[CONVENTIONS[1].name]  # NHWC, BGR, 0-255 mean-only, opaque, batch 1
    conventions = tmp_path / "conventions.json"
    conventions.write_text(json.dumps({**conventions_of(conv), "resize": 36}))
    adopted, store, model = tmp_path / "adopted.onnx", tmp_path / "s.h5", tmp_path / "m.joblib"
    # a foreign file without its conventions: a clear error and no store left behind
    code, _, err = cli(capsys, "embed", small_folder, "--model", src, "--store", store)
    assert code == 1 and "featurebank adopt" in err and not store.exists()
    code, out, _ = cli(capsys, "adopt", src, "-o", adopted, "--preprocessing", conventions)
    assert code == 0 and "nhwc bgr 0-255" in out and adopted.is_file()
    code, out, _ = cli(capsys, "layers", adopted, "--json")
    layers = {la["name"]: la for la in json.loads(out)}
    assert layers["head"]["layout"] == "NHWC" and layers["pool"]["shape"] == [24]
    code, out, _ = cli(capsys, "layers", adopted)
    assert code == 0 and any(line.split()[:1] == ["head"] and "NHWC" in line.split()
                             for line in out.splitlines())
    code, out, _ = cli(capsys, "embed", small_folder, "--model", adopted, "--layer", "stage.2",
                       "--layer", "pool", "--store", store, "--no-progress", "--json")
    assert code == 0 and json.loads(out)["embedded"] == 80
    # the same conventions stated one-off on the original file: the same features, all cached
    code, out, _ = cli(capsys, "embed", small_folder, "--model", src, "--preprocessing",
                       conventions, "--layer", "pool", "--store", store, "--no-progress", "--json")
    assert code == 0 and json.loads(out)["cached"] == 80 and json.loads(out)["embedded"] == 0
    assert cli(capsys, "train", store, "-o", model, "--layer", "pool", "--holdout", "0.25",
               "--no-baseline")[0] == 0
    code, out, _ = cli(capsys, "evaluate", model, store)
    assert code == 0 and "accuracy" in out
    # the sweep finds the adopted model's catalogue by digest: depth order and FLOPs shares
    code, out, _ = cli(capsys, "sweep", store, "--report", tmp_path / "sweep")
    rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["rows"]
    assert code == 0 and [r["layer"] for r in rows][:2] == ["stage.2", "pool"]
    assert 0 < rows[0]["flops_share"] < rows[1]["flops_share"] <= 1.0
    image = next(small_folder.rglob("*.png"))
    adopted.unlink()  # the classifier finds its model by digest, in the cache
    code, out, _ = cli(capsys, "predict", model, image, "--json")
    assert code == 0
    first = json.loads(out)
    monkeypatch.setenv("FEATUREBANK_CACHE", str(tmp_path / "empty-cache"))
    code, _, err = cli(capsys, "predict", model, image)
    assert code == 1 and "--model" in err and conv_digest(src)[:16] in err
    code, out, _ = cli(capsys, "predict", model, image, "--json", "--model", src)  # the original
    assert code == 0 and json.loads(out)["probability"] == pytest.approx(first["probability"])


def conv_digest(path) -> str:
    from featurebank.spec import sha256_file

    return sha256_file(str(path))


@pytest.mark.slow
def test_cli_pretrained_foreign_end_to_end_with_serve(foreign_lite, small_folder, tmp_path,
                                                      capsys, model_cache):
    """The converted Lite0: adopt (flags) -> layers -> embed (a stage and pool) -> train ->
    evaluate -> predict -> serve, all from the command line."""

    import httpx

    from featurebank.export import imagenet_classes
    from tests._serving import served

    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(imagenet_classes()))
    adopted, store, model = tmp_path / "lite.onnx", tmp_path / "s.h5", tmp_path / "m.joblib"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in LITE_FLAGS.items()]
    assert cli(capsys, "adopt", foreign_lite, "-o", adopted, *flags, "--classes", classes)[0] == 0
    code, out, _ = cli(capsys, "layers", adopted, "--json")
    names = [la["name"] for la in json.loads(out)]
    assert {"stage.1", "stage.4", "head", "pool", "logits"} <= set(names)
    code, out, _ = cli(capsys, "embed", small_folder, "--model", adopted, "--layer", "stage.4",
                       "--layer", "pool", "--store", store, "--no-progress", "--json")
    assert code == 0 and json.loads(out)["embedded"] == 80
    assert cli(capsys, "train", store, "-o", model, "--layer", "pool", "--holdout", "0.3")[0] == 0
    code, out, _ = cli(capsys, "evaluate", model, store)
    assert code == 0 and float(out.split("accuracy: ")[1].split()[0]) > 0.3  # chance: 0.1
    image = sorted(small_folder.rglob("*.png"))[0]
    code, out, _ = cli(capsys, "predict", model, image, "--json")
    predicted = json.loads(out)
    with served("--classifier-file", model) as base:
        r = httpx.post(base + "/v1/predictions", content=image.read_bytes(),
                       headers={"Content-Type": "image/png"}, timeout=60)
        assert r.status_code == 200, r.text
        served_prediction = r.json()["predictions"][0]
        assert served_prediction["label"] == predicted["label"]
        assert served_prediction["probability"] == pytest.approx(predicted["probability"],
                                                                 abs=1e-4)
