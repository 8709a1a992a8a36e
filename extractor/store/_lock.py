"""The single-writer lock of a feature store: ``filelock`` on the sidecar ``STORE.h5.lock``.

filelock's Unix lock is an ``fcntl.flock``: it belongs to the open file description, so the
kernel drops it when the writing process dies however it dies (SIGKILL included). A killed run
never leaves a stale lock, and no lock-breaking tool is needed. Readers never take the lock.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import filelock

from featurebank.errors import FeaturebankError

log = logging.getLogger(__name__)
__all__ = ["StoreLockedError", "WriterLock", "lock_path"]


class StoreLockedError(FeaturebankError):
    """Another process is writing this store."""


def lock_path(store_path: str | Path) -> Path:
    """``STORE.h5.lock`` next to ``STORE.h5``."""
    p = Path(store_path)
    return p.with_name(p.name + ".lock")


class WriterLock:
    """The exclusive writer lock of one store; :meth:`acquire`, then :meth:`release`.

    The holder's process id is written into the lock file, so a refused writer can say which
    process holds the store.

    Parameters
    ----------
    store_path : path
        The store (the lock is ``STORE.h5.lock`` next to it).
    """

    def __init__(self, store_path: str | Path):
        self.store_path = Path(store_path)
        self.path = lock_path(store_path)
        self._held: tuple[int, int] | None = None  # (st_dev, st_ino) of the file we hold
        # thread_local=False: a store may be closed by another thread (or its finaliser) than
        # the one that opened it.
        self._lock = filelock.FileLock(self.path, thread_local=False, on_acquired=self._mark)

    def _mark(self, fd: int) -> None:
        st = os.fstat(fd)
        self._held = (st.st_dev, st.st_ino)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def acquire(self, wait: float = 0.0) -> WriterLock:
        """Take the lock, waiting up to ``wait`` seconds for another writer (0: refuse at once).

        Raises
        ------
        StoreLockedError
            Another process holds the lock (still, after ``wait`` seconds).
        FeaturebankError
            The store's folder is missing or the lock file cannot be created.
        """
        # filelock would create a missing folder; a store path in a folder that does not exist
        # is a mistake to report, not to paper over.
        if not self.path.parent.is_dir():
            raise FeaturebankError(f"cannot write store {self.store_path}: folder "
                                   f"{self.path.parent} does not exist")
        try:
            if not self._try(0.0) and not (wait > 0 and self._wait(wait)):
                raise StoreLockedError(
                    f"store {self.store_path} is being written by another process"
                    f"{self._holder()}; wait for it to finish or write to another store")
        except OSError as exc:
            raise FeaturebankError(f"cannot write store {self.store_path}: {exc.strerror}") from exc
        return self

    def _try(self, timeout: float) -> bool:
        try:
            self._lock.acquire(timeout=timeout, poll_interval=0.02)
        except filelock.Timeout:
            return False
        return True

    def _wait(self, wait: float) -> bool:
        log.info("store %s is being written by another process%s; waiting up to %g s for it",
                 self.store_path, self._holder(), wait)
        return self._try(wait)

    def _holder(self) -> str:
        try:
            pid = int(self.path.read_text().strip())
        except (OSError, ValueError):
            return ""
        return f" (pid {pid})"

    def release(self) -> None:
        """Release the lock and remove the lock file, so a finished writer leaves only the store.

        filelock keeps a Unix lock file in place on release; the file is removed here while it
        is still held (and only if it is the one held). A writer waiting on the removed file
        sees that it is unlinked once its ``flock`` succeeds, and filelock takes a fresh one.
        """
        if not self._lock.is_locked:
            return
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._held:
                self.path.unlink()
        except OSError:
            pass  # a read-only folder keeps its lock file: harmless, it is re-used
        self._held = None
        self._lock.release(force=True)
