"""Fine-tuning from cached maps on real handwritten digits: loss falls, held-out accuracy,
ONNX logits equal torch's, `predict` and the service classify with the tuned logits, a run
killed mid-epoch resumes from its checkpoint, a store of another cut or model is refused.

One small fine-tune (120 digits, 2 epochs, cut at blocks.12 of Lite0) is shared by the module.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from featurebank.errors import FeaturebankError
from tests._finetune_checks import kill_in_epoch_2, model_input, predict_agreement

TRAIN_PER_CLASS, TEST_PER_CLASS = 12, 10
EPOCHS = 2
THREADS = 2
#: 120 digits (12 per class, 3 of them for validation) through an ImageNet trunk: the held-out
#: accuracy this small fine-tune must clear (chance is 0.10; 200 digits gave 0.78 in a trial)
MIN_TEST_ACCURACY = 0.6


@pytest.fixture(scope="module")
def digit_folders(digits_dir, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ft_digits")
    train, test = root / "train", root / "test"
    for label_dir in sorted(digits_dir.iterdir()):
        files = sorted(label_dir.glob("*.png"))
        for dest, chosen in ((train, files[:TRAIN_PER_CLASS]),
                             (test, files[TRAIN_PER_CLASS:TRAIN_PER_CLASS + TEST_PER_CLASS])):
            (dest / label_dir.name).mkdir(parents=True)
            for f in chosen:
                shutil.copy(f, dest / label_dir.name / f.name)
    return train, test


@pytest.fixture(scope="module")
def tuned(digit_folders, model_cache, tmp_path_factory):
    """The module's one fine-tune, through the Python API, exported."""
    from featurebank.finetune import finetune

    train, test = digit_folders
    out = tmp_path_factory.mktemp("ft_out") / "tuned.onnx"
    result = finetune(train, model="efficientnet_lite0", from_layer="blocks.12", test=test,
                      output=out, report=out.parent / "report", epochs=EPOCHS, val_size=0.25,
                      seed=0, threads=THREADS, progress=False)
    result.export(out)
    return result, out


@pytest.mark.slow
def test_small_finetune_learns_and_reports(tuned, model_cache):
    result, out = tuned
    h = result.history
    assert [r["epoch"] for r in h] == list(range(1, EPOCHS + 1))
    assert h[-1]["train_loss"] < h[0]["train_loss"]  # training loss falls
    assert result.test_accuracy >= MIN_TEST_ACCURACY
    assert 1 <= result.best_epoch <= EPOCHS
    assert result.val_accuracy == max(r["val_accuracy"] for r in h)
    assert result.val_accuracy == h[result.best_epoch - 1]["val_accuracy"]
    # only the layers above the cut are in the trained module: blocks 13-15 of Lite0's 16
    assert len(result.top.blocks) == 3
    report = json.loads((out.parent / "report" / "finetune.json").read_text())
    # written once, by export: it names the file and the export's time (issue 31)
    assert report["model_file"] == str(out) and "export" in report["seconds"]
    assert report["test_accuracy"] == result.test_accuracy
    assert report["probe"]["test_accuracy"] == result.probe["test_accuracy"]
    assert (out.parent / "report" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["chosen"] == result.chosen and report["choice"]["images"] == 10 * TRAIN_PER_CLASS
    # the maps were stored unpooled, float16, in the cache folder (not beside the output)
    from featurebank.extractor import FeatureStore

    (fs,) = FeatureStore(result.train_store).feature_sets()
    assert (fs.spec.layer, fs.spec.pool, fs.dtype, fs.dim) == ("blocks.12", "none", "float16",
                                                               192 * 7 * 7)
    assert result.train_store.parent.parent == model_cache / "maps"
    assert result.train_store.name == fs.fingerprint + ".h5"


@pytest.mark.slow
def test_exported_onnx_equals_torch_and_carries_lineage(tuned, digit_folders):
    import onnxruntime as ort
    import torch

    from featurebank.export import build_torch_model, read_onnx_metadata
    from featurebank.finetune import load_tuned
    from featurebank.finetune._top import state_sha256

    result, out = tuned
    full = result.torch_model()
    images = sorted(digit_folders[1].rglob("*.png"))[::15][:8]
    x = model_input(out, images)
    with torch.no_grad():
        want = full(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"input": x})[0]
    assert got.shape == (len(images), 10)
    assert np.abs(got - want).max() <= 1e-4
    lineage = load_tuned(out).lineage
    assert lineage["base_weights_sha256"] == build_torch_model("efficientnet_lite0").weights_sha256
    assert lineage["tuned_weights_sha256"] == state_sha256(full.state_dict())
    assert lineage["tuned_weights_sha256"] == read_onnx_metadata(out).spec.weights_sha256
    assert lineage["train_feature_set"] == result.train_fingerprint
    assert lineage["val_accuracy"] == result.val_accuracy
    assert lineage["classes"] == [str(d) for d in range(10)] and lineage["from_layer"] == "blocks.12"


@pytest.mark.slow
def test_predict_and_serve_classify_with_the_tuned_logits(tuned, digit_folders, capsys):
    from featurebank.cli import main

    result, out = tuned
    test_dir = digit_folders[1]
    capsys.readouterr()
    assert main(["predict", str(out), str(test_dir), "--json"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(answers) == 10 * TEST_PER_CLASS
    # pixels -> ONNX (float32) agree with the training code's evaluation from cached float16 maps
    assert np.mean(predict_agreement(result, answers)) >= 0.98
    accuracy = np.mean([a["label"] == Path(a["path"]).parent.name for a in answers])
    assert accuracy == pytest.approx(result.chosen_test_accuracy, abs=0.02)

    pytest.importorskip("fastapi", reason="the service extra is not installed")
    from fastapi.testclient import TestClient

    from featurebank.service import create_app
    from featurebank.spec import FeatureOptions

    files = [Path(a["path"]) for a in answers[:6]]
    with TestClient(create_app(FeatureOptions(model=str(out)))) as client:
        r = client.post("/v1/predictions", files=[("files", (p.name, p.read_bytes(), "image/png"))
                                                  for p in files])
        assert r.status_code == 200, r.text
        served = r.json()["predictions"]
    for s, a in zip(served, answers[:6], strict=True):
        assert s["label"] == a["label"]
        assert s["probability"] == pytest.approx(a["probability"], abs=1e-5)


@pytest.mark.slow
def test_evaluate_scores_a_tuned_file_or_says_how(tuned, digit_folders, tmp_path, capsys):
    """`evaluate tuned.onnx store.h5` (issue 31: it answered "not a featurebank model
    (KeyError)"): on a store without its logits it says how to make one; on one with them it
    scores exactly what `predict` answers, and notes that the training images are unknown."""
    from featurebank.cli import main

    result, out = tuned
    test_dir = digit_folders[1]
    other, logits = tmp_path / "other.h5", tmp_path / "logits.h5"
    assert main(["embed", str(test_dir), "--store", str(other), "--layer", "head"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), str(other)]) == 1
    err = capsys.readouterr().err
    assert "has no feature set" in err and "logits" in err and "Traceback" not in err, err
    assert main(["embed", str(test_dir), "--store", str(logits), "--model", str(out),
                 "--layer", "logits"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), str(logits), "--report", str(tmp_path / "r")]) == 0
    assert "does not record which images trained it" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["n"] == 10 * TEST_PER_CLASS
    assert metrics["accuracy"] == pytest.approx(result.chosen_test_accuracy, abs=0.02)


@pytest.mark.slow
def test_tuned_file_works_as_a_model_for_embedding(tuned, digit_folders):
    """Below the cut the tuned file is the base model; above it, its own weights (the base
    model's when the probe was chosen) and its own spec."""
    from featurebank.extractor import Extractor

    result, out = tuned
    images = [str(p) for p in sorted(digit_folders[1].rglob("*.png"))[:4]]
    base = Extractor("efficientnet_lite0", layers=("blocks.12", "blocks.14"), pool="avg")
    mine = Extractor(str(out), layers=("blocks.12", "blocks.14"), pool="avg")
    b, m = base.embed(images), mine.embed(images)
    np.testing.assert_allclose(m["blocks.12"], b["blocks.12"], atol=1e-5)
    if result.chosen == "finetuned":
        assert np.abs(m["blocks.14"] - b["blocks.14"]).max() > 1e-3  # the tuned layers changed
    else:  # the probe: the frozen top, a new head
        np.testing.assert_allclose(m["blocks.14"], b["blocks.14"], atol=1e-5)
    assert {s.fingerprint() for s in mine.specs}.isdisjoint(s.fingerprint() for s in base.specs)


@pytest.mark.slow
def test_tuned_file_deploys_with_predicts_answers(tuned, digit_folders, tmp_path):
    """`featurebank deploy tuned.onnx`: pixels in, the softmax of the tuned logits out, as
    `predict` ranks them, in one file and in a Triton repository checked with Triton's own
    model-config protobuf (issue 33)."""
    from tests._deploy_helpers import _cli, fused_answers, predict_answers

    _, out = tuned
    fused, repo = tmp_path / "tuned.deploy.onnx", tmp_path / "repo"
    code, said = _cli(["deploy", str(out), "-o", str(fused), "--triton", str(repo)])
    assert code == 0, said
    expected = predict_answers(out, digit_folders[1])
    paths = sorted(expected)
    for path in (fused, repo / "tuned" / "1" / "model.onnx"):
        proba, label, classes = fused_answers(path, paths)
        want = np.array([[expected[p][1][c] for c in classes] for p in paths])
        np.testing.assert_allclose(proba, want, rtol=0, atol=1e-5)
        assert [classes[i] for i in label] == [expected[p][0] for p in paths]
    from tests.test_deploy_triton import check_config_against_graph, read_config

    check_config_against_graph(repo / "tuned", read_config(repo / "tuned"), classes)


@pytest.mark.slow
def test_killed_mid_epoch_resumes_from_the_saved_epoch(tuned, tmp_path):
    """SIGKILL during epoch 2; the next run starts at epoch 2 and ends where an uninterrupted
    run (the module's, same data, options and threads) ends."""
    from featurebank.finetune import finetune

    result, _ = tuned
    out = tmp_path / "resumed.onnx"
    args = ["finetune", str(result.train_store), "--from", "blocks.12", "--epochs", str(EPOCHS),
            "--val-size", "0.25", "--threads", str(THREADS), "--no-progress", "-o", str(out)]
    kill_in_epoch_2(args, out, THREADS)
    resumed = finetune(result.train_store, from_layer="blocks.12", output=out, epochs=EPOCHS,
                       val_size=0.25, seed=0, threads=THREADS, progress=False)
    assert resumed.resumed_from == 1
    assert [r["epoch"] for r in resumed.history] == list(range(1, EPOCHS + 1))
    for a, b in zip(resumed.history, result.history, strict=True):  # as if never interrupted
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=1e-9)
    # a different run refuses the checkpoint instead of mixing into it
    with pytest.raises(FeaturebankError, match="another run"):
        finetune(result.train_store, from_layer="blocks.12", output=out, epochs=EPOCHS,
                 val_size=0.25, seed=1, threads=THREADS, progress=False)


@pytest.fixture(scope="module")
def small_maps_store(digit_folders, model_cache, tmp_path_factory) -> Path:
    """Maps of 20 digits at blocks.12, as `featurebank embed --pool none` stores them."""
    from featurebank.extractor import embed_collection

    files = [str(p) for p in sorted(digit_folders[0].rglob("*.png"))[::6][:20]]
    store = tmp_path_factory.mktemp("ft_maps") / "maps.h5"
    embed_collection(files, store, "efficientnet_lite0", layers=("blocks.12",), pool="none",
                     progress=False)
    return store


def test_mismatched_cut_or_model_is_refused(small_maps_store, tmp_path):
    """A store of maps cut elsewhere, of other weights or pooled is refused, naming the cause,
    before any file is written."""
    import h5py

    from featurebank.extractor import FeatureStore
    from featurebank.finetune import finetune
    from featurebank.spec import FeatureSpec, ModelSpec

    out = tmp_path / "x.onnx"
    with pytest.raises(FeaturebankError, match="cut at blocks.12, not blocks.13"):
        finetune(small_maps_store, from_layer="blocks.13", output=out, epochs=1)
    with pytest.raises(FeaturebankError, match="cut at one of blocks.0 .. blocks.15"):
        finetune(small_maps_store, from_layer="head", output=out, epochs=1)
    with pytest.raises(FeaturebankError, match="is an ONNX file: it has no torch code"):
        finetune(small_maps_store, model=str(tmp_path / "m.onnx"), output=out, epochs=1)
    # the same rows written as maps of other weights (a store made with another model file)
    with h5py.File(small_maps_store, "r") as f:
        (fp,) = f["features"].keys()
        g = f["features"][fp]
        spec = FeatureSpec.from_json(g.attrs["spec"])
        X, keys = g["X"][:20], g["keys"][:20].astype(str)
    other = FeatureSpec(ModelSpec(spec.model.model, "0" * 64, spec.model.preprocessing),
                        spec.layer, "none")
    foreign = tmp_path / "foreign.h5"
    with FeatureStore(foreign, mode="a") as store:
        store.add_rows(other, keys, X, [f"img{i}.png" for i in range(20)], ["a", "b"] * 10)
    with pytest.raises(FeaturebankError, match="maps of other weights"):
        finetune(foreign, from_layer="blocks.12", output=out, epochs=1)
    # pooled vectors of the right cut are not maps
    pooled = tmp_path / "pooled.h5"
    with FeatureStore(pooled, mode="a") as store:
        store.add_rows(FeatureSpec(spec.model, spec.layer, "avg"), keys,
                       X.astype(np.float32).reshape(20, 192, 49).mean(2),
                       [f"img{i}.png" for i in range(20)], ["a", "b"] * 10)
    with pytest.raises(FeaturebankError, match="no unpooled maps .* it has: .*blocks.12/avg"):
        finetune(pooled, from_layer="blocks.12", output=out, epochs=1)
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(("foreign.", "pooled."))]


def test_options_are_checked_before_anything_runs(tmp_path):
    from featurebank.finetune import FinetuneOptions, finetune

    with pytest.raises(FeaturebankError, match="val_size"):
        FinetuneOptions(val_size=1.5)
    with pytest.raises(FeaturebankError, match="unknown option"):
        finetune(tmp_path, output=tmp_path / "t.onnx", epoch=3)
    with pytest.raises(FeaturebankError, match="does not exist"):
        finetune(tmp_path / "nope", output=tmp_path / "t.onnx")


def test_every_option_is_a_command_line_flag():
    """Each FinetuneOptions field reaches the command line and arrives in the options."""
    import argparse
    from dataclasses import fields

    from featurebank.cli import finetune_cmd
    from featurebank.finetune import FinetuneOptions

    parser = argparse.ArgumentParser()
    finetune_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["finetune", "train", "-o", "t.onnx", "--flip",
                              "--label-smoothing", "0.1", "--weight-decay", "0.01",
                              "--dropout", "0.3", "--probe-c", "0.1", "--epochs", "2",
                              "--keep-checkpoint", "--work-dir", "w"])
    from featurebank.cli.flags import flag_names, options_from_args

    assert set(flag_names(args, "FinetuneOptions")) == {f.name for f in fields(FinetuneOptions)}
    assert flag_names(args, "finetune") == {"model": "--model", "from_layer": "--from"}
    chosen = options_from_args(FinetuneOptions, args)
    assert chosen == FinetuneOptions(flip=True, label_smoothing=0.1, weight_decay=0.01,
                                     dropout=0.3, probe_c=0.1, epochs=2, keep_checkpoint=True)
    assert args.work_dir == "w"


@pytest.mark.slow
def test_same_folders_from_another_cut_reuse_their_stores(tuned, digit_folders):
    """A second fine-tune of the same folders from another cut puts that cut's maps in a store
    of its own in the folders' cache folders; the first cut's stores stay as they were."""
    from featurebank.extractor import FeatureStore
    from featurebank.finetune import finetune

    result, out = tuned
    train, test = digit_folders
    before = {s.fingerprint: s.rows for s in FeatureStore(result.train_store).feature_sets()}
    again = finetune(train, model="efficientnet_lite0", from_layer="blocks.14", test=test,
                     output=out.with_name("tuned14.onnx"), epochs=1, val_size=0.25, seed=0,
                     threads=THREADS, progress=False)
    assert again.train_store.parent == result.train_store.parent
    assert again.test_store.parent == result.test_store.parent
    assert again.train_store != result.train_store
    n_train = 10 * TRAIN_PER_CLASS
    (fs,) = FeatureStore(again.train_store).feature_sets()
    assert (fs.spec.layer, fs.rows) == ("blocks.14", n_train)
    assert {s.fingerprint: s.rows for s in FeatureStore(result.train_store).feature_sets()} == before
    assert again.test_accuracy is not None


@pytest.mark.slow
def test_excluded_images_are_left_out_and_recorded(tuned, tmp_path):
    """`exclude` (the audit's exclude.txt) removes training images before the split; the tuned
    file's lineage names them."""
    from featurebank.extractor import FeatureStore
    from featurebank.finetune import finetune, tuned_lineage

    result, _ = tuned
    keys = sorted(FeatureStore(result.train_store).image_table())
    dropped = set(keys[::10])
    out = tmp_path / "excluded.onnx"
    again = finetune(result.train_store, from_layer="blocks.12", output=out, epochs=1,
                     val_size=0.25, seed=0, threads=THREADS, progress=False,
                     exclude=dropped | {"e" * 64})
    assert again.train_images == result.train_images - len(dropped)
    assert again.train_fingerprint != result.train_fingerprint
    again.export(out)
    assert set(tuned_lineage(out)["excluded_keys"]) == dropped
    with pytest.raises(FeaturebankError, match="leaves out all"):
        finetune(result.train_store, from_layer="blocks.12", output=out, epochs=1,
                 progress=False, exclude=set(keys))
