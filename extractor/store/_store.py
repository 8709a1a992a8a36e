"""Incremental, crash-safe HDF5 feature store (layout in docs/STORE_FORMAT.md).

Crash safety: the writer holds only a lock between commits; each commit opens the file, appends
the batch, bumps the ``committed`` counters last, and closes it. A SIGKILL between commits
therefore finds a cleanly closed file, and rows past a ``committed`` counter (a commit cut
short) are ignored by readers and overwritten by the next writer. A kill *inside* a commit can
leave HDF5 file-space metadata that still reads but breaks later appends; a ``STORE.h5.dirty``
marker present only while a commit has the file open tells the next writer to rewrite the
file from its committed rows first (``featurebank.extractor.store._lock.repair``). A new store is created under
a temporary name and renamed, and a commit that may not fit on the disk is refused before the
file is touched. No manual repair step is ever needed.

A second writer is refused by an ``fcntl.flock`` on ``STORE.h5.lock``; the kernel drops that
lock when its process dies, so a killed run never leaves a stale lock behind."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import h5py
import numpy as np
from featurebank.extractor.store._format import (
    BYTES_DTYPE,
    CHUNK_ROWS,
    FORMAT_VERSION,
    KEY_DTYPE,
    STR_DTYPE,
    Features,
    FeatureSetInfo,
    append_rows,
    committed_rows,
    decode_path,
    decode_texts,
    encode_label,
    encode_path,
)
from featurebank.extractor.store._lock import (
    StoreLockedError,
    acquire_writer_lock,
    check_room,
    release_writer_lock,
    repair,
    retry_read,
)

from featurebank.errors import FeaturebankError
from featurebank.spec import FeatureSpec

log = logging.getLogger(__name__)
__all__ = ["FORMAT_VERSION", "FeatureSetInfo", "FeatureStore", "Features", "StoreLockedError"]

class FeatureStore:
    """An HDF5 file holding any number of feature sets, keyed by spec fingerprint.

    Parameters
    ----------
    path : path
        The ``.h5`` file (created in mode ``'a'`` when absent).
    mode : {'r', 'a'}
        ``'a'`` takes the writer lock; a second writer gets :class:`StoreLockedError`.
    """

    def __init__(self, path: str | Path, mode: str = "r"):
        if mode not in ("r", "a"):
            raise ValueError("mode must be 'r' or 'a'")
        self.path = Path(path)
        self.mode = mode
        self._lock_fd: int | None = None
        # Present while a commit has the file open: a writer that finds it died mid-commit.
        self._dirty = self.path.with_name(self.path.name + ".dirty")
        self._seen: dict[str, set[str]] = {}
        self._image_keys: set[str] | None = None
        self._path_pairs: dict[tuple[str, str], str] | None = None  # (path, key) -> label
        self._failure_pairs: set[tuple[str, str]] | None = None
        if mode == "a":
            self._lock_fd = acquire_writer_lock(self.path)
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
            with self._open("r"):
                pass  # validates format and version now, not at first read

    # -- files and locks -----------------------------------------------------------------
    def _open(self, mode: str) -> h5py.File:
        try:
            f = self._h5(mode)
        except OSError as exc:
            if mode == "r" or self.path.exists():
                why = "permission denied" if not os.access(self.path, os.W_OK if mode != "r" else os.R_OK) \
                    else f"not a readable HDF5 store ({exc})"
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
        return f

    def _h5(self, mode: str) -> h5py.File:
        # A reader may catch a writer mid-commit (metadata half written); the writer closes the
        # file within milliseconds, so a reader retries briefly before calling the file bad.
        tries = 4 if mode == "r" and self.path.is_file() else 1
        for attempt in range(tries - 1):
            try:
                return h5py.File(self.path, mode, locking=False)
            except OSError:
                time.sleep(0.05 * (attempt + 1))
        return h5py.File(self.path, mode, locking=False)

    def _init_file(self) -> None:
        if self.path.exists() and not os.access(self.path, os.W_OK):
            raise FeaturebankError(f"store {self.path} is read-only; make it writable or use another path")
        if not self.path.exists():  # created whole under a temporary name: a kill leaves no stub
            tmp = self.path.with_name(f".{self.path.name}.new.tmp")
            try:
                with h5py.File(tmp, "w", locking=False) as f:
                    f.attrs["format_version"] = FORMAT_VERSION
                    for group in ("images", "paths", "features", "failures"):
                        f.create_group(group)
                os.replace(tmp, self.path)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise FeaturebankError(f"cannot create store {self.path}: {exc}") from exc
        with self._open("r") as f:
            if f.attrs.get("featurebank_sharded", False):
                raise FeaturebankError(
                    f"store {self.path} is a sharded store written by the Ray engine; add to it "
                    "with 'featurebank embed --engine ray', or embed into another store")

    def close(self) -> None:
        if self._lock_fd is not None:
            release_writer_lock(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()

    # -- reading ------------------------------------------------------------------------
    @retry_read
    def feature_sets(self) -> list[FeatureSetInfo]:
        """Every feature set: fingerprint, spec, committed rows, dimension, dtype."""
        with self._open("r") as f:
            return [self._info(fp, g) for fp, g in f["features"].items()]

    @staticmethod
    def _info(fp: str, g: h5py.Group) -> FeatureSetInfo:
        return FeatureSetInfo(fp, FeatureSpec.from_json(g.attrs["spec"]), committed_rows(g),
                              int(g.attrs["dim"]), str(g["X"].dtype))

    def resolve(self, layer_or_fingerprint: str | None = None) -> FeatureSetInfo:
        """The feature set named by fingerprint or layer; a clear error when absent or ambiguous."""
        sets = self.feature_sets()
        if not sets:
            raise FeaturebankError(f"store {self.path} holds no feature set yet")
        if layer_or_fingerprint is None:
            if len(sets) == 1:
                return sets[0]
            matches = []
        else:
            matches = [s for s in sets if layer_or_fingerprint in (s.fingerprint, s.spec.layer)]
            if len(matches) == 1:
                return matches[0]
        choices = "; ".join(f"{s.fingerprint} = {s.spec.describe()}" for s in sets)
        what = "several feature sets" if matches or layer_or_fingerprint is None else "no feature set"
        raise FeaturebankError(f"store {self.path} has {what} for {layer_or_fingerprint!r}; "
                               f"name one by layer or fingerprint: {choices}")

    @retry_read
    def read(self, layer_or_fingerprint: str | None = None) -> Features:
        """Features (float32), labels, content keys and first paths of one feature set."""
        info = self.resolve(layer_or_fingerprint)
        with self._open("r") as f:
            g = f["features"][info.fingerprint]
            n = info.rows
            X = g["X"][:n].astype(np.float32)
            keys = g["keys"][:n].astype(str) if n else np.array([], dtype=str)
            meta = self._image_table(f)
        labels = np.array([meta.get(k, ("", ""))[1] for k in keys], dtype=object)
        paths = np.array([meta.get(k, ("", ""))[0] for k in keys], dtype=object)
        return Features(X, labels.astype(str), keys, paths.astype(str), info.spec)

    @staticmethod
    def _image_table(f: h5py.File) -> dict[str, tuple[str, str]]:
        g = f["images"]
        n = committed_rows(g)
        if not n:
            return {}
        keys = g["keys"][:n].astype(str)
        paths = [decode_path(p) for p in g["paths"][:n]]
        table = dict(zip(keys, zip(paths, decode_texts(g["labels"][:n]), strict=True), strict=True))
        p = f["paths"]
        m = committed_rows(p)
        if m and "labels" in p:  # content first stored without a label takes the first one given
            for key, label in zip(p["keys"][:m].astype(str), decode_texts(p["labels"][:m]), strict=True):
                if label and key in table and not table[key][1]:
                    table[key] = (table[key][0], label)
        return table

    def keys(self, fingerprint: str) -> set[str]:
        if fingerprint not in self._seen:
            with self._open("r") as f:
                g = f["features"].get(fingerprint)
                n = committed_rows(g) if g is not None else 0
                self._seen[fingerprint] = set(g["keys"][:n].astype(str)) if n else set()
        return self._seen[fingerprint]

    def has(self, fingerprint: str, keys) -> np.ndarray:
        """Which content keys already have a committed row in the feature set."""
        seen = self.keys(fingerprint)
        return np.array([k in seen for k in keys], dtype=bool)

    @retry_read
    def key_index(self, fingerprint: str) -> dict[str, int]:
        """Content key -> row of every committed row of a feature set (empty when absent).

        Long-lived readers (the HTTP service) keep this and re-read it when the file changes.
        """
        with self._open("r") as f:
            g = f["features"].get(fingerprint)
            n = committed_rows(g) if g is not None else 0
            return {k: i for i, k in enumerate(g["keys"][:n].astype(str))} if n else {}

    @retry_read
    def rows(self, fingerprint: str, rows) -> np.ndarray:
        """Vectors (float32) at row positions of a feature set, in the order asked."""
        rows = np.asarray(rows, dtype=np.int64)
        with self._open("r") as f:
            g = f["features"][fingerprint]
            if not len(rows):
                return np.empty((0, int(g.attrs["dim"])), np.float32)
            unique = np.unique(rows)  # h5py wants increasing, distinct indices
            return np.asarray(g["X"][unique], np.float32)[np.searchsorted(unique, rows)]

    def get(self, fingerprint: str, keys) -> np.ndarray:
        """Committed vectors (float32) for content keys, in the order asked."""
        index = self.key_index(fingerprint)
        try:
            return self.rows(fingerprint, [index[k] for k in keys])
        except KeyError as exc:
            raise FeaturebankError(f"content {exc.args[0]} is not in feature set {fingerprint}") from None

    @retry_read
    def failures(self) -> list[tuple[str, str]]:
        with self._open("r") as f:
            g = f["failures"]
            n = committed_rows(g)
            if not n:
                return []
            return [(decode_path(p), r.decode() if isinstance(r, bytes) else r)
                    for p, r in zip(g["paths"][:n], g["reasons"][:n], strict=True)]

    @retry_read
    def info(self) -> dict:
        """Summary for ``featurebank store info``."""
        with self._open("r") as f:
            images = committed_rows(f["images"])
            paths = committed_rows(f["paths"])
        return {"path": str(self.path), "images": images, "paths": paths,
                "feature_sets": [{"fingerprint": s.fingerprint, "spec": s.spec.describe(),
                                  "layer": s.spec.layer, "pool": s.spec.pool, "rows": s.rows,
                                  "dim": s.dim, "dtype": s.dtype} for s in self.feature_sets()],
                "failures": self.failures()}

    # -- writing ------------------------------------------------------------------------
    def _writer_check(self) -> None:
        if self._lock_fd is None:
            raise FeaturebankError(f"store {self.path} is open read-only; open it with mode='a'")

    def commit(self, rows: dict[FeatureSpec, tuple[list[str], np.ndarray]] | None = None,
               images: list[tuple[str, str, str]] | None = None,
               failures: list[tuple[str, str]] | None = None, dtype: str = "float16") -> None:
        """Durably append one batch: feature rows per spec, (key, path, label) images, failures.

        After this returns, a SIGKILL loses nothing of the batch; if the process dies inside it,
        none of the batch counts (counters are written last).
        """
        self._writer_check()
        if dtype not in ("float16", "float32"):
            raise FeaturebankError(f"store dtype must be 'float16' or 'float32', got {dtype!r}")
        self._load_tables()
        check_room(self.path, rows, images, failures)
        try:
            self._dirty.touch()
            with self._open("a") as f:
                # Images before features: a commit cut short never leaves a row without its label.
                if images:
                    self._commit_images(f, images)
                for spec, (keys, X) in (rows or {}).items():
                    self._commit_rows(f, spec, keys, X, dtype)
                failures = [x for x in failures or () if x not in self._failure_pairs]
                self._failure_pairs.update(failures)  # a re-run does not record a failure twice
                if failures:
                    g = f["failures"]
                    n = committed_rows(g)
                    append_rows(g, "paths", [encode_path(p) for p, _ in failures], n, BYTES_DTYPE)
                    append_rows(g, "reasons", [r for _, r in failures], n, STR_DTYPE)
                    append_rows(g, "times", np.full(len(failures), time.time()), n)
                    g.attrs["committed"] = n + len(failures)
            self._dirty.unlink()
        except (OSError, RuntimeError) as exc:  # h5py raises RuntimeError on some failed flushes
            self._seen.clear()
            self._image_keys = self._path_pairs = self._failure_pairs = None  # re-read what really got committed
            raise FeaturebankError(
                f"writing store {self.path} failed ({exc}); rows committed before are intact — "
                "free disk space and run again to continue") from exc

    def add_rows(self, spec: FeatureSpec, keys, features: np.ndarray, paths, labels=None,
                 dtype: str = "float16") -> None:
        """Durably add vectors of ``spec`` for content ``keys`` with their paths and labels.

        Keys already in the feature set are skipped. ``dtype`` applies when the set is new.
        """
        keys = [str(k) for k in keys]
        labels = [""] * len(keys) if labels is None else [str(x) for x in labels]
        features = np.asarray(features)
        if features.ndim != 2 or len(features) != len(keys) or len(paths) != len(keys):
            raise FeaturebankError(f"add_rows needs features [N, D] with N = len(keys) = len(paths); "
                                   f"got {features.shape}, {len(keys)} keys, {len(paths)} paths")
        self.commit({spec: (keys, features)}, list(zip(keys, map(str, paths), labels, strict=True)),
                    dtype=dtype)

    def add_paths(self, keys, paths, labels=None) -> None:
        """Durably record more paths for contents (duplicates and cached files)."""
        keys = [str(k) for k in keys]
        labels = [""] * len(keys) if labels is None else [str(x) for x in labels]
        self.commit(images=list(zip(keys, map(str, paths), labels, strict=True)))

    def record_failure(self, path: str, reason: str) -> None:
        """Durably record that ``path`` could not be embedded and why."""
        self.commit(failures=[(str(path), str(reason))])

    def _commit_rows(self, f, spec: FeatureSpec, keys, X, dtype: str) -> None:
        fp = spec.fingerprint()
        seen = self.keys(fp)
        fresh = [i for i, k in enumerate(keys) if k not in seen]
        if not fresh:
            return
        X = np.asarray(X)[fresh]
        keys = [keys[i] for i in fresh]
        g = f["features"].get(fp)
        if g is None:
            g = f["features"].create_group(fp)
            g.attrs.update({"spec": spec.to_json(), "dim": X.shape[1], "layer": spec.layer,
                            "committed": 0})
            g.create_dataset("X", shape=(0, X.shape[1]), maxshape=(None, X.shape[1]), dtype=dtype,
                             chunks=(max(1, min(CHUNK_ROWS, (1 << 20) // (X.shape[1] * 2))), X.shape[1]))
        if X.shape[1] != int(g.attrs["dim"]):
            raise FeaturebankError(f"feature set {fp} has dimension {g.attrs['dim']}, got {X.shape[1]}")
        n = committed_rows(g)
        append_rows(g, "X", X.astype(g["X"].dtype), n)
        append_rows(g, "keys", np.array(keys, dtype=KEY_DTYPE), n)
        g.attrs["committed"] = n + len(keys)
        seen.update(keys)

    def _load_tables(self) -> None:
        if self._image_keys is None:
            with self._open("r") as f:
                g, p = f["images"], f["paths"]
                self._image_keys = set(g["keys"][:committed_rows(g)].astype(str)) if committed_rows(g) else set()
                n = committed_rows(p)
                self._path_pairs = {}
                if n:
                    pairs = zip((decode_path(x) for x in p["paths"][:n]), p["keys"][:n].astype(str),
                                strict=True)
                    labels = decode_texts(p["labels"][:n]) if "labels" in p else [""] * n
                    self._path_pairs = dict(zip(pairs, labels, strict=True))
            self._failure_pairs = set(self.failures())

    def _commit_images(self, f, images: list[tuple[str, str, str]]) -> None:
        new_images = {}
        new_pairs = []
        for key, path, label in images:
            if key not in self._image_keys and key not in new_images:
                new_images[key] = (path, label)
            # a new path, or a known unlabelled path now given a label (appended, never rewritten)
            old = self._path_pairs.get((path, key))
            if old is None or (label and not old):
                new_pairs.append((path, key, label))
                self._path_pairs[(path, key)] = label
        if new_pairs:
            p = f["paths"]
            n = committed_rows(p)
            append_rows(p, "paths", [encode_path(x) for x, _, _ in new_pairs], n, BYTES_DTYPE)
            append_rows(p, "keys", np.array([k for _, k, _ in new_pairs], dtype=KEY_DTYPE), n)
            labels = [encode_label(lab) for _, _, lab in new_pairs]
            if "labels" not in p:  # stores from before the column existed: old rows get ''
                labels, start = [""] * n + labels, 0
            else:
                start = n
            append_rows(p, "labels", labels, start, STR_DTYPE)
            p.attrs["committed"] = n + len(new_pairs)
        if new_images:
            g = f["images"]
            n = committed_rows(g)
            append_rows(g, "keys", np.array(list(new_images), dtype=KEY_DTYPE), n)
            append_rows(g, "paths", [encode_path(v[0]) for v in new_images.values()], n, BYTES_DTYPE)
            append_rows(g, "labels", [encode_label(v[1]) for v in new_images.values()], n, STR_DTYPE)
            g.attrs["committed"] = n + len(new_images)
            self._image_keys.update(new_images)

    def export_npz(self, out: str | Path, layer_or_fingerprint: str | None = None) -> Path:
        """Write ``features``, ``keys``, ``paths``, ``labels`` (and the spec JSON) to ``out``."""
        feats = self.read(layer_or_fingerprint)
        out = Path(out)
        tmp = out.with_name(f".{out.name}.tmp.npz")
        np.savez(tmp, features=feats.X, keys=feats.keys, paths=feats.paths, labels=feats.y,
                 spec=np.array(feats.spec.to_json()))
        os.replace(tmp, out)
        return out

