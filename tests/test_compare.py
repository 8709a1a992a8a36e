"""``featurebank compare``: ranking, halving, TEST read once, resume, refusals before any work.

Real data: scikit-learn's handwritten digits (8 per class for TRAIN, 4 for TEST) through the
exported EfficientNet-Lite0, two cuts, two classifier kinds: small enough for a few seconds of
embedding on two cores, real enough that the figures mean something.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from benchmarks.harness.faults import REPO, subprocess_env
from featurebank.classical import load_trained
from featurebank.compare import CompareOptions, compare, pareto_front, wilson_interval
from featurebank.errors import FeaturebankError
from featurebank.extractor import FeatureStore
from tests._killpoints import ANNOUNCE, wait_for_point

CUTS = ("blocks.13", "head")
OPTIONS = CompareOptions(layers=CUTS, classifiers=("logreg", "knn"), top=3)


def _split(digits_dir: Path, root: Path, start: int, per_class: int) -> Path:
    for label in sorted(os.listdir(digits_dir)):
        (root / label).mkdir(parents=True)
        for p in sorted((digits_dir / label).glob("*.png"))[start:start + per_class]:
            shutil.copy(p, root / label / p.name)
    return root


@pytest.fixture(scope="module")
def splits(tmp_path_factory, digits_dir, lite0_onnx):
    root = tmp_path_factory.mktemp("compare-data")
    return _split(digits_dir, root / "train", 0, 8), _split(digits_dir, root / "test", 8, 4)


@pytest.fixture(scope="module")
def compared(splits, tmp_path_factory):
    train, test = splits
    out = tmp_path_factory.mktemp("compare-out")
    result = compare(train, test, options=OPTIONS, output=out / "chosen.joblib",
                     report=out / "report", progress=False)
    return result, out


def test_compare_ranks_confirms_and_writes_a_classifier(compared, splits):
    result, out = compared
    # LogME ranked every cut and the two best together, best first
    assert [s.cuts for s in result.sets] and len(result.sets) == 3
    assert {s.cuts for s in result.sets} == {("blocks.13",), ("head",), CUTS}
    assert [s.logme for s in result.sets] == sorted((s.logme for s in result.sets), reverse=True)
    # halving chose the best CV figure among the sets it confirmed
    confirmed = [s for s in result.sets if s.cv]
    best = max(confirmed, key=lambda s: (s.rounds, s.cv["accuracy"]))
    assert result.chosen.cv["accuracy"] == best.cv["accuracy"] > 0.5  # 10 classes: chance 0.1
    assert result.selection.classifier in ("logreg", "knn")
    # the file: a classifier that evaluate, predict and serve load as they are
    clf = load_trained(out / "chosen.joblib")
    assert [s.fingerprint() for s in clf.specs] == [s.fingerprint() for s in result.chosen.specs]
    assert clf.info["compare"]["feature_set"] == result.chosen.name
    assert clf.info["compare"]["test"] == result.test
    from featurebank.predict import load_classifier, predict_images

    image = next((splits[1] / "3").glob("*.png"))
    [answer] = list(predict_images(load_classifier(out / "chosen.joblib"), [str(image)]))
    assert answer.error is None and answer.label in clf.classes
    # the report: JSON of every candidate, the plot
    report = json.loads((out / "report" / "compare.json").read_text())
    assert len(report["feature_sets"]) == 3 and report["chosen"]["test"] == result.test
    # screening is off by default (and one pass has nothing to screen): all 80 rows ranked
    assert result.screening is None and report["screening"] is None
    assert len(report["halving"]) == 3 * (5 + 5)  # 3 sets x (5 C of logreg + 5 k of knn)
    assert (out / "report" / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "*" in result.table() and result.chosen.name in result.table()


def test_test_is_read_once_for_the_chosen_configuration_only(compared):
    result, out = compared
    work = out / "chosen.work"
    test_stores = sorted(work.glob("test-*.h5"))
    assert len(test_stores) == 1  # one pass over TEST, for the chosen backbone and pooling
    sets = FeatureStore(test_stores[0]).feature_sets()
    assert sorted(s.fingerprint for s in sets) == sorted(s.fingerprint()
                                                        for s in result.chosen.specs)
    assert all(s.rows == 40 for s in sets)
    # the figure is that classifier's accuracy on those 40 images, with its Wilson interval
    from featurebank.classical import evaluate

    again = evaluate(load_trained(out / "chosen.joblib"), test_stores[0], baseline=False)
    assert result.test["accuracy"] == again["accuracy"] and result.test["n"] == 40
    lo, hi = result.test["interval"]
    assert lo <= result.test["accuracy"] <= hi
    assert (lo, hi) == wilson_interval(round(again["accuracy"] * 40), 40)


def test_a_second_run_embeds_nothing_and_chooses_the_same(compared, splits):
    result, out = compared
    again = compare(splits[0], None, options=OPTIONS, work_dir=out / "chosen.work",
                    progress=False)
    assert [p["embedded"] for p in again.passes] == [0]
    assert [p["cached"] for p in again.passes] == [80]
    assert again.chosen.name == result.chosen.name
    assert again.selection.C == result.selection.C and again.test is None


def _committed_rows(store: Path) -> int:
    try:
        with h5py.File(store, "r", locking=False) as f:
            return max((int(g.attrs.get("committed", 0)) for g in f["features"].values()),
                       default=0)
    except (OSError, KeyError, RuntimeError, AttributeError):  # not there yet, or mid-commit
        return 0


def rerun_json(cmd: list[str]) -> dict:
    """Run ``cmd`` (a ``featurebank ... --json`` command) to the end: its JSON summary."""
    done = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), cwd=REPO,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.slow
def test_a_killed_compare_resumes_where_it_stopped(splits, tmp_path, compared):
    """SIGKILL during the embedding pass; the rerun embeds only the images not yet committed
    and chooses what an uninterrupted run chose."""
    train, _ = splits
    out = tmp_path / "chosen.joblib"
    cmd = [sys.executable, "-m", "featurebank", "compare", str(train), "-o", str(out),
           "--layer", CUTS[0], "--layer", CUTS[1], "--classifier", "logreg",
           "--classifier", "knn", "--top", "3", "--batch-size", "4", "--no-progress", "--json"]
    store = tmp_path / "chosen.work" / "efficientnet_lite0-avg.h5"
    # The child announces its second commit and waits there: killed at a known point.
    paused = [sys.executable, "-m", "tests._killpoints", "commit", "2", *cmd[3:]]
    proc = subprocess.Popen(paused, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=subprocess_env(), cwd=REPO)
    try:
        assert wait_for_point(proc.stdout) == f"{ANNOUNCE} commit 2"
    finally:
        proc.kill()
        proc.wait()
    killed_at = _committed_rows(store)
    assert 0 < killed_at < 80 and not out.exists()
    summary = rerun_json(cmd)
    [p] = summary["passes"]
    assert p["cached"] >= killed_at and p["embedded"] + p["cached"] == 80
    assert summary["chosen"]["feature_set"] == compared[0].chosen.name
    assert load_trained(out).info["compare"]["feature_set"] == compared[0].chosen.name


def _foreign_onnx(path: Path) -> Path:
    """A valid ONNX model featurebank did not describe (a 1x1 conv)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    node = helper.make_node("Conv", ["input", "w"], ["out"])
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                             [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT,
                                                             [1, 4, 8, 8])], [w])
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_bad_candidates_are_refused_together_before_any_work(splits, tmp_path):
    train, test = splits
    foreign = _foreign_onnx(tmp_path / "foreign.onnx")
    out = tmp_path / "chosen.joblib"
    bad = CompareOptions(models=("efficientnet_lite0", "no_such_net", str(foreign)),
                         layers=("blocks.13", "blocks.99"))
    with pytest.raises(FeaturebankError) as err:
        compare(train, test, options=bad, output=out)
    message = str(err.value)
    assert "unknown model 'no_such_net'" in message
    assert "featurebank adopt" in message and "not self-describing" in message
    assert "has no cut blocks.99" in message and "featurebank layers" in message
    unlabelled = tmp_path / "flat"
    unlabelled.mkdir()
    for p in list((train / "3").glob("*.png"))[:3]:
        shutil.copy(p, unlabelled / p.name)
    with pytest.raises(FeaturebankError, match="no image has a label"):
        compare(train, unlabelled, options=OPTIONS, output=out)
    with pytest.raises(FeaturebankError, match="no image has a label"):
        compare(unlabelled, None, options=OPTIONS, output=out)
    with pytest.raises(FeaturebankError, match="folder .* does not exist"):
        compare(train, None, options=OPTIONS, output=tmp_path / "nowhere" / "c.joblib")
    # nothing was written: no work folder, no store, no classifier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat", "foreign.onnx"]


def test_the_command_line_refuses_with_the_users_flags(splits, tmp_path, capsys):
    from featurebank.cli import main

    status = main(["compare", str(splits[0]), "-o", str(tmp_path / "c.joblib"),
                   "--model", "efficientnet_lite0", "--layer", "nope", "--top", "2"])
    assert status == 1
    err = capsys.readouterr().err
    assert "compare: error: compare cannot start" in err and "has no cut nope" in err
    assert main(["compare", str(splits[0]), "-o", str(tmp_path / "c.joblib"),
                 "--top", "0"]) == 1
    assert "--top must be an int >= 1, got 0" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_wilson_interval_and_pareto_front():
    from scipy.stats import binomtest

    for k, n in ((84, 100), (0, 10), (10, 10), (3, 7)):  # the edges: where the normal one fails
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)
    points = [(10, 0.80), (5, 0.70), (20, 0.79), (30, 0.95), (5, 0.60), (12, 0.85)]
    assert pareto_front(points) == [1, 0, 5, 3]


def test_train_auto_chooses_kind_and_c_by_cross_validation(compared):
    """``train(classifier="auto")``: halving over every kind and C on the training rows; the
    saved model says which kind won and keeps every candidate's CV score."""
    from featurebank.classical import CLASSIFIERS, train

    _, out = compared
    store = out / "chosen.work" / "efficientnet_lite0-avg.h5"
    model = train(store, ["head"], "auto", baseline=False)
    info = model.info
    assert info["chosen_by"] == "auto" and info["classifier"] in CLASSIFIERS
    assert model.estimator.classifier == info["classifier"]
    scored = info["auto"]["candidates"]
    assert len(scored) == sum(5 if k != "rbf-svm" else 4 for k in CLASSIFIERS)
    # the winner is the best CV score recorded (first in the ranking), refitted with its C
    top = max(scored, key=lambda c: (c["n"], c["cv_accuracy"]))
    assert scored[0]["cv_accuracy"] == top["cv_accuracy"]
    assert (info["classifier"], model.estimator.C_) == (scored[0]["classifier"], scored[0]["C"])
    with pytest.raises(FeaturebankError, match=r"classifier must be one of \('auto', "):
        train(store, ["head"], "forest", baseline=False)
    from featurebank.classical import sweep

    with pytest.raises(FeaturebankError, match="classifier must be one of"):
        sweep(store, classifier="auto")  # one kind per sweep


def test_a_suite_file_is_checked_whole_before_any_work(splits, tmp_path):
    from featurebank.compare import read_suite, run_suite

    train, test = splits
    suite = tmp_path / "suite.toml"
    suite.write_text(f'[[dataset]]\nname = "a"\ntrain = "{train}"\n\n'
                     f'[[dataset]]\nname = "a"\ntrain = "missing/train"\n\n[[dataset]]\ntest = "x"\n')
    with pytest.raises(FeaturebankError) as err:
        read_suite(suite)
    text = str(err.value)
    assert "missing/train does not exist" in text and "needs name and train" in text
    assert "'a' is used twice" in text
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(next((train / "3").glob("*.png")), flat / "x.png")
    suite.write_text(f'[[dataset]]\nname = "ok"\ntrain = "{train}"\n\n'
                     f'[[dataset]]\nname = "unlabelled"\ntrain = "flat"\n')
    with pytest.raises(FeaturebankError, match="unlabelled TRAIN .* no image has a label"):
        run_suite(suite, options=OPTIONS, report=tmp_path / "report")
    assert not (tmp_path / "report").exists()  # the first data set was not embedded either


@pytest.mark.slow
def test_a_suite_ranks_feature_sets_across_data_sets(splits, tmp_path):
    from featurebank.compare import run_suite, suite_table

    train, test = splits
    suite = tmp_path / "suite.toml"
    suite.write_text(f'[[dataset]]\nname = "digits"\ntrain = "{train}"\ntest = "{test}"\n\n'
                     f'[[dataset]]\nname = "swapped"\ntrain = "{test}"\n')
    table = run_suite(suite, options=OPTIONS, report=tmp_path / "r", progress=False)
    assert table["datasets"] == ["digits", "swapped"]
    rows = table["rows"]
    assert len(rows) == 3 and all(r["complete"] for r in rows)
    for name in table["datasets"]:  # ranks 1..3 within each data set, the chosen one first
        ranks = sorted((r["datasets"][name]["rank"], r["datasets"][name]["chosen"]) for r in rows)
        assert [r for r, _ in ranks] == [1, 2, 3] and ranks[0][1]
        assert (tmp_path / "r" / name / "chosen.joblib").is_file()
    means = [r["mean_rank"] for r in rows]
    assert means == sorted(means) and means[0] == np.mean(
        [rows[0]["datasets"][n]["rank"] for n in table["datasets"]])
    assert json.loads((tmp_path / "r" / "suite.json").read_text())["rows"] == rows
    assert "mean rank" in suite_table(table)


def test_excluded_train_images_are_left_out_and_recorded(compared, splits, tmp_path, capsys):
    """``--exclude FILE``: the listed TRAIN rows are neither ranked, cross-validated nor fitted;
    the classifier file records them, so ``evaluate`` on the TRAIN store skips them; a bad
    file is refused before anything is written."""
    from featurebank.classical import evaluate
    from featurebank.cli import main

    _, out = compared
    work = out / "chosen.work"
    store = FeatureStore(work / "efficientnet_lite0-avg.h5")
    keys = [str(k) for k in store.read(store.feature_sets()[0].fingerprint).keys]
    left_out = keys[:3]
    listing = tmp_path / "exclude.txt"
    listing.write_text("# from audit\n" + "\n".join(left_out) + "\n")
    chosen = tmp_path / "chosen.joblib"
    flags = ["--layer", CUTS[0], "--layer", CUTS[1], "--classifier", "logreg", "--classifier",
             "knn", "--top", "3", "--no-progress"]
    assert main(["compare", str(splits[0]), "-o", str(chosen), "--work-dir", str(work),
                 "--exclude", str(listing), *flags]) == 0
    assert "left out: 3 TRAIN images" in capsys.readouterr().out
    clf = load_trained(chosen)
    assert clf.excluded_keys == set(left_out) and clf.info["excluded"] == 3
    assert not clf.trained_keys & set(left_out) and len(clf.trained_keys) == 77
    assert clf.info["n_train"] == 77
    # the last halving round of every set used all 77 rows, none of the three
    assert all(s.get("n") in (None, 77) for s in
               (row["cv"] or {} for row in clf.info["compare"]["table"]))
    # evaluate on TRAIN's store: the 77 trained on and the 3 left out are all skipped
    with pytest.raises(FeaturebankError, match="every labelled image .* was used to train"):
        evaluate(clf, work / "efficientnet_lite0-avg.h5", baseline=False)
    # a mistyped key: refused with its line, before any store or file exists
    bad = tmp_path / "bad" / "exclude.txt"
    bad.parent.mkdir()
    bad.write_text(left_out[0] + "\nnot-a-key\n")
    assert main(["compare", str(splits[0]), "-o", str(bad.parent / "c.joblib"),
                 "--exclude", str(bad), *flags]) == 1
    assert "line 2: 'not-a-key' is not a content key" in capsys.readouterr().err
    assert sorted(p.name for p in bad.parent.iterdir()) == ["exclude.txt"]


def test_a_budget_too_small_for_fine_tuning_says_so_and_changes_nothing(compared, splits):
    """``--budget``: fine-tuning is estimated from the measured ms per image and refused when
    the estimate does not fit in what is left; the frozen choice is the same as without."""
    from dataclasses import replace

    result, out = compared
    assert result.finetune is None and "fine-tuned" not in result.table()  # the default
    tight = compare(splits[0], None, options=replace(OPTIONS, budget=0.01, finetune_epochs=2),
                    work_dir=out / "chosen.work", progress=False)
    ft = tight.finetune
    assert ft.status == "not run" and ft.heldout_accuracy is None
    blocks = [c for c in tight.chosen.cuts if c.startswith("blocks.")]  # else the catalogue's
    assert ft.from_layer == (blocks[-1] if blocks else "blocks.15")
    assert ft.estimate_minutes > ft.left_minutes and "min of the budget left" in ft.reason
    # the estimate: maps to the cut, then 1 + 5 x 4/5 runs of 2 epochs, 3 passes each, over 80
    timings = json.loads((out / "chosen.work" / "timings.json").read_text())
    ms = {k.split("|")[2]: v for k, v in timings.items() if k.count("|") == 3
          and k.split("|")[2] in (ft.from_layer, "head")}
    expected = (80 * ms[ft.from_layer] + 5 * 2 * 80 * 3 * ms["head"] + 80 * ms["head"]) / 60000
    assert ft.estimate_minutes == pytest.approx(expected, abs=0.01)
    assert tight.chosen.name == result.chosen.name and not tight.finetuned
    assert "not run: estimated" in tight.table()
    assert tight.to_dict()["chosen"]["finetune"]["status"] == "not run"
    assert not (out / "chosen.work" / "finetune.onnx.ckpt").exists()  # nothing was trained


def test_fine_tuning_is_refused_for_onnx_files_and_chosen_only_beyond_noise(compared):
    """An ONNX backbone cannot be fine-tuned (a row that says so, not an error), nor a TRAIN
    that is not a folder; the rule on finetune's held-out figures against the frozen CV."""
    from dataclasses import replace

    from featurebank.compare._finetune import FinetuneCandidate, consider, decide

    result, out = compared
    chosen = result.chosen
    as_file = replace(chosen, backbone=replace(chosen.backbone, model="/x/adopted.onnx"))
    opts = replace(OPTIONS, budget=100.0)
    kw = {"n": 80, "frozen_cv": 0.9, "left_minutes": 100.0, "work": out, "options": opts,
          "timed": [], "exclude": frozenset(), "progress": False}
    cand, run = consider(as_file, str(out), **kw)
    assert run is None and cand.status == "not run" and "ONNX file cannot be fine-tuned" in \
        cand.reason and "not run: an ONNX file" in cand.line()
    cand, run = consider(chosen, str(out / "chosen.work" / "train-images.csv"), **kw)
    assert run is None and "reads a folder of images" in cand.reason

    def ran(acc, n, kept):
        from featurebank.compare import wilson_interval

        return FinetuneCandidate("lite0", "blocks.13", "not chosen", "", heldout_accuracy=acc,
                                 heldout_images=n, heldout_method="cross-fitted",
                                 interval=list(wilson_interval(round(acc * n), n)),
                                 finetune_choice=kept)
    assert decide(ran(0.99, 400, "finetuned"), 0.90, "x").chosen  # Wilson low 0.975 > 0.90
    assert not decide(ran(0.93, 100, "finetuned"), 0.90, "x").chosen  # low 0.862: noise
    probe = decide(ran(0.99, 400, "probe"), 0.90, "x")  # finetune kept its probe: not tuned
    assert not probe.chosen and "kept its frozen probe" in probe.reason


@pytest.mark.slow
def test_fine_tuning_runs_within_the_budget_as_one_more_row(digits_dir, tmp_path, monkeypatch):
    """A real (one-epoch) fine-tune of Lite0 on 2 digit classes, cross-fitted by finetune;
    its row carries its held-out evidence and the rule's verdict. Then, with the verdict
    forced, the plumbing of a chosen fine-tune: the tuned ONNX beside -o, TEST scored through
    its logits, predict using the file as it is."""
    from dataclasses import replace

    import featurebank.compare._finetune as ftmod

    train, test = tmp_path / "train", tmp_path / "test"
    for label in ("0", "1"):
        files = sorted((digits_dir / label).glob("*.png"))
        for root, part in ((train, files[:20]), (test, files[20:25])):
            (root / label).mkdir(parents=True)
            for p in part:
                shutil.copy(p, root / label / p.name)
    opts = replace(OPTIONS, classifiers=("logreg",), top=2, budget=30.0, finetune_epochs=1,
                   finetune_from="blocks.15")
    out = tmp_path / "chosen.joblib"
    result = compare(train, test, options=opts, output=out, progress=False)
    ft = result.finetune
    assert ft.status in ("chosen", "not chosen") and ft.from_layer == "blocks.15"
    assert ft.heldout_images == 40 and "cross-fitted" in ft.heldout_method  # every image once
    lo, hi = ft.interval
    assert lo <= ft.heldout_accuracy <= hi and 0 <= ft.val_accuracy <= 1
    assert ft.estimate_minutes <= ft.left_minutes and ft.minutes > 0
    assert ft.chosen == (ft.finetune_choice == "finetuned" and lo > result.chosen.cv["accuracy"])
    assert load_trained(out).info["compare"]["finetune"]["status"] == ft.status
    if not ft.chosen:
        assert not out.with_suffix(".onnx").exists() and result.test["n"] == 10

        def forced(cand, frozen_cv, name):
            cand.status, cand.reason = "chosen", "forced by the test"
            return cand
        monkeypatch.setattr(ftmod, "decide", forced)
        result = compare(train, test, options=opts, output=out, progress=False)
    tuned = out.with_suffix(".onnx")
    assert result.finetuned and result.finetune.file == str(tuned) and tuned.is_file()
    assert "fine-tuned above blocks.15" in result.conclusion()
    assert result.table().count("*") == 1 and "* efficientnet_lite0 tuned above" in result.table()
    from featurebank.classical import evaluate
    from featurebank.finetune import load_tuned
    from featurebank.predict import load_classifier, predict_images

    scored = evaluate(load_tuned(tuned), out.with_suffix(".work") / "test-finetuned.h5",
                      baseline=False)
    assert result.test["n"] == 10 and result.test["accuracy"] == scored["accuracy"]
    [answer] = list(predict_images(load_classifier(tuned), [str(test / "1" / next(
        iter(sorted(os.listdir(test / "1")))))]))
    assert answer.error is None and answer.label in ("0", "1")


def test_a_tie_in_cv_accuracy_goes_to_the_faster_set():
    """Halving alone breaks a tie by spread, then by LogME's order: the faster of two sets at
    the same CV accuracy on the same rows, with the chosen classifier kind, is chosen instead;
    a better, unmeasured or other-kind rival changes nothing."""
    from types import SimpleNamespace

    from featurebank.compare._select import Selection, prefer_faster

    def row(name, acc, ms, n=80, std=0.01, dim=64, kind="logreg"):
        return SimpleNamespace(name=name, dim=dim, ms_per_image=ms, cv={
            "accuracy": acc, "std": std, "n": n, "classifier": kind, "C": 1.0})

    def select(sets, chosen, kind="logreg", C=1.0):
        """A Selection whose halving history holds each set's own record (best first)."""
        history = [{"features": s.name, "classifier": s.cv["classifier"], "C": s.cv["C"],
                    "rounds": [{k: s.cv[k] for k in ("n", "accuracy", "std")}]}
                   for s in sorted(sets, key=lambda s: -s.cv["accuracy"])]
        return Selection(sets, chosen, kind, C, history)

    slow, fast, better = row("slow", 0.9, 8.0), row("fast", 0.9, 2.0, std=0.05), row("b", 0.95, 1.0)
    sel = prefer_faster(select([slow, fast], slow))
    assert sel.chosen is fast and sel.tie_broken_by_speed and sel.classifier == "logreg"
    assert prefer_faster(select([better, fast], better)).chosen is better
    fewer_rows = row("f", 0.9, 1.0, n=27)  # knocked out earlier, on fewer rows: no tie
    assert prefer_faster(select([slow, fewer_rows], slow)).chosen is slow
    unmeasured = select([slow, fast], row("u", 0.9, None))
    assert prefer_faster(unmeasured) is unmeasured
    # the faster set ties only with another kind (its logistic regression fell behind): the
    # kind halving chose stays, and so does its set
    rbf_only = row("rbf", 0.9, 1.0, kind="rbf-svm")
    assert prefer_faster(select([slow, rbf_only], slow)).chosen is slow
    # the same speed within timing noise (one depth: blocks.10, blocks.9+blocks.10): the
    # narrower set, whichever timed faster this run; a chosen set as narrow stays
    wide, narrow = row("9+10", 1.0, 4.79, dim=384), row("10", 1.0, 5.03, dim=192)
    assert prefer_faster(select([wide, narrow], wide)).chosen is narrow
    assert prefer_faster(select([wide, narrow], narrow)).chosen is narrow


def test_the_choice_is_the_fastest_of_its_ties(compared):
    from featurebank.compare._select import SAME_SPEED, _tied_entry

    result = compared[0]
    won, sel = result.chosen.cv, result.selection
    assert won["classifier"] == sel.classifier and won["C"] == sel.C  # the record of the choice
    tied = [s for s in result.sets
            if s.ms_per_image is not None and _tied_entry(sel, s.name, won) is not None]

    quickest = min(s.ms_per_image for s in tied)
    fast = [s for s in tied if s.ms_per_image <= quickest * (1 + SAME_SPEED)]
    assert result.chosen in fast and result.chosen.dim == min(s.dim for s in fast)
