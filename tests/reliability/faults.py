"""Fault injection shared by the reliability tests and ``benchmarks/reliability.py``.

SIGKILLs of real ``python -m featurebank embed`` runs at random moments, and reading the store
back afterwards with plain h5py and with :class:`extractor.FeatureStore`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def make_kill_dataset(root: str | Path, per_photo: int = 8) -> Path:
    """Distinct crops of real photos in two labelled folders, plus two bad files and a duplicate."""
    from skimage import data

    root = Path(root)
    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    for j, a in enumerate(photos):
        folder = root / ("animal" if j % 2 == 0 else "thing")
        folder.mkdir(parents=True, exist_ok=True)
        h, w = a.shape[:2]
        for k in range(per_photo):
            crop = a[k * 7: k * 7 + h - 60, k * 11: k * 11 + w - 90]
            Image.fromarray(crop).resize((200, 150)).save(folder / f"{j}_{k}.jpg", quality=90)
    good = (root / "animal" / "0_0.jpg").read_bytes()
    (root / "thing" / "copy_of_0_0.jpg").write_bytes(good)  # a duplicate: one row, two paths
    (root / "thing" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "animal" / "page.jpg").write_text("<html>not an image</html>")
    return root


def embed_command(src: Path, store: Path, batch_size: int = 4) -> list[str]:
    return [sys.executable, "-m", "featurebank", "embed", str(src), "--store", str(store),
            "--batch-size", str(batch_size), "--workers", "1", "--threads", "1", "--no-progress",
            "--json"]


def subprocess_env() -> dict[str, str]:
    """Environment for child processes: one thread each, this checkout importable."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)


def run_embed(src: Path, store: Path, timeout: float = 300) -> float:
    """A complete embed run in a subprocess; returns its wall time from taking the store lock."""
    proc = subprocess.Popen(embed_command(src, store), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=subprocess_env(), cwd=REPO)
    locked_at = wait_for_lock(proc, store, timeout)
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return time.perf_counter() - (locked_at or time.perf_counter())


def _holds_open(pid: int, path: str) -> bool:
    try:
        return any(os.readlink(fd) == path for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # the process ended, or an fd closed while listing
        return False


def wait_for_open(proc: subprocess.Popen, path: Path, timeout: float,
                  interval: float = 0.01) -> float | None:
    """Wait until the child holds ``path`` open; return that moment (perf_counter) or None.

    Watches /proc/PID/fd rather than trying the lock, which would race with the child.
    """
    target = str(path)
    deadline = time.perf_counter() + timeout
    while proc.poll() is None and time.perf_counter() < deadline:
        if _holds_open(proc.pid, target):
            return time.perf_counter()
        if interval:
            time.sleep(interval)
    return None


def wait_for_lock(proc: subprocess.Popen, store: Path, timeout: float) -> float | None:
    """Wait until the child holds the store's lock (start-up done, the work begins)."""
    return wait_for_open(proc, store.with_name(store.name + ".lock"), timeout)


@dataclass
class Snapshot:
    """What a store holds, read back after a fault."""

    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    failures: set[str] = field(default_factory=set)
    h5_datasets: int = 0


def snapshot(store: Path) -> Snapshot:
    """Open with plain h5py (every dataset readable), then read through FeatureStore."""
    from featurebank.extractor.store._store import FeatureStore

    snap = Snapshot()
    if not store.exists():
        return snap
    with h5py.File(store, "r") as f:  # a plain reader must open it and read every dataset
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                obj[()]
                snap.h5_datasets += 1
        f.visititems(visit)
    fs = FeatureStore(store)
    if fs.feature_sets():
        feats = fs.read()
        snap.vectors = dict(zip(feats.keys.tolist(), feats.X, strict=True))
        snap.labels = dict(zip(feats.keys.tolist(), feats.y.tolist(), strict=True))
    snap.failures = {os.path.basename(p) for p, _ in fs.failures()}
    return snap


def compare_to_clean(snap: Snapshot, clean: Snapshot, tol: float = 2e-2) -> list[str]:
    """Problems of ``snap`` against a clean run: unknown keys, wrong vectors or labels."""
    problems = []
    for key, vec in snap.vectors.items():
        if key not in clean.vectors:
            problems.append(f"row {key[:12]} is not in the clean run")
        elif not np.allclose(vec, clean.vectors[key], atol=tol, rtol=tol):
            err = np.abs(vec - clean.vectors[key]).max()
            problems.append(f"row {key[:12]} differs from the clean run (max |diff| {err:.3g})")
        elif snap.labels.get(key) != clean.labels.get(key):
            problems.append(f"row {key[:12]} label {snap.labels.get(key)!r} != {clean.labels[key]!r}")
    return problems


@dataclass
class KillTrial:
    delay_s: float
    rows_before: int
    rows_after_kill: int
    killed: bool
    problems: list[str]
    in_commit: bool = False


def kill_once(src: Path, store: Path, delay: float, clean: Snapshot,
              in_commit: bool = False) -> KillTrial:
    """Start an embed (a fresh run or a resume), SIGKILL it ``delay`` s after it took the store
    lock (so the kill lands in decoding, inference or a commit, not in interpreter start-up),
    or with ``in_commit`` at the first moment after ``delay`` that it holds the ``.h5`` open
    (the writer opens it only inside a commit), then check the store."""
    before = snapshot(store)
    proc = subprocess.Popen(embed_command(src, store), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=subprocess_env(), cwd=REPO)
    wait_for_lock(proc, store, timeout=120)
    caught = False
    try:
        proc.wait(timeout=delay)
        killed = False
    except subprocess.TimeoutExpired:
        if in_commit:  # busy-poll: a commit lasts milliseconds
            caught = wait_for_open(proc, store, timeout=60, interval=0) is not None
        killed = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    problems = [] if killed or proc.returncode == 0 else [f"run exited {proc.returncode}: {err[-500:]}"]
    after = snapshot(store)
    problems += compare_to_clean(after, clean)
    for key, vec in before.vectors.items():  # what was committed before this run stays as it was
        if key not in after.vectors or not np.array_equal(after.vectors[key], vec):
            problems.append(f"row {key[:12]} committed before the kill was lost or changed")
    return KillTrial(delay, len(before.vectors), len(after.vectors), killed, problems,
                     caught and killed)


def kill_campaign(src: Path, workdir: Path, clean: Snapshot, clean_seconds: float, kills: int,
                  seed: int = 0) -> tuple[list[KillTrial], list[str]]:
    """``kills`` SIGKILLs spread over successive runs on one store, then a run to completion.

    Each run after the first resumes the previous one, so kills land in decoding, inference,
    commits and resumes alike. Returns the trials and the final store's problems against clean.
    """
    rng = np.random.default_rng(seed)
    store = workdir / "killed.h5"
    trials = []
    for i in range(kills):
        # Anywhere in the clean run's working time (resumes are shorter and may finish first:
        # such a trial then checks a completed resume); every other kill waits for a commit.
        delay = float(rng.uniform(0.0, clean_seconds * (0.5 if i % 2 else 1.0)))
        trials.append(kill_once(src, store, delay, clean, in_commit=bool(i % 2)))
    try:
        run_embed(src, store)
    except AssertionError as exc:
        return trials, [f"the run after the kills failed: {exc}; trials: {trials}"]
    final = snapshot(store)
    problems = compare_to_clean(final, clean)
    if set(final.vectors) != set(clean.vectors):
        problems.append(f"after resume {len(final.vectors)} rows, clean run {len(clean.vectors)}")
    if final.failures != clean.failures:
        problems.append(f"failures {sorted(final.failures)} != clean {sorted(clean.failures)}")
    return trials, problems
