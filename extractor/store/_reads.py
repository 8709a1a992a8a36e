"""The reading side of :class:`~featurebank.extractor.store.FeatureStore`: feature sets,
rows by key, position or block, the image, path and failure tables, counts and the summary.

A mixin: :class:`FeatureStore` holds the path, the open-file method and the per-instance key
cache. Every read opens the file for itself and is retried when it meets a commit in flight
(``_retry``), so a reader never sees rows past a ``committed`` counter.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
from numpy.typing import ArrayLike

from featurebank.errors import FeaturebankError
from featurebank.extractor.store._format import (
    Features,
    FeatureSet,
    committed_rows,
    decode_path,
    decode_texts,
    read_roots,
    row_shape_of,
)
from featurebank.extractor.store._retry import retry_read
from featurebank.spec import FeatureSpec


def _named(parameter: str, value: str) -> str:
    """``parameter=value`` as a Python call writes it: a list for ``layers``."""
    return f"{parameter}=[{value}]" if parameter == "layers" else f"{parameter}={value}"

class StoreReader:
    """Reads of committed rows and tables (a mixin of :class:`FeatureStore`)."""

    # What FeatureStore provides
    path: Path
    format_version: int
    _seen: dict[str, set[str]]  # content keys per feature set, read once per instance
    if TYPE_CHECKING:
        def _open(self, mode: str) -> h5py.File: ...

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

    # -- reading ------------------------------------------------------------------------
    @retry_read
    def feature_sets(self) -> list[FeatureSet]:
        """Every feature set: fingerprint, spec, committed rows, dimension, dtype."""
        with self._open("r") as f:
            return [self._info(fp, g) for fp, g in f["features"].items()]

    @staticmethod
    def _info(fp: str, g: h5py.Group) -> FeatureSet:
        return FeatureSet(fp, FeatureSpec.from_json(g.attrs["spec"]), committed_rows(g),
                              int(g.attrs["dim"]), str(g["X"].dtype), row_shape_of(g))

    def resolve(self, layer_or_fingerprint: str | None = None, *,
                parameter: str = "layer_or_fingerprint") -> FeatureSet:
        """The feature set named by fingerprint or layer; a clear error when absent or ambiguous.
        ``parameter``: the caller's parameter the error names (``layers`` takes a list)."""
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
        if layer_or_fingerprint is None:
            raise FeaturebankError(
                f"store {self.path} has {len(sets)} feature sets; choose one with "
                f"{_named(parameter, 'LAYER')} (a layer name or fingerprint): {choices}")
        what = "several feature sets" if matches else "no feature set"
        raise FeaturebankError(f"store {self.path} has {what} for "
                               f"{_named(parameter, repr(layer_or_fingerprint))}; "
                               f"name one by layer or fingerprint: {choices}")

    @retry_read
    def read(self, layer_or_fingerprint: str | None = None, *,
             parameter: str = "layer_or_fingerprint") -> Features:
        """Features (float32), labels, content keys and first paths of one feature set
        (``parameter``: as in :meth:`resolve`)."""
        info = self.resolve(layer_or_fingerprint, parameter=parameter)
        with self._open("r") as f:
            g = f["features"][info.fingerprint]
            n = info.rows
            X = g["X"][:n].astype(np.float32)
            keys = g["keys"][:n].astype(str) if n else np.array([], dtype=str)
            meta = self._image_table(f)
        labels = np.array([meta.get(k, ("", ""))[1] for k in keys], dtype=object)
        paths = np.array([meta.get(k, ("", ""))[0] for k in keys], dtype=object)
        return Features(X, labels.astype(str), keys, paths.astype(str), info.spec, info.row_shape)

    @retry_read
    def image_table(self) -> dict[str, tuple[str, str]]:
        """Content key -> (first path, label) of every committed image, by the store's own rules
        (content first stored without a label takes the first label given later)."""
        with self._open("r") as f:
            return self._image_table(f)

    def keys(self, fingerprint: str) -> set[str]:
        """Content keys with a committed row in the feature set (read once per instance)."""
        if fingerprint not in self._seen:
            self._seen[fingerprint] = self._read_keys(fingerprint)
        return self._seen[fingerprint]

    @retry_read
    def _read_keys(self, fingerprint: str) -> set[str]:
        with self._open("r") as f:
            g = f["features"].get(fingerprint)
            n = committed_rows(g) if g is not None else 0
            return set(g["keys"][:n].astype(str)) if n else set()

    def has(self, fingerprint: str, keys: Iterable[str]) -> np.ndarray:
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
    def rows(self, fingerprint: str, rows: ArrayLike, shaped: bool = False) -> np.ndarray:
        """Rows (float32) at row positions of a feature set, in the order asked: ``[n, dim]``,
        or ``[n, *row_shape]`` with ``shaped`` (maps of an unpooled set)."""
        rows = np.asarray(rows, dtype=np.int64)
        with self._open("r") as f:
            g = f["features"][fingerprint]
            shape = row_shape_of(g) if shaped else (int(g.attrs["dim"]),)
            if not len(rows):
                return np.empty((0, *shape), np.float32)
            unique = np.unique(rows)  # h5py wants increasing, distinct indices
            out = np.asarray(g["X"][unique], np.float32)[np.searchsorted(unique, rows)]
            return out.reshape(len(rows), *shape)

    def get(self, fingerprint: str, keys: Iterable[str]) -> np.ndarray:
        """Committed vectors (float32) for content keys, in the order asked."""
        index = self.key_index(fingerprint)
        try:
            return self.rows(fingerprint, [index[k] for k in keys])
        except KeyError as exc:
            raise FeaturebankError(f"content {exc.args[0]} is not in feature set {fingerprint}") from None

    @retry_read
    def read_block(self, fingerprint: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Committed rows ``[start, stop)`` of a feature set (float32) and their content keys:
        the step of a streamed reader (a sharded store is read through its virtual file)."""
        with self._open("r") as f:
            g = f["features"][fingerprint]
            stop = min(stop, committed_rows(g))
            if stop <= start:
                return np.empty((0, int(g.attrs["dim"])), np.float32), np.array([], dtype=str)
            return np.asarray(g["X"][start:stop], np.float32), g["keys"][start:stop].astype(str)

    @retry_read
    def set_keys(self, fingerprint: str, stop: int | None = None) -> np.ndarray:
        """Content keys (``S64`` bytes) of a feature set's first ``stop`` committed rows."""
        with self._open("r") as f:
            g = f["features"][fingerprint]
            n = committed_rows(g) if stop is None else min(stop, committed_rows(g))
            return g["keys"][:n] if n else np.array([], dtype="S64")

    @retry_read
    def path_table(self) -> list[tuple[str, str]]:
        """Every committed (path, content key) pair, in the order first seen."""
        with self._open("r") as f:
            p = f["paths"]
            n = committed_rows(p)
            if not n:
                return []
            return list(dict.fromkeys(zip((decode_path(x) for x in p["paths"][:n]),
                                          p["keys"][:n].astype(str), strict=True)))

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
    def label_counts(self) -> dict[str, int]:
        """Images (distinct contents) per label, ``""`` for unlabelled ones, most first."""
        with self._open("r") as f:
            table = self._image_table(f)
        counts: dict[str, int] = {}
        for _, label in table.values():
            counts[label] = counts.get(label, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    @retry_read
    def roots(self) -> list[str]:
        """The folders (absolute) the store's collections were embedded from."""
        with self._open("r") as f:
            return read_roots(f)

    @retry_read
    def commit_log(self) -> dict[str, np.ndarray]:
        """One row per commit: ``times``, ``pids``, ``rows_offered`` (feature rows handed to
        the commit, all sets) and ``rows_written`` (those new to the store)."""
        with self._open("r") as f:
            g = f.get("commits")
            n = committed_rows(g) if g is not None else 0
            cols = ("times", "pids", "rows_offered", "rows_written")
            return {c: (g[c][:n] if n else np.zeros(0)) for c in cols}

    @retry_read
    def info(self) -> dict:
        """Summary for ``featurebank store info``."""
        with self._open("r") as f:
            images = committed_rows(f["images"])
            paths = committed_rows(f["paths"])
        return {"path": str(self.path), "format_version": self.format_version,
                "images": images, "paths": paths, "roots": self.roots(),
                "labels": self.label_counts(),
                "feature_sets": [{"fingerprint": s.fingerprint, "spec": s.spec.describe(),
                                  "layer": s.spec.layer, "pool": s.spec.pool, "rows": s.rows,
                                  "dim": s.dim, "row_shape": list(s.row_shape), "dtype": s.dtype}
                                 for s in self.feature_sets()],
                "failures": self.failures()}

