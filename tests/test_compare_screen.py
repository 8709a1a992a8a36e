"""``compare``'s screening (issue 30): every backbone embeds a stratified slice of TRAIN, LogME on
the slice keeps the backbones holding the shortlist, and only those embed the rest.

Real data: scikit-learn's handwritten digits (8 per class) through the exported
EfficientNet-Lite0 at 224 px and the same network exported at 32 px (on 8x8 scans the 32 px
file ranks first: the test follows the ranking rather than assuming it).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from featurebank.compare import CompareOptions, compare
from featurebank.errors import OptionError
from featurebank.extractor import FeatureStore
from tests.test_compare import _split, rerun_json

OPTIONS = CompareOptions(models=("efficientnet_lite0",), layers=("head",),
                         classifiers=("logreg",), top=1, concat=False, screen=2)


@pytest.fixture(scope="module")
def weak_onnx(model_cache) -> Path:
    """Lite0 at 32 px: a second backbone whose head differs from the 224 px one's."""
    from featurebank.export import ensure_exported

    return Path(ensure_exported("efficientnet_lite0", cache_dir=model_cache, input_size=32))


@pytest.fixture(scope="module")
def train(tmp_path_factory, digits_dir, lite0_onnx) -> Path:
    return _split(digits_dir, tmp_path_factory.mktemp("screen-data") / "train", 0, 8)


@pytest.fixture(scope="module")
def screened(train, weak_onnx, tmp_path_factory):
    out = tmp_path_factory.mktemp("screened")
    opts = replace(OPTIONS, models=("efficientnet_lite0", str(weak_onnx)))
    result = compare(train, None, options=opts, work_dir=out / "work", report=out / "report",
                     progress=False)
    return result, out, opts


def _rows(store: Path) -> int:
    fs = FeatureStore(store)
    return len(fs.read(fs.feature_sets()[0].fingerprint).keys)


def test_screening_drops_the_lower_backbone_and_embeds_no_more_train_for_it(screened):
    result, out, _ = screened
    s = result.screening
    assert s is not None and s.slice.n == 20  # 2 of each of the 10 classes
    with s.slice.list_file.open() as fh:
        assert Counter(row["label"] for row in csv.DictReader(fh)) == {str(d): 2 for d in range(10)}
    [(kept, _)] = s.kept  # --top 1: the pass of the best set on the slice
    [dropped] = s.dropped  # one cut, no concatenation: one set per pass
    assert dropped.backbone != kept and dropped.screened_on == 20
    # the screened-out store holds the slice only; the kept one reused the slice's rows
    by_model = {p.backbone.model: p.store for p in s.passes}
    assert _rows(by_model[dropped.backbone.model]) == 20 and _rows(by_model[kept.model]) == 80
    [row] = result.passes
    assert (row["backbone"], row["embedded"], row["cached"]) == (kept.name, 60, 20)
    # neither cross-validated nor timed, and said so: table, JSON, choice
    assert result.chosen.backbone == kept and result.sets[-1] is dropped
    assert dropped.cv is None and dropped.ms_per_image is None
    assert {h["features"] for h in result.selection.history} == {result.chosen.name}
    assert "slice 20" in result.table() and "1 sets screened out" in result.table()
    report = json.loads((out / "report" / "compare.json").read_text())
    assert report["screening"]["images"] == 20
    assert report["screening"]["screened_out_sets"] == [dropped.name]
    assert report["screening"]["screened_out_passes"][0]["rows"] == 20
    [entry] = [r for r in report["feature_sets"] if r["screened_out_on"] is not None]
    assert entry["screened_out_on"] == 20 and entry["cv"] is None
    assert report["seconds"]["screen"] > 0
    assert (out / "report" / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_rerun_embeds_nothing_and_screening_off_embeds_only_what_is_missing(screened, train):
    result, out, opts = screened
    again = compare(train, None, options=opts, work_dir=out / "work", progress=False)
    assert [p.embedded for p in again.screening.passes] == [0, 0]
    assert [(p["embedded"], p["cached"]) for p in again.passes] == [(0, 80)]
    assert again.chosen.name == result.chosen.name and again.selection.C == result.selection.C
    # without screening every backbone embeds all of TRAIN: the dropped one only the 60 it lacks
    full = compare(train, None, options=replace(opts, screen=0), work_dir=out / "work",
                   progress=False)
    assert full.screening is None
    kept, dropped = result.chosen.backbone.name, result.screening.dropped[0].backbone.name
    assert {p["backbone"]: (p["embedded"], p["cached"]) for p in full.passes} == {
        kept: (0, 80), dropped: (60, 20)}
    # on all 80 images LogME ranks the two backbones as the slice did
    assert full.sets[0].backbone.name == kept and full.chosen.name == result.chosen.name


def test_the_slice_leaves_out_excluded_images_and_is_skipped_where_it_cannot_pay(train,
                                                                                 tmp_path):
    from featurebank.compare._screen import plan_slice
    from featurebank.extractor import image_key

    files = sorted(train.glob("*/*.png"))
    threes = [p for p in files if p.parent.name == "3"]
    excluded = frozenset(image_key(p.read_bytes()) for p in threes[:6])
    piece = plan_slice(str(train), 2, 2, excluded, tmp_path, seed=0)
    assert piece is not None and piece.n == 20 and not piece.keys & excluded
    with piece.list_file.open() as fh:
        assert Counter(row["label"] for row in csv.DictReader(fh))["3"] == 2  # 8 - 6 left
    assert plan_slice(str(train), 4, 2, frozenset(), tmp_path, seed=0) is None  # half TRAIN
    assert plan_slice(str(train), 2, 1, frozenset(), tmp_path, seed=0) is None  # one pass
    assert plan_slice(str(train), 0, 2, frozenset(), tmp_path, seed=0) is None  # off


def test_the_screen_option_is_checked_and_has_a_flag(capsys):
    from featurebank.cli import main

    with pytest.raises(OptionError, match="screen"):
        CompareOptions(screen=-1)
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    assert "--screen" in capsys.readouterr().out


def test_a_run_killed_after_screening_resumes_with_what_is_missing(screened, train, weak_onnx,
                                                                   tmp_path):
    """SIGKILL in the kept backbone's pass over the rest of TRAIN (after both slice passes);
    the rerun embeds neither slice again, only the images that pass had not committed, and
    chooses what the uninterrupted run chose."""
    import subprocess
    import sys

    from benchmarks.harness.faults import REPO, subprocess_env
    from tests._killpoints import ANNOUNCE, wait_for_point
    from tests.test_compare import _committed_rows

    result = screened[0]
    out = tmp_path / "chosen.joblib"
    cmd = [sys.executable, "-m", "featurebank", "compare", str(train), "-o", str(out),
           "--model", "efficientnet_lite0", "--model", str(weak_onnx), "--layer", "head",
           "--classifier", "logreg", "--top", "1", "--no-concat", "--screen", "2",
           "--batch-size", "4", "--no-progress", "--json"]
    kept = next(p.store.name for p in result.screening.passes
                if p.backbone == result.chosen.backbone)
    store = tmp_path / "chosen.work" / kept
    # the child stops at each commit from the 11th (past both slice passes' batches of 4): it
    # is killed at the first where the kept store holds more than the slice's 20 rows
    paused = [sys.executable, "-m", "tests._killpoints", "commit",
              ",".join(str(n) for n in range(11, 40)), *cmd[3:]]
    proc = subprocess.Popen(paused, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=subprocess_env(), cwd=REPO)
    try:
        while (point := wait_for_point(proc.stdout)) and _committed_rows(store) <= 20:
            proc.stdin.write(b"\n")  # not in the kept pass's rest yet: go on
            proc.stdin.flush()
        assert point and point.startswith(f"{ANNOUNCE} commit")
    finally:
        proc.kill()
        proc.wait()
    killed_at = _committed_rows(store)
    assert 20 < killed_at < 80 and not out.exists()
    summary = rerun_json(cmd)
    assert all(p["store"] for p in summary["screening"]["screened_out_passes"])
    [p] = summary["passes"]
    assert p["cached"] == killed_at and p["embedded"] + p["cached"] == 80
    assert summary["chosen"]["feature_set"] == result.chosen.name
