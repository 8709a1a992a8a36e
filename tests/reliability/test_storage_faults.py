"""Storage faults: disk full, read-only store, a second writer, a newer format, a foreign file.

Each must end with a clear error (exit 1, no traceback) and lose nothing already stored.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from benchmarks.harness.faults import (
    REPO,
    compare_to_clean,
    embed_command,
    make_kill_dataset,
    run_embed,
    snapshot,
    subprocess_env,
)


def _cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=300, env=subprocess_env(), cwd=REPO,
                          **kw)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_clean_error(out: subprocess.CompletedProcess, *words: str) -> None:
    assert out.returncode == 1, (out.returncode, out.stderr[-1500:])
    assert "Traceback" not in out.stderr, out.stderr[-1500:]
    for w in words:
        assert w in out.stderr, out.stderr[-1500:]


@pytest.fixture(scope="module")
def data(tmp_path_factory, lite0_onnx):
    src = make_kill_dataset(tmp_path_factory.mktemp("faults-src"), per_photo=4)
    work = tmp_path_factory.mktemp("faults")
    run_embed(src, work / "clean.h5")
    return src, work / "clean.h5", snapshot(work / "clean.h5")


@pytest.fixture(scope="module")
def half_store_master(data, tmp_path_factory) -> Path:
    src, _, _ = data
    folder = tmp_path_factory.mktemp("half")
    listing = folder / "animal.txt"  # the labels a folder run over all of src would give
    listing.write_text("".join(f"{p},animal\n" for p in sorted((src / "animal").iterdir())))
    store = folder / "s.h5"
    run_embed(listing, store)
    return store


@pytest.fixture
def half_store(half_store_master, tmp_path) -> Path:
    """A fresh copy of a store holding the ``animal`` half of the data (a complete run)."""
    store = tmp_path / "s.h5"
    shutil.copy(half_store_master, store)
    return store


@pytest.fixture(scope="module")
def disk_full(data, half_store_master, tmp_path_factory):
    """An embed run that runs out of room (RLIMIT_FSIZE) while extending a half-full store."""
    src, _, _ = data
    store = tmp_path_factory.mktemp("disk-full") / "s.h5"
    shutil.copy(half_store_master, store)
    before = snapshot(store)
    limit = store.stat().st_size + 2048  # the next commit cannot fit

    def small_disk():  # in the child: writes past `limit` fail with EFBIG (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = _cli(embed_command(src, store), preexec_fn=small_disk)
    return store, out, before


def test_disk_full_loses_nothing_and_resumes(data, disk_full):
    src, _, clean = data
    store, out, before = disk_full
    assert out.returncode != 0  # it did run out of room
    after = snapshot(store)
    assert not compare_to_clean(after, clean)
    for key, vec in before.vectors.items():
        assert np.array_equal(after.vectors[key], vec), "a committed row changed after disk full"
    run_embed(src, store)  # room again: the run completes the store
    final = snapshot(store)
    assert set(final.vectors) == set(clean.vectors) and not compare_to_clean(final, clean)


def test_disk_full_clear_error(disk_full):
    _, out, _ = disk_full
    _assert_clean_error(out, "free disk space")


def test_read_only_store(data, half_store):
    src, _, _ = data
    digest = _sha(half_store)
    if os.geteuid() != 0:
        half_store.chmod(0o444)
        out = _cli(embed_command(src, half_store))
    else:  # root ignores mode bits: mount the folder read-only instead
        ro = half_store.parent / "ro"
        ro.mkdir()
        if subprocess.run(["mount", "--bind", "-o", "ro", str(half_store.parent), str(ro)],
                          capture_output=True).returncode != 0:
            pytest.skip("running as root and cannot bind-mount read-only")
        try:
            out = _cli(embed_command(src, ro / half_store.name))
        finally:
            subprocess.run(["umount", str(ro)], check=True)
    _assert_clean_error(out, "s.h5")
    assert "read-only" in out.stderr or "Read-only" in out.stderr or "cannot write" in out.stderr
    assert _sha(half_store) == digest
    info = _cli([sys.executable, "-m", "featurebank", "store", "info", str(half_store)])
    assert info.returncode == 0, info.stderr


def test_second_writer_refused(data, half_store):
    from featurebank.extractor.store._store import FeatureStore

    src, _, _ = data
    digest = _sha(half_store)
    with FeatureStore(half_store, mode="a"):
        out = _cli(embed_command(src, half_store))
    _assert_clean_error(out, "another process")
    assert _sha(half_store) == digest
    run_embed(src, half_store)  # the lock went with its holder


def test_newer_format_version_refused(data, half_store):
    src, _, _ = data
    with h5py.File(half_store, "a") as f:
        f.attrs["format_version"] = 99
    digest = _sha(half_store)
    for args in (embed_command(src, half_store),
                 [sys.executable, "-m", "featurebank", "store", "info", str(half_store)]):
        _assert_clean_error(_cli(args), "format version 99", "upgrade")
    assert _sha(half_store) == digest


@pytest.mark.parametrize("content", [b"not hdf5 at all\n" * 100, b"\x89HDF\r\n\x1a\n" + b"\0" * 600])
def test_foreign_file_as_store(data, tmp_path, content):
    """Text, or an HDF5 signature followed by garbage: refused by name, never overwritten."""
    src, _, _ = data
    store = tmp_path / "foreign.h5"
    store.write_bytes(content)
    for args in (embed_command(src, store),
                 [sys.executable, "-m", "featurebank", "store", "info", str(store)]):
        _assert_clean_error(_cli(args), "foreign.h5")
    assert store.read_bytes() == content


def test_store_copied_mid_write_is_readable(data, tmp_path):
    """Copies taken while a run is under way, between its commits (what a backup of a live
    store sees), open with plain h5py and hold a correct part of the clean run. The run
    announces each pause between commits and waits while the copy is taken
    (tests/_killpoints.py): no copy depends on when the test happens to look."""
    from tests._killpoints import wait_for_point

    src, _, clean = data
    store = tmp_path / "live.h5"
    pauses = (2, 3, 4)  # batches of 4 of the 16 images: 4, 8, 12 rows stored by then
    args = embed_command(src, store)[3:]  # after "python -m featurebank"
    proc = subprocess.Popen([sys.executable, "-m", "tests._killpoints", "commit",
                             ",".join(map(str, pauses)), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=subprocess_env(), cwd=REPO)
    partial, problems = [], []
    try:
        for n in pauses:
            assert wait_for_point(proc.stdout) == f"KILLPOINT commit {n}"
            copy = tmp_path / f"copy-{n}.h5"
            shutil.copy(store, copy)  # the writer waits between two commits meanwhile
            snap = snapshot(copy)
            problems += compare_to_clean(snap, clean)
            partial.append(len(snap.vectors))
            proc.stdin.write(b"go on\n")
            proc.stdin.flush()
        proc.stdin.close()
        assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-1500:]
    finally:
        proc.kill()
    assert not problems, problems[:5]
    # copies were really taken mid-run, each holding more than the one before, none all rows
    assert 0 < partial[0] < partial[-1] < len(clean.vectors), partial
