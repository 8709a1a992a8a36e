"""The single-writer lock of a feature store: ``fcntl.flock`` on the sidecar ``STORE.h5.lock``.

``flock`` locks belong to the open file description, so the kernel drops them when the writing
process dies however it dies (SIGKILL included): a killed run never leaves a stale lock, and no
lock-breaking tool or PID file is needed. Readers never take the lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from export.errors import FeaturebankError


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
