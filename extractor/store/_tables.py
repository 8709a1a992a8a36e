"""The table side of a commit: how rows are appended to ``/images``, ``/paths``, the feature
sets, ``/commits`` and ``/failures`` (layout in docs/STORE_FORMAT.md), and the image table
readers join labels and paths from. A mixin of :class:`FeatureStore`, which holds the state
(``_seen``, ``_image_keys``, ``_path_pairs``, ``_failure_pairs``) and the open file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import h5py
import numpy as np
from numpy.typing import ArrayLike

from featurebank.errors import FeaturebankError
from featurebank.extractor.store._format import (
    BYTES_DTYPE,
    KEY_DTYPE,
    STR_DTYPE,
    append_rows,
    chunk_rows,
    committed_rows,
    decode_path,
    decode_texts,
    encode_label,
    encode_path,
    row_shape_of,
)
from featurebank.extractor.store._reads import StoreReader
from featurebank.extractor.store._retry import retry_read
from featurebank.spec import FeatureSpec


class TableWriter(StoreReader):
    """Appends of one commit (called with the file open, counters written last per group)."""

    # What FeatureStore provides: the tables read once per writer (None: not read yet), ...
    _image_keys: set[str] | None
    _path_pairs: dict[tuple[str, str], str] | None  # (path, key) -> label
    _failure_pairs: set[tuple[str, str]] | None
    # ... and its reads (StoreReader)

    def _commit_rows(self, f: h5py.File, spec: FeatureSpec, keys: Sequence[str], X: ArrayLike,
                     dtype: str) -> int:
        fp = spec.fingerprint()
        seen = self.keys(fp)
        fresh = [i for i, k in enumerate(keys) if k not in seen]
        if not fresh:
            return 0
        X = np.asarray(X)[fresh]
        shape = tuple(int(d) for d in X.shape[1:])
        X = X.reshape(len(X), -1)  # maps are stored flattened; row_shape restores them
        keys = [keys[i] for i in fresh]
        g = f["features"].get(fp)
        dim = X.shape[1]
        if g is None:
            g = f["features"].create_group(fp)
            g.attrs.update({"spec": spec.to_json(), "dim": dim, "row_shape": np.array(shape, np.int64),
                            "layer": spec.layer, "committed": 0})
            g.create_dataset("X", shape=(0, dim), maxshape=(None, dim), dtype=dtype,
                             chunks=(chunk_rows(dim, np.dtype(dtype).itemsize), dim))
        if shape != row_shape_of(g):
            raise FeaturebankError(f"feature set {fp} has rows of shape {row_shape_of(g)}, "
                                   f"got {shape}")
        n = committed_rows(g)
        append_rows(g, "X", X.astype(g["X"].dtype), n)
        append_rows(g, "keys", np.array(keys, dtype=KEY_DTYPE), n)
        g.attrs["committed"] = n + len(keys)
        seen.update(keys)
        return len(keys)

    @staticmethod
    def _log_commit(f: h5py.File, offered: int, written: int) -> None:
        """One /commits row: who wrote how many feature rows (parallel writers are countable)."""
        g = f.require_group("commits")
        n = committed_rows(g)
        append_rows(g, "times", np.array([time.time()]), n)
        append_rows(g, "pids", np.array([os.getpid()], np.int64), n)
        append_rows(g, "rows_offered", np.array([offered], np.int64), n)
        append_rows(g, "rows_written", np.array([written], np.int64), n)
        g.attrs["committed"] = n + 1

    @retry_read
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

    def _commit_images(self, f: h5py.File, images: list[tuple[str, str, str]]) -> None:
        assert self._image_keys is not None and self._path_pairs is not None  # _load_tables ran
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
            labels: list[bytes | str] = [encode_label(lab) for _, _, lab in new_pairs]
            if "labels" not in p:  # stores from before the column existed: old rows get ''
                labels, start = [*[""] * n, *labels], 0
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

    def _commit_failures(self, f: h5py.File, failures: list[tuple[str, str]]) -> None:
        assert self._failure_pairs is not None  # _load_tables ran
        failures = [x for x in failures if x not in self._failure_pairs]
        self._failure_pairs.update(failures)  # a re-run does not record a failure twice
        if failures:
            g = f["failures"]
            n = committed_rows(g)
            append_rows(g, "paths", [encode_path(p) for p, _ in failures], n, BYTES_DTYPE)
            append_rows(g, "reasons", [r for _, r in failures], n, STR_DTYPE)
            append_rows(g, "times", np.full(len(failures), time.time()), n)
            g.attrs["committed"] = n + len(failures)
