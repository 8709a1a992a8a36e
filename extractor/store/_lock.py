"""Writer safety of the feature store: the single-writer lock, the room check before a commit,
the rewrite after a crash inside a commit, and retried reads.

The lock is an ``fcntl.flock`` on the sidecar ``STORE.h5.lock``.

``flock`` locks belong to the open file description, so the kernel drops them when the writing
process dies however it dies (SIGKILL included): a killed run never leaves a stale lock, and no
lock-breaking tool or PID file is needed. Readers never take the lock.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import resource
import shutil
import time
from pathlib import Path

import h5py
import numpy as np

from featurebank.errors import FeaturebankError
from featurebank.extractor.store._format import committed_rows

log = logging.getLogger(__name__)


class StoreLockedError(FeaturebankError):
    """Another process is writing this store."""


def lock_path(store_path: str | Path) -> Path:
    """``STORE.h5.lock`` next to ``STORE.h5``."""
    p = Path(store_path)
    return p.with_name(p.name + ".lock")


def acquire_writer_lock(store_path: str | Path, wait: float = 0.0) -> int:
    """Take the exclusive writer lock; return the descriptor holding it.

    Parameters
    ----------
    store_path : path
        The store (the lock is ``STORE.h5.lock`` next to it).
    wait : float
        Seconds to wait for another writer to finish (0: refuse at once).

    Raises
    ------
    StoreLockedError
        Another process holds the lock (still, after ``wait`` seconds).
    FeaturebankError
        The lock file cannot be created (read-only folder, ...).
    """
    path = lock_path(store_path)
    deadline = time.monotonic() + max(0.0, wait)
    delay = 0.01
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise FeaturebankError(f"cannot write store {store_path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                raise StoreLockedError(
                    f"store {store_path} is being written by another process; wait for it to "
                    "finish or write to another store") from None
            time.sleep(delay)
            delay = min(0.2, delay * 2)
            continue
        # The holder before us removes the lock file while it still holds it (release below):
        # a lock taken on a file no longer at `path` guards nothing, so take it again.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def release_writer_lock(fd: int, store_path: str | Path | None = None) -> None:
    """Release the lock and, given ``store_path``, remove the lock file so none is left behind.

    The file is removed while still locked; a waiting writer notices that its lock is on a
    removed file and takes a fresh one (see :func:`acquire_writer_lock`).
    """
    if store_path is not None:
        try:
            if os.fstat(fd).st_ino == os.stat(lock_path(store_path)).st_ino:
                lock_path(store_path).unlink()
        except OSError:
            pass  # a read-only folder keeps its lock file: harmless, it is re-used
    os.close(fd)


def check_room(path: Path, rows, images, failures) -> None:
    """Refuse a commit that may not fit, before touching the file.

    HDF5 cannot roll back a write that fails half-way (a full disk mid-commit can leave
    metadata pointing past the end of the file), so room is checked first: the batch's
    bytes plus whole new chunks (<= 1 MiB each) and metadata, with a generous margin.
    """
    payload = sum(np.asarray(X).size * 4 + 80 * len(k) for k, X in (rows or {}).values())
    payload += sum(len(str(p)) + len(str(lab)) + 96 for _, p, lab in images or ())
    payload += sum(len(str(p)) + len(str(r)) + 32 for p, r in failures or ())
    need = 2 * payload + (1 << 20) * (2 + 2 * len(rows or {})) + (4 << 20)
    free = shutil.disk_usage(path.parent).free
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]  # a per-file size cap acts like a full disk
    size = path.stat().st_size if path.exists() else 0
    if limit != resource.RLIM_INFINITY:
        free = min(free, limit - size)
    if free < need:
        raise FeaturebankError(
            f"not enough room to write store {path}: {free / 1e6:.1f} MB free, a batch "
            f"needs up to {need / 1e6:.1f} MB; rows committed before are intact — free disk "
            "space and run again to continue")


def repair(path: Path) -> None:
    """Rewrite the file from its committed rows after a writer died inside a commit.

    HDF5 cannot roll back: a kill (or a full disk) mid-commit can leave file-space metadata
    that still reads fine but breaks the next append. The committed rows are intact, so
    they are copied into a fresh file that atomically replaces the old one.
    """
    log.warning("store %s: the last writer stopped inside a commit; rewriting it from its "
                "committed rows", path)
    tmp = path.with_name(f".{path.name}.repair.tmp")
    try:
        with h5py.File(path, "r", locking=False) as src, \
                h5py.File(tmp, "w", locking=False) as dst:
            dst.attrs.update(src.attrs)
            for name in src:
                _copycommitted_rows(src[name], dst.create_group(name))
        os.replace(tmp, path)
    except (OSError, RuntimeError, KeyError) as exc:
        tmp.unlink(missing_ok=True)
        raise FeaturebankError(
            f"store {path} was damaged by a crash inside a commit and cannot be rewritten "
            f"({exc}); free disk space, or read it with FeatureStore(..., mode='r') and "
            "embed into a new store") from exc


def _copycommitted_rows(src: h5py.Group, dst: h5py.Group) -> None:
    """Copy a group's attrs and the committed rows of its datasets (recursively)."""
    dst.attrs.update(src.attrs)
    n = committed_rows(src)
    for name, obj in src.items():
        if isinstance(obj, h5py.Group):
            _copycommitted_rows(obj, dst.create_group(name))
        else:
            dst.create_dataset(name, data=obj[:n], dtype=obj.dtype, chunks=obj.chunks,
                               maxshape=(None, *obj.shape[1:]))


def retry_read(method):
    """Retry a read that met a commit in flight (h5py errors on half-written metadata).

    The writer keeps the file open for milliseconds per batch, so a few short retries give
    a consistent view; a file that stays unreadable gets a clear error.
    """
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        for attempt in range(5):
            try:
                return method(self, *args, **kwargs)
            except (OSError, RuntimeError, KeyError, ValueError) as exc:
                if attempt == 4:
                    raise FeaturebankError(f"cannot read store {self.path} ({exc}); if a writer "
                                           "is running, try again when it is done") from exc
                time.sleep(0.05 * (attempt + 1))
    return wrapper
