"""Incremental, crash-safe HDF5 feature store (layout in docs/STORE_FORMAT.md).

Crash safety: the writer holds only a lock between commits; each commit opens the file, appends
the batch, bumps the ``committed`` counters last, and closes it. A SIGKILL between commits
therefore finds a cleanly closed file, and rows past a ``committed`` counter (a commit cut
short) are ignored by readers and overwritten by the next writer. A kill *inside* a commit can
leave HDF5 file-space metadata that still reads but breaks later appends; a ``STORE.h5.dirty``
marker present only while a commit has the file open tells the next writer to rewrite the
file from its committed rows first (``_repair``). A new store is created under a temporary
name and renamed, and a commit that may not fit on the disk is refused before the file is
touched (``_room``). No manual repair step is ever needed. Reads that meet a commit in flight
are retried (``_retry``, the one retry layer).

A second writer is refused (or, with ``wait``, waits its turn) by the writer lock on
``STORE.h5.lock`` (``_lock``, filelock's ``flock``); the kernel drops that lock when its process
dies, so a killed run never leaves a stale lock behind, and a writer that closes removes the file.

Paths are stored absolute (format version 2), or as URLs, tar members and parquet rows (3): a
store read from another folder finds its images. A version-1 store (relative paths) opens
read-only; ``featurebank store upgrade`` converts it. A version-2 store is raised to 3 when a
writer first opens it (the paths stay valid)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import h5py
import numpy as np
from numpy.typing import ArrayLike

from featurebank.errors import FeaturebankError
from featurebank.extractor.store._format import (
    FORMAT_VERSION,
    TABLES,
    Features,
    FeatureSet,
    absolute,
    is_sharded,
    write_roots,
)
from featurebank.extractor.store._lock import StoreLockedError, WriterLock
from featurebank.extractor.store._repair import dirty_marker, repair
from featurebank.extractor.store._retry import retry_read
from featurebank.extractor.store._room import check_room
from featurebank.extractor.store._tables import TableWriter
from featurebank.extractor.store._upgrade import raise_version
from featurebank.options import Options, check_value
from featurebank.spec import DTYPES, FeatureSpec

log = logging.getLogger(__name__)


__all__ = ["FORMAT_VERSION", "FeatureSet", "FeatureStore", "Features", "StoreLockedError"]


class FeatureStore(TableWriter):
    """An HDF5 file holding any number of feature sets, keyed by spec fingerprint.

    Parameters
    ----------
    path : path
        The ``.h5`` file (created in mode ``'a'`` when absent).
    mode : {'r', 'a'}
        ``'a'`` takes the writer lock; a second writer gets :class:`StoreLockedError`.
    wait : float
        Mode ``'a'``: seconds to wait for another writer to finish before that error (parallel
        workers sharing one store take turns). Readers never wait.
    """

    def __init__(self, path: str | Path, *, mode: str = "r", wait: float = 0.0):
        if mode not in ("r", "a"):
            raise ValueError("mode must be 'r' or 'a'")
        self.path = Path(path)
        self.mode = mode
        self._lock: WriterLock | None = None
        # Present while a commit has the file open: a writer that finds it died mid-commit.
        self._dirty = dirty_marker(self.path)
        self._seen: dict[str, set[str]] = {}
        self._image_keys: set[str] | None = None
        self._path_pairs: dict[tuple[str, str], str] | None = None  # (path, key) -> label
        self._failure_pairs: set[tuple[str, str]] | None = None
        self.format_version = FORMAT_VERSION
        if mode == "a":
            self._lock = WriterLock(self.path).acquire(wait)
            try:
                if self._dirty.exists() and self.path.is_file():
                    repair(self.path)
                    self._dirty.unlink()
                self._init_file()
            except BaseException:
                self.close()
                raise
        elif not self.path.is_file():
            raise FeaturebankError(f"store {self.path} does not exist; create it with 'featurebank embed'")
        else:
            self._check_readable()  # format and version now, not at first read

    # -- files and locks -----------------------------------------------------------------
    @retry_read
    def _check_readable(self) -> None:
        with self._open("r"):
            pass

    def _open(self, mode: str) -> h5py.File:
        """The file, its format checked. In mode ``'r'`` an HDF5 file that fails to open is
        left to the caller's retry layer (a commit may be in flight); anything else that is
        not a store gets a clear error at once."""
        if mode == "r":
            if not os.access(self.path, os.R_OK):
                raise FeaturebankError(f"store {self.path}: permission denied")
            if not h5py.is_hdf5(self.path):
                raise FeaturebankError(f"store {self.path}: not a readable HDF5 store")
            f = h5py.File(self.path, "r", locking=False)
        else:
            try:
                f = h5py.File(self.path, mode, locking=False)
            except OSError as exc:
                if self.path.exists():
                    why = "permission denied" if not os.access(self.path, os.W_OK) \
                        else f"not a writable HDF5 store ({exc})"
                    raise FeaturebankError(f"store {self.path}: {why}") from exc
                raise FeaturebankError(f"cannot create store {self.path}: {exc}") from exc
        version = int(f.attrs.get("format_version", FORMAT_VERSION if mode != "r" else -1))
        if version > FORMAT_VERSION:
            f.close()
            raise FeaturebankError(
                f"store {self.path} has format version {version}, newer than this featurebank "
                f"understands ({FORMAT_VERSION}); upgrade featurebank to read it")
        if version < 0 and "images" not in f:
            f.close()
            raise FeaturebankError(f"{self.path} is an HDF5 file but not a featurebank store")
        self.format_version = max(version, 1)
        return f

    def _init_file(self) -> None:
        if self.path.exists() and not os.access(self.path, os.W_OK):
            raise FeaturebankError(f"store {self.path} is read-only; make it writable or use another path")
        if not self.path.exists():  # created whole under a temporary name: a kill leaves no stub
            tmp = self.path.with_name(f".{self.path.name}.new.tmp")
            try:
                with h5py.File(tmp, "w", locking=False) as f:
                    f.attrs["format_version"] = FORMAT_VERSION
                    write_roots(f, [])
                    for group in TABLES:
                        g = f.create_group(group)
                        if group != "features":  # feature sets count their own rows
                            g.attrs["committed"] = 0
                os.replace(tmp, self.path)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise FeaturebankError(f"cannot create store {self.path}: {exc}") from exc
        self._refuse_sharded()
        if self.format_version == 2:  # every version-2 path is a version-3 path
            raise_version(self.path)
            log.info("store %s: format version 2 raised to %d", self.path, FORMAT_VERSION)
            self.format_version = FORMAT_VERSION
        if self.format_version < FORMAT_VERSION:
            raise FeaturebankError(upgrade_message(self.path, self.format_version))

    @retry_read
    def _refuse_sharded(self) -> None:
        with self._open("r") as f:
            sharded = is_sharded(f)
        if sharded:
            raise FeaturebankError(
                f"store {self.path} is a sharded store written by the Ray engine; add to it "
                "with 'featurebank embed --engine ray', or embed into another store")

    def close(self) -> None:
        # getattr: __del__ also runs on an object whose __init__ raised before the lock existed
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()
            self._lock = None

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    # -- writing ------------------------------------------------------------------------
    def _writer_check(self) -> None:
        if self._lock is None:
            raise FeaturebankError(f"store {self.path} is open read-only; open it with mode='a'")

    def commit(self, rows: dict[FeatureSpec, tuple[list[str], np.ndarray]] | None = None,
               images: list[tuple[str, str, str]] | None = None,
               failures: list[tuple[str, str]] | None = None, dtype: str = "float16",
               roots: Iterable[str | Path] | None = None) -> None:
        """Durably append one batch: feature rows per spec, (key, path, label) images, failures.

        Rows of a spec are ``[N, D]`` vectors or ``[N, *row_shape]`` maps (stored flattened,
        the shape in the set's ``row_shape`` attr). Paths are stored absolute (relative ones
        against the current folder); ``roots`` adds collection folders to the store's list.
        After this returns, a SIGKILL loses nothing of the batch; if the process dies inside it,
        none of the batch counts (counters are written last).
        """
        self._writer_check()
        check_value("dtype", dtype, Options(DTYPES), owner="FeatureStore.commit")
        images = [(k, absolute(p), lab) for k, p, lab in images or ()]
        failures = [(absolute(p), r) for p, r in failures or ()]
        self._load_tables()
        check_room(self.path, rows, images, failures)
        try:
            self._dirty.touch()
            with self._open("a") as f:
                if roots:
                    write_roots(f, [absolute(r) for r in roots])
                # Images before features: a commit cut short never leaves a row without its label.
                if images:
                    self._commit_images(f, images)
                offered = written = 0
                for spec, (keys, X) in (rows or {}).items():
                    offered += len(keys)
                    written += self._commit_rows(f, spec, keys, X, dtype)
                if rows:
                    self._log_commit(f, offered, written)
                self._commit_failures(f, failures)
            self._dirty.unlink()
        except (OSError, RuntimeError) as exc:  # h5py raises RuntimeError on some failed flushes
            self._seen.clear()
            self._image_keys = self._path_pairs = self._failure_pairs = None  # re-read what really got committed
            raise FeaturebankError(
                f"writing store {self.path} failed ({exc}); rows committed before are intact — "
                "free disk space and run again to continue") from exc

    def add_rows(self, spec: FeatureSpec, keys: Sequence[str], features: ArrayLike,
                 paths: Sequence[str | Path], labels: Sequence[str] | None = None,
                 dtype: str = "float16") -> None:
        """Durably add vectors of ``spec`` for content ``keys`` with their paths and labels.

        Keys already in the feature set are skipped. ``dtype`` applies when the set is new.
        """
        keys = [str(k) for k in keys]
        labels = [""] * len(keys) if labels is None else [str(x) for x in labels]
        features = np.asarray(features)
        if features.ndim < 2 or len(features) != len(keys) or len(paths) != len(keys):
            raise FeaturebankError(f"add_rows needs features [N, D] (or maps [N, C, H, W]) with "
                                   f"N = len(keys) = len(paths); "
                                   f"got {features.shape}, {len(keys)} keys, {len(paths)} paths")
        self.commit({spec: (keys, features)}, list(zip(keys, map(str, paths), labels, strict=True)),
                    dtype=dtype)

    def add_paths(self, keys: Sequence[str], paths: Sequence[str | Path],
                  labels: Sequence[str] | None = None) -> None:
        """Durably record more paths for contents (duplicates and cached files)."""
        keys = [str(k) for k in keys]
        labels = [""] * len(keys) if labels is None else [str(x) for x in labels]
        self.commit(images=list(zip(keys, map(str, paths), labels, strict=True)))

    def record_failure(self, path: str, reason: str) -> None:
        """Durably record that ``path`` could not be embedded and why."""
        self.commit(failures=[(str(path), str(reason))])

    def read_maps(self, layer_or_fingerprint: str | None = None) -> np.ndarray:
        """The rows of one feature set shaped ``[rows, *row_shape]`` (float32)."""
        return self.read(layer_or_fingerprint).maps()

    def export(self, out: str | Path, layer_or_fingerprint: str | None = None,
               chunk_rows: int | None = None) -> Path:
        """Write one feature set to ``out``: ``.parquet``, ``.npz`` or ``.npy`` by its extension
        (another one is refused), streamed by row chunks (bounded memory); see
        :func:`featurebank.extractor.store._export.export_features`."""
        from featurebank.extractor.store._export import export_features

        return export_features(self, out, layer_or_fingerprint, chunk_rows)

    def export_npz(self, out: str | Path, layer_or_fingerprint: str | None = None) -> Path:
        """Deprecated: :meth:`export` writes an npz file for an ``.npz`` name (the one way).

        Writes ``features``, ``keys``, ``paths``, ``labels`` (and the spec JSON) to ``out`` as
        an npz file, whatever its name."""
        import warnings

        from featurebank.extractor.store._export import export_features

        warnings.warn("FeatureStore.export_npz is deprecated; use export(out) with an .npz "
                      "name", DeprecationWarning, stacklevel=2)
        return export_features(self, out, layer_or_fingerprint, fmt=".npz")


def upgrade_message(path: str | Path, version: int) -> str:
    if version == 2:
        return (f"store {path} has format version 2; 'featurebank store upgrade {path}' raises "
                f"it to {FORMAT_VERSION} (nothing in it changes)")
    return (f"store {path} has format version {version}, whose paths are relative to the folder "
            f"'featurebank embed' ran in; it can be read but not added to. Upgrade it once with "
            f"'featurebank store upgrade {path} --root DIR' (DIR: that folder) to store them "
            "absolute")
