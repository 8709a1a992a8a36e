"""SIGKILL a real ``featurebank embed`` process at several points of its work, then resume.

After every kill the store opens with plain h5py (no repair) and no lock is left behind; the
resumed run ends with the same store as a clean, uninterrupted run: same content keys, labels,
paths, failures and vectors (within one float16 step: ``float16_ulps``). The child announces
where it is (``tests/_killpoints.py``: after the N-th commit, or inside one with the file open,
its images or its rows written) and waits there to be killed: no test guesses a moment from a
measured time, so the assertions hold on a fast machine as on a loaded one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from benchmarks.harness.faults import REPO, float16_ulps, subprocess_env
from featurebank.extractor import FeatureStore
from featurebank.extractor.store._format import FORMAT_VERSION
from tests._killpoints import POINTS, wait_for_point

BATCH = 2


@pytest.fixture(scope="module")
def source(tmp_path_factory, digits_dir, photo_dir) -> Path:
    """20 digit scans and 6 photos in label folders, a duplicate and a broken file."""
    root = tmp_path_factory.mktemp("kill-src")
    for label in ("3", "7"):
        (root / label).mkdir()
        for p in sorted((digits_dir / label).glob("*.png"))[:10]:
            shutil.copy(p, root / label / p.name)
    shutil.copytree(photo_dir, root / "photos")
    shutil.copy(root / "3" / sorted(os.listdir(root / "3"))[0], root / "7" / "dup.png")
    (root / "7" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return root


def _args(src: Path, store: Path) -> list[str]:
    return ["embed", str(src), "--store", str(store), "--batch-size", str(BATCH), "--workers", "1",
            "--threads", "1", "--no-progress"]


def _run(src: Path, store: Path) -> None:
    """A complete run."""
    done = subprocess.run([sys.executable, "-m", "featurebank", *_args(src, store)],
                          capture_output=True, env=subprocess_env(), cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def _kill_at(src: Path, store: Path, point: str, n: int) -> None:
    """Run embed until it announces ``point`` the ``n``-th time, then SIGKILL it there."""
    proc = subprocess.Popen([sys.executable, "-m", "tests._killpoints", point, str(n),
                             *_args(src, store)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=subprocess_env(), cwd=REPO)
    try:
        announced = wait_for_point(proc.stdout)
        assert announced == f"KILLPOINT {point} {n}", (
            f"embed ended before {point} {n}: {proc.stderr.read().decode()[-2000:]}")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _assert_equal_vectors(got: np.ndarray, want: np.ndarray) -> None:
    ulps = float16_ulps(got, want)
    assert got.shape == want.shape and ulps.max() <= 1, f"{ulps.max()} float16 ulps apart"


def _committed_rows(store: Path) -> int:
    """Committed rows of the feature set, read with plain h5py while the writer runs."""
    try:
        with h5py.File(store, "r", locking=False) as f:
            return max((int(g.attrs.get("committed", 0)) for g in f["features"].values()), default=0)
    except (OSError, KeyError, RuntimeError, AttributeError):  # not created yet, or mid-commit
        return 0


def _snapshot(store: Path) -> dict:
    fs = FeatureStore(store)
    feats = fs.read()
    order = np.argsort(feats.keys)
    with h5py.File(store, "r") as f:
        n = int(f["paths"].attrs["committed"])
        pairs = sorted(zip((os.fsdecode(p) for p in f["paths/paths"][:n]),
                           f["paths/keys"][:n].astype(str), strict=True))
    return {"keys": feats.keys[order], "X": feats.X[order], "labels": feats.y[order],
            "pairs": pairs, "failures": sorted(fs.failures())}


@pytest.fixture(scope="module")
def clean(tmp_path_factory, source, lite0_onnx) -> dict:
    store = tmp_path_factory.mktemp("clean") / "clean.h5"
    _run(source, store)
    snap = _snapshot(store)
    assert len(snap["keys"]) == 26 and len(snap["pairs"]) == 27 and len(snap["failures"]) == 1
    return snap


def test_sigkill_inside_commits_then_resume_equals_clean_run(tmp_path, source, clean):
    """Killed three times inside a commit, the .h5 open for writing: just opened, with the
    batch's images written but no row, with its rows written but not its failures and log."""
    store = tmp_path / "s.h5"
    for point, n in (("open", 2), ("images", 2), ("rows", 2)):
        _kill_at(source, store, point, n)
        with h5py.File(store, "r") as f:  # readable after each kill, no repair step
            assert f.attrs["format_version"] == FORMAT_VERSION
        assert store.with_name(store.name + ".dirty").exists()  # it died inside a commit
    _run(source, store)
    got = _snapshot(store)
    np.testing.assert_array_equal(got["keys"], clean["keys"])
    np.testing.assert_array_equal(got["labels"], clean["labels"])
    assert got["pairs"] == clean["pairs"] and got["failures"] == clean["failures"]
    _assert_equal_vectors(got["X"], clean["X"])
    assert not store.with_name(store.name + ".dirty").exists()


@pytest.mark.parametrize("kill_after_batches", [1, 2, 4, "random"])
def test_sigkill_then_resume_equals_clean_run(kill_after_batches, tmp_path, source, clean):
    """Killed after 1, 2 or 4 batches of rows were committed (when the next batch's rows are
    being written), or at a seeded point: any of the commit's steps, in one of its first 8."""
    store = tmp_path / "s.h5"
    if kill_after_batches == "random":
        rng = np.random.default_rng(16)
        point, n = str(rng.choice(POINTS)), int(rng.integers(2, 9))
    else:
        point, n = "rows", kill_after_batches + 1
    _kill_at(source, store, point, n)

    killed_rows = _committed_rows(store)
    with h5py.File(store, "r") as f:  # plain h5py, no repair
        assert f.attrs["format_version"] == FORMAT_VERSION
        for g in f["features"].values():
            n = int(g.attrs["committed"])
            assert g["X"].shape[0] >= n and np.isfinite(g["X"][:n]).all()
    assert 0 < killed_rows < 26
    partial = FeatureStore(store).read()  # what was committed before the kill is already final
    at = {k: i for i, k in enumerate(clean["keys"])}
    _assert_equal_vectors(partial.X, clean["X"][[at[k] for k in partial.keys]])

    _run(source, store)  # also proves the killed writer left no stale lock
    got = _snapshot(store)
    np.testing.assert_array_equal(got["keys"], clean["keys"])
    np.testing.assert_array_equal(got["labels"], clean["labels"])
    assert got["pairs"] == clean["pairs"]
    assert got["failures"] == clean["failures"]
    # batch boundaries differ after a resume: float16 rounding of last-bit float32 differences
    _assert_equal_vectors(got["X"], clean["X"])
