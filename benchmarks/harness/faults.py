"""Fault injection shared by the reliability tests and ``benchmarks/reliability.py``.

SIGKILLs of real ``python -m featurebank embed`` runs at random moments, and reading the store
back afterwards with plain h5py and with :class:`featurebank.extractor.FeatureStore`.
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


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment a child process needs, stated explicitly: the model cache this process
    uses (the test session's, under pytest), its home, one thread per library; ``extra`` on top.

    The child imports the installed featurebank (no PYTHONPATH: tests check what users get).
    """
    from featurebank.export._cache import resolve_cache_dir

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "OMP_NUM_THREADS": "1", "FEATUREBANK_CACHE": str(resolve_cache_dir()),
            "HOME": str(Path.home()), **extra}


def run_embed(src: Path, store: Path, timeout: float = 300) -> float:
    """A complete embed run in a subprocess; returns its wall time from taking the store lock."""
    proc = subprocess.Popen(embed_command(src, store), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=subprocess_env(), cwd=REPO)
    locked_at = wait_for_lock(proc, store, timeout)
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return time.perf_counter() - (locked_at or time.perf_counter())


def holds_open(pid: int, path: str) -> bool:
    """Whether process ``pid`` has ``path`` open now (read from /proc/PID/fd)."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # the process ended
        return False
    for fd in fds:
        try:
            if os.readlink(fd) == path:
                return True
        except OSError:  # that descriptor closed while we looked
            continue
    return False


def wait_for_open(proc: subprocess.Popen, path: Path, timeout: float,
                  interval: float = 0.01) -> float | None:
    """Wait until the child holds ``path`` open; return that moment (perf_counter) or None.

    Watches /proc/PID/fd rather than trying the lock, which would race with the child.
    """
    target = str(path)
    deadline = time.perf_counter() + timeout
    while proc.poll() is None and time.perf_counter() < deadline:
        if holds_open(proc.pid, target):
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


def float16_ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance between float16 values in units in the last place (0: bit-identical).

    Stores hold float16 (the default ``--dtype``). A resumed run groups images into other
    batches than a clean one, and onnxruntime's float32 results for the same image then differ
    in their last bits (~1e-7 relative); rounded to float16 (relative step 2^-10) that moves a
    value by at most one float16 step. So "equals a clean run" means: at most 1 ulp apart.
    """
    ia, ib = (np.asarray(x, np.float16).view(np.int16).astype(np.int32) for x in (a, b))
    # int16 bit patterns of floats are monotonic in magnitude for each sign: fold negatives
    ka, kb = (np.where(i < 0, -(i & 0x7FFF), i) for i in (ia, ib))
    return np.abs(ka - kb)


def compare_to_clean(snap: Snapshot, clean: Snapshot, max_ulps: int = 1) -> list[str]:
    """Problems of ``snap`` against a clean run: unknown keys, wrong vectors or labels.

    Vectors must lie within ``max_ulps`` float16 steps of the clean run's (see
    :func:`float16_ulps`; 1 is what rounding of batch-dependent float32 results allows).
    """
    problems = []
    for key, vec in snap.vectors.items():
        if key not in clean.vectors:
            problems.append(f"row {key[:12]} is not in the clean run")
            continue
        ulps = int(float16_ulps(vec, clean.vectors[key]).max())
        if ulps > max_ulps:
            problems.append(f"row {key[:12]} differs from the clean run by {ulps} float16 ulps")
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
    store: str = ""


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
                     caught and killed, store.name)


def kill_campaign(src: Path, workdir: Path, clean: Snapshot, clean_seconds: float, kills: int,
                  seed: int = 0) -> tuple[list[KillTrial], list[str]]:
    """``kills`` SIGKILLs of successive runs, each resuming the store the last one left.

    Delays are drawn from a seeded generator and scaled to the measured clean run and to the
    share of the work still left (at most 80 % of the time the rest should take), so on a fast
    or a slow machine alike the kills land while the run works: in decoding, inference, commits
    and resumes. Every other kill waits for a commit. Once a store is complete the next trial
    starts a new one, so no kill is wasted on a finished run. Afterwards each store is run to
    completion. Returns the trials and the final stores' problems against the clean run.
    """
    rng = np.random.default_rng(seed)
    stores = [workdir / "killed-0.h5"]
    trials = []
    for i in range(kills):
        done = len(snapshot(stores[-1]).vectors)
        if done == len(clean.vectors):
            stores.append(workdir / f"killed-{len(stores)}.h5")
            done = 0
        left = 1.0 - done / len(clean.vectors)
        in_commit = bool(i % 2)
        # The clean run's time runs to its exit (teardown included), so the rows themselves are
        # written in its first part: plain kills draw from up to 80 % of the time the rest
        # should take (some land after commits, so resumes make progress), kills that wait for
        # a commit from the first quarter (the next commit after the delay must still come).
        share = 0.25 if in_commit else 0.8
        delay = float(rng.uniform(0.0, share * clean_seconds * left))
        trials.append(kill_once(src, stores[-1], delay, clean, in_commit=in_commit))
    problems = []
    for store in stores:
        try:
            run_embed(src, store)
        except AssertionError as exc:
            return trials, [f"the run after the kills failed on {store.name}: {exc}"]
        final = snapshot(store)
        problems += [f"{store.name}: {p}" for p in compare_to_clean(final, clean)]
        if set(final.vectors) != set(clean.vectors):
            problems.append(f"{store.name}: after resume {len(final.vectors)} rows, clean run "
                            f"{len(clean.vectors)}")
        if final.failures != clean.failures:
            problems.append(f"{store.name}: failures {sorted(final.failures)} != clean "
                            f"{sorted(clean.failures)}")
    return trials, problems
