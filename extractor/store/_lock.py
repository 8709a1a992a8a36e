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
from featurebank.extractor.store._format import committed_rows

from featurebank.errors import FeaturebankError

log = logging.getLogger(__name__)


class StoreLockedError(FeaturebankError):
    """Another process is writing this store."""


def lock_path(store_path: str | Path) -> Path:
    """``STORE.h5.lock`` next to ``STORE.h5``."""
    p = Path(store_path)
    return p.with_name(p.name + ".lock")


def acquire_writer_lock(store_path: str | Path) -> int:
    """Take the exclusive writer lock without waiting; return the descriptor holding it.

    Raises
    ------
    StoreLockedError
        Another process holds the lock.
    FeaturebankError
        The lock file cannot be created (read-only folder, ...).
    """
    try:
        fd = os.open(lock_path(store_path), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise FeaturebankError(f"cannot write store {store_path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLockedError(
            f"store {store_path} is being written by another process; wait for it to finish "
            "or write to another store") from None
    return fd


def release_writer_lock(fd: int) -> None:
    """Release the lock (closing the descriptor drops the flock)."""
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
