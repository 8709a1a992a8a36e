"""SIGKILL a real ``python -m featurebank embed`` at several moments, then resume.

After every kill the store opens with plain h5py (no repair) and no lock is left behind; the
resumed run ends with the same store as a clean, uninterrupted run: same content keys, labels,
paths, failures and vectors (within one float16 step: ``float16_ulps``). Kill moments are
counted in committed batches, or drawn from a seeded generator and scaled to the measured
clean run, so the assertions hold on a fast machine as on a slow one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from benchmarks.harness.faults import REPO, float16_ulps, holds_open, subprocess_env
from featurebank.extractor import FeatureStore
from featurebank.extractor.store._format import FORMAT_VERSION

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


def _cmd(src: Path, store: Path) -> list[str]:
    return [sys.executable, "-m", "featurebank", "embed", str(src), "--store", str(store),
            "--batch-size", str(BATCH), "--workers", "1", "--threads", "1", "--no-progress"]


def _run(src: Path, store: Path) -> float:
    """A complete run; returns the seconds from its first commit to its end."""
    proc = subprocess.Popen(_cmd(src, store), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=subprocess_env(), cwd=REPO)
    first = None
    while proc.poll() is None:
        if first is None and _committed_rows(store) > 0:
            first = time.perf_counter()
        time.sleep(0.002)
    assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
    return time.perf_counter() - (first or time.perf_counter())


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
    seconds = _run(source, store)
    snap = _snapshot(store)
    assert len(snap["keys"]) == 26 and len(snap["pairs"]) == 27 and len(snap["failures"]) == 1
    return {**snap, "seconds_after_first_commit": seconds}


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see open files")
def test_sigkill_inside_commits_then_resume_equals_clean_run(tmp_path, source, clean):
    """Killed three times while holding the .h5 open (the writer opens it only to commit)."""
    store = tmp_path / "s.h5"
    caught = 0
    for _ in range(3):
        before = _committed_rows(store) if store.exists() else 0
        proc = subprocess.Popen(_cmd(source, store), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=subprocess_env(), cwd=REPO)
        try:
            deadline = time.monotonic() + 120
            # past start-up (which reads the store): a new batch has been committed
            while _committed_rows(store) <= before and proc.poll() is None:
                assert time.monotonic() < deadline, "embed made no progress"
                time.sleep(0.002)
            while not holds_open(proc.pid, str(store)) and proc.poll() is None:
                pass  # busy-poll: a commit lasts milliseconds
            caught += proc.poll() is None
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        with h5py.File(store, "r") as f:  # readable after each kill, no repair step
            assert f.attrs["format_version"] == FORMAT_VERSION
    assert caught >= 2
    _run(source, store)
    got = _snapshot(store)
    np.testing.assert_array_equal(got["keys"], clean["keys"])
    np.testing.assert_array_equal(got["labels"], clean["labels"])
    assert got["pairs"] == clean["pairs"] and got["failures"] == clean["failures"]
    _assert_equal_vectors(got["X"], clean["X"])
    assert not store.with_name(store.name + ".dirty").exists()


@pytest.mark.parametrize("kill_after_batches", [1, 2, 4, "random"])
def test_sigkill_then_resume_equals_clean_run(kill_after_batches, tmp_path, source, clean):
    store = tmp_path / "s.h5"
    proc = subprocess.Popen(_cmd(source, store), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=subprocess_env(), cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        if kill_after_batches == "random":  # anywhere after the first commit, inside one too
            while _committed_rows(store) == 0:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "embed made no progress"
                time.sleep(0.002)
            # Seeded, and at most half of what the rest took in the clean run on this machine.
            delay = np.random.default_rng(16).uniform(0, 0.5 * clean["seconds_after_first_commit"])
            time.sleep(delay)
        else:
            while _committed_rows(store) < kill_after_batches * BATCH:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "embed made no progress"
                time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"

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
