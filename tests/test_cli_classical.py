"""featurebank train / evaluate / predict / sweep on small stores of real images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from featurebank.cli import main
from featurebank.datasets import load_labelled_images, subsample, write_image_folder

LAYERS = ("blocks.13", "head")


@pytest.fixture(scope="module")
def stores(model_cache, tmp_path_factory):
    """Train (8 per class) and test (4 per class) stores of real images, two layers each."""
    from featurebank.extractor import embed_collection

    root = tmp_path_factory.mktemp("cli_classical")
    X, y, classes = load_labelled_images("test")
    idx = subsample(y, 120, seed=3)
    tr, te = idx[::3], np.setdiff1d(idx, idx[::3])
    tr, te = np.concatenate([tr, te[:40]]), te[40:]
    out = {}
    for split, rows in (("train", tr), ("test", te)):
        write_image_folder(X[rows], y[rows], root / split, classes)
        out[split] = root / f"{split}.h5"
        embed_collection([str(root / split)], out[split], layers=LAYERS, progress=False)
    out["root"] = root
    return out


@pytest.mark.slow
def test_train_evaluate_report(stores, tmp_path, capsys):
    model = tmp_path / "m.joblib"
    assert main(["train", str(stores["train"]), "-o", str(model), "--layer", "blocks.13",
                 "--layer", "head"]) == 0
    assert model.is_file()
    capsys.readouterr()
    report = tmp_path / "report"
    assert main(["evaluate", str(model), str(stores["test"]), "--report", str(report)]) == 0
    out = capsys.readouterr().out
    printed = float(out.split("accuracy: ")[1].split()[0])
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(printed, abs=1e-4)
    assert metrics["n"] == 40 and 0.3 < metrics["accuracy"] <= 1.0  # 10 classes: chance is 0.1
    assert set(metrics) >= {"balanced_accuracy", "macro_f1", "per_class_accuracy",
                            "raw_pixel_baseline_accuracy"}
    for png in ("confusion.png", "confusion_raw_pixels.png"):
        with Image.open(report / png) as im:
            im.verify()
            assert im.format == "PNG"


def test_evaluate_on_training_store_needs_holdout(stores, tmp_path, capsys):
    model = tmp_path / "m.joblib"
    assert main(["train", str(stores["train"]), "-o", str(model), "--layer", "head",
                 "--no-baseline"]) == 0
    assert main(["evaluate", str(model), str(stores["train"])]) == 1
    assert "used to train" in capsys.readouterr().err
    assert main(["train", str(stores["train"]), "-o", str(model), "--layer", "head",
                 "--holdout", "0.25", "--no-baseline"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(model), str(stores["train"])]) == 0
    assert "images: 20" in capsys.readouterr().out


def test_spec_mismatch_is_a_clear_error(stores, tmp_path, capsys):
    from featurebank.extractor import embed_collection

    model = tmp_path / "m.joblib"
    assert main(["train", str(stores["train"]), "-o", str(model), "--layer", "blocks.13",
                 "--no-baseline"]) == 0
    other = tmp_path / "other.h5"  # the same images, but only the head layer
    embed_collection([str(stores["root"] / "test")], other, layers=("head",), progress=False)
    capsys.readouterr()
    assert main(["evaluate", str(model), str(other)]) == 1
    err = capsys.readouterr().err
    assert "blocks.13" in err and "head" in err and "fingerprint" in err
    # a sweep has no classifier: the message says what needs the missing spec (issue 22)
    assert main(["sweep", str(stores["train"]), "--test", str(other)]) == 1
    err = capsys.readouterr().err
    assert "classifier" not in err and "?" not in err, err
    assert f"the sweep of {stores['train']} needs" in err and "blocks.13" in err, err
    # the folder that was embedded, given instead of its store: named as a folder (issue 22)
    folder = stores["root"] / "test"
    assert main(["evaluate", str(model), str(folder)]) == 1
    err = capsys.readouterr().err
    assert "is a folder, not a feature store" in err and "does not exist" not in err, err


@pytest.fixture(scope="module")
def head_model(stores, tmp_path_factory):
    """A classifier on the train store's head features, trained once for the predict tests."""
    model = tmp_path_factory.mktemp("head_model") / "m.joblib"
    assert main(["train", str(stores["train"]), "-o", str(model), "--layer", "head",
                 "--no-baseline"]) == 0
    return model


def test_predict_embeds_with_the_model_spec(stores, head_model, capsys):
    model = head_model
    images = sorted((stores["root"] / "test").rglob("*.png"))[:3]
    capsys.readouterr()
    assert main(["predict", str(model), *map(str, images), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in lines] == list(map(str, images))
    from featurebank.classical import load_trained
    from featurebank.extractor.store._store import FeatureStore

    loaded = load_trained(model)
    feats = FeatureStore(stores["test"]).read("head")
    for r in lines:
        row = list(feats.paths).index(r["path"])
        expected = loaded.estimator.predict_proba(feats.X[row:row + 1].astype(np.float32))[0]
        assert r["label"] == str(loaded.estimator.classes_[expected.argmax()])
        assert r["probability"] == pytest.approx(expected.max(), abs=0.02)  # float16 store rows


def test_sweep_table_and_png(stores, tmp_path, capsys):
    report = tmp_path / "sweep"
    assert main(["sweep", str(stores["train"]), "--test", str(stores["test"]),
                 "--report", str(report)]) == 0
    out = capsys.readouterr().out
    rows = json.loads((report / "sweep.json").read_text())["rows"]
    by_layer = {r["layer"]: r for r in rows}
    concat = next(name for name in by_layer if "+" in name)
    assert set(by_layer) == {"blocks.13", "head", concat}
    # shallow to deep, so the FLOPs line of the plot never goes down (store order is by hash)
    assert [r["layer"] for r in rows] == ["blocks.13", "head", concat]
    shares = [r["flops_share"] for r in rows]
    assert shares == sorted(shares)
    assert set(concat.split("+")) == {"blocks.13", "head"}
    assert [by_layer[k]["dim"] for k in ("blocks.13", "head", concat)] == [192, 1280, 1472]
    assert all(0.0 < r["flops_share"] <= 1.0 for r in rows)
    assert by_layer["blocks.13"]["flops_share"] < by_layer["head"]["flops_share"]
    assert by_layer[concat]["flops_share"] == by_layer["head"]["flops_share"]
    for r in rows:
        assert f"{r['accuracy']:.4f}" in out
    with Image.open(report / "sweep.png") as im:
        im.verify()


@pytest.fixture(scope="module")
def odd_store(stores, tmp_path_factory):
    """Test images of 3 known classes plus a class the models never saw ('mystery'), in a
    store of its own (its images can be deleted without harming the shared stores)."""
    import shutil

    from featurebank.extractor import embed_collection

    root = tmp_path_factory.mktemp("odd")
    classes = sorted(p.name for p in (stores["root"] / "test").iterdir())
    classes = [c for c in classes if len(list((stores["root"] / "test" / c).glob("*.png"))) >= 3]
    for label, src in [*((c, c) for c in classes[:3]), ("mystery", classes[3])]:
        (root / "images" / label).mkdir(parents=True)
        for p in sorted((stores["root"] / "test" / src).glob("*.png"))[:3]:
            shutil.copy(p, root / "images" / label / p.name)
    embed_collection([str(root / "images")], root / "odd.h5", layers=LAYERS, progress=False)
    return root


@pytest.fixture(scope="module")
def trained(stores, tmp_path_factory):
    model = tmp_path_factory.mktemp("model") / "m.joblib"
    assert main(["train", str(stores["train"]), "-o", str(model), "--layer", "blocks.13",
                 "--layer", "head"]) == 0
    return model


def test_unseen_labels_are_an_error_or_scored_wrong(trained, odd_store, tmp_path, capsys):
    import warnings

    store = odd_store / "odd.h5"
    capsys.readouterr()
    assert main(["evaluate", str(trained), str(store)]) == 1
    err = capsys.readouterr().err
    assert "labels the classifier never saw: mystery (3)" in err and "--unseen-as-wrong" in err
    report = tmp_path / "report"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["evaluate", str(trained), str(store), "--unseen-as-wrong",
                     "--report", str(report)]) == 0
    assert not [w for w in caught if "sklearn" in w.filename], [str(w.message) for w in caught]
    out = capsys.readouterr().out
    assert "note: 3 images of labels the classifier never saw (mystery) are counted as wrong" in out
    metrics = json.loads((report / "metrics.json").read_text())
    n = len(list((odd_store / "images").rglob("*.png")))
    assert metrics["n"] == n and metrics["unseen_labels"] == {"mystery": 3}
    assert metrics["accuracy"] <= (n - 3) / n and metrics["per_class_accuracy"]["mystery"] == 0.0


def test_confusion_title_names_every_feature_set(trained, stores, tmp_path, monkeypatch):
    import featurebank.classical._workflow as wf

    titles = []
    original = wf.plot_confusion

    def spy(y, pred, labels, path, title):
        titles.append(title)
        return original(y, pred, labels, path, title)

    monkeypatch.setattr(wf, "plot_confusion", spy)
    assert main(["evaluate", str(trained), str(stores["test"]), "--report", str(tmp_path)]) == 0
    flat = titles[0].replace("\n", " ")
    assert "blocks.13/avg" in flat and "head/avg" in flat and " + " in flat


def test_missing_images_are_named_before_training_and_no_baseline_skips(odd_store, tmp_path,
                                                                          capsys, monkeypatch):
    import shutil

    import featurebank.classical._workflow as wf

    images = tmp_path / "images"
    shutil.copytree(odd_store / "images", images)
    store = tmp_path / "s.h5"
    from featurebank.extractor import embed_collection

    embed_collection([str(images)], store, layers=("head",), progress=False)
    gone = sorted(images.rglob("*.png"))[:2]
    for p in gone:
        p.unlink()
    fits = []
    real_fit = wf.LinearProbe.fit
    monkeypatch.setattr(wf.LinearProbe, "fit", lambda self, X, y: fits.append(1) or real_fit(self, X, y))
    capsys.readouterr()
    assert main(["train", str(store), "-o", str(tmp_path / "m.joblib")]) == 1
    err = capsys.readouterr().err
    assert f"2 of {len(list(images.rglob('*.png'))) + 2} images" in err and str(gone[0]) in err and "--no-baseline" in err
    assert fits == []  # refused before any fitting
    assert main(["train", str(tmp_path / "s.h5"), "-o", str(tmp_path / "none" / "m.joblib"),
                 "--no-baseline"]) == 1
    assert "folder" in capsys.readouterr().err and fits == []  # unwritable output: before training too
    assert main(["train", str(store), "-o", str(tmp_path / "m.joblib"), "--no-baseline"]) == 0
    assert fits


@pytest.mark.slow
def test_predict_accepts_a_folder_like_embed(stores, tmp_path, capsys):
    model = tmp_path / "m.joblib"
    assert main(["train", str(stores["train"]), "-o", str(model), "--layer", "head",
                 "--no-baseline"]) == 0
    folder = stores["root"] / "test"
    capsys.readouterr()
    assert main(["predict", str(model), str(folder), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(r["path"] for r in lines) == sorted(str(p) for p in folder.rglob("*.png"))
    assert main(["predict", str(model), str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_ctrl_c_says_a_rerun_resumes(monkeypatch, capsys):
    import featurebank.cli.store_cmds as store_cmds

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(store_cmds, "run_info", interrupted)
    assert main(["store", "info", "x.h5"]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err.lower()


def test_predict_prints_every_file_and_exits_1_for_a_broken_one(stores, head_model, tmp_path,
                                                                capsys):
    """featurebank.predict is the one predict path: the CLI prints what predict_images yields,
    a broken file gets an error line in its place, the others are still printed, exit 1."""
    from featurebank.predict import Prediction, load_classifier, predict_images, ranked

    model = head_model
    images = sorted((stores["root"] / "test").rglob("*.png"))[:2]
    broken = tmp_path / "broken.png"
    broken.write_bytes(images[0].read_bytes()[:40])  # a PNG cut short
    inputs = [str(images[0]), str(broken), str(images[1])]
    capsys.readouterr()
    assert main(["predict", str(model), *inputs, "--json", "--top", "3"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["path"] for d in lines] == inputs and "error" in lines[1]
    expected = list(predict_images(load_classifier(model), inputs, top=3))
    assert [p.to_dict() for p in expected] == lines
    assert len(lines[0]["top"]) == 3 and lines[0]["label"] == lines[0]["top"][0]["label"]
    assert ranked([0.1, 0.7, 0.2], ["a", "b", "c"], top=2) == [("b", 0.7), ("c", 0.2)]
    assert Prediction("x", error="cut short").to_line() == "x\terror: cut short"


def test_report_and_test_keywords_are_one_name_across_the_api(tmp_path, stores):
    """``report`` and ``test`` as ``--report`` and ``--test`` everywhere (compare, finetune,
    evaluate, sweep); the former ``report_dir``/``test_store`` still work, with a warning, and
    both spellings at once are refused."""
    from featurebank.classical import sweep
    from featurebank.errors import OptionError

    train, test = stores["train"], stores["test"]
    rows = sweep(train, test=test, report=tmp_path / "new")
    with pytest.warns(DeprecationWarning) as caught:
        old = sweep(train, test_store=test, report_dir=tmp_path / "old")
    assert sorted(str(w.message) for w in caught) == [
        "sweep(report_dir=...) is deprecated; use report=...",
        "sweep(test_store=...) is deprecated; use test=..."]
    assert [r["accuracy"] for r in old] == [r["accuracy"] for r in rows]
    assert (tmp_path / "new" / "sweep.json").read_text() == (tmp_path / "old" / "sweep.json").read_text()
    with pytest.raises(OptionError, match="report and report_dir"):
        sweep(train, report=tmp_path / "a", report_dir=tmp_path / "b")
