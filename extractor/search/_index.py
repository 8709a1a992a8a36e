"""A faiss index of one feature set, persisted beside its store and extended lazily.

The index lives in ``STORE.h5.index/<fingerprint>.<kind>.faiss``: one file, a JSON header line
(fingerprint, spec, kind, rows indexed, SHA-256 of their content keys in row order) and the
serialised faiss index, written under a temporary name and renamed, so a reader (or a writer
killed half-way) only ever sees a whole old or a whole new index. Builders and extenders take
``<fingerprint>.lock`` (filelock, as the store's writer lock): one builder at a time, readers
never wait. An index whose header names another fingerprint is refused; one whose keys no
longer match the store's first rows is rebuilt. Rows are added from the store's *committed*
rows only, in a separate step from embedding (never inside a commit).

Vectors are L2-normalised, so the squared L2 distance faiss returns gives the cosine
similarity: ``1 - d / 2``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import filelock
import numpy as np

from featurebank.errors import FeaturebankError
from featurebank.extractor.search._exact import Neighbours, iter_blocks
from featurebank.extractor.search._options import DEFAULT_BLOCK_ROWS
from featurebank.extractor.store import FeatureStore

log = logging.getLogger(__name__)
__all__ = ["IndexMismatchError", "NeighbourIndex", "index_dir", "require_faiss"]

#: IVF-PQ: vectors used to train the coarse quantiser and the codebooks
TRAIN_SAMPLE = 65_536
HNSW_M = 32
#: IVF-PQ candidates per neighbour asked for, re-ranked by the scalar-quantised vectors (at 1M
#: tiled rows recall@10 0.66 with 8, 0.92 with 64: benchmarks/results/audit_nprobe.json)
REFINE_FACTOR = 64
#: the cheaper setting of a sweep that queries every row (an audit's near-duplicates)
SWEEP_NPROBE, SWEEP_REFINE = 8, 4


class IndexMismatchError(FeaturebankError):
    """An index file was built for another feature set (another fingerprint)."""


def require_faiss():
    try:
        import faiss
    except ImportError:  # pragma: no cover - the extra is installed in CI
        raise FeaturebankError("an approximate neighbour index needs faiss: pip install "
                               "'featurebank[faiss]' (or search exactly: index='exact')") from None
    return faiss


def index_dir(store_path: str | Path) -> Path:
    """``STORE.h5.index/`` beside the store."""
    p = Path(store_path)
    return p.with_name(p.name + ".index")


def _keys_digest(keys: np.ndarray) -> str:
    """SHA-256 of the content keys in row order: which rows an index holds."""
    return hashlib.sha256(np.ascontiguousarray(keys, dtype="S64").tobytes()).hexdigest()


class NeighbourIndex:
    """The persisted faiss index of one feature set of a store.

    Parameters
    ----------
    store : FeatureStore
        A store (a sharded one through its virtual file); only read.
    fingerprint : str
        The feature set indexed.
    kind : {'hnsw', 'ivfpq'}
        HNSW (flat vectors in memory, best recall) or IVF-PQ (compressed codes, for sets
        whose vectors do not fit in memory).
    block_rows : int
        Rows read from the store at a time while adding.
    """

    def __init__(self, store: FeatureStore, fingerprint: str, *, kind: str = "hnsw",
                 block_rows: int = DEFAULT_BLOCK_ROWS, nprobe: int = 16,
                 refine: int = REFINE_FACTOR):
        if kind not in ("hnsw", "ivfpq"):
            raise FeaturebankError(f"index kind must be 'hnsw' or 'ivfpq', got {kind!r}")
        self.store, self.fingerprint, self.kind = store, fingerprint, kind
        self.block_rows, self.nprobe, self.refine = block_rows, nprobe, refine
        self.path = index_dir(store.path) / f"{fingerprint}.{kind}.faiss"
        self.header: dict = {}
        self.index: Any = None  # a faiss index once loaded or built
        self._keys: np.ndarray | None = None

    # -- reading ------------------------------------------------------------------------
    def load(self, path: str | Path | None = None) -> bool:
        """Read the persisted index (this set's file, or ``path``); False when there is none.

        Raises :class:`IndexMismatchError` when the file was built for another fingerprint."""
        faiss = require_faiss()
        path = Path(path) if path else self.path
        if not path.is_file():
            return False
        with open(path, "rb") as f:
            header = json.loads(f.readline())
            payload = np.frombuffer(f.read(), np.uint8)
        if header.get("fingerprint") != self.fingerprint:
            raise IndexMismatchError(
                f"index {path} was built for feature set {header.get('fingerprint')}, not "
                f"{self.fingerprint} (the features changed: model, layer, pooling or "
                f"preprocessing); delete it and it is rebuilt for the new set")
        self.header, self.index = header, faiss.deserialize_index(payload)
        return True

    @property
    def rows(self) -> int:
        return int(self.header.get("rows", 0))

    def search(self, queries: np.ndarray, k: int = 10, keys: bool = True,
               sweep: bool = False) -> Neighbours:
        """The ``k`` nearest indexed rows of each query (cosine similarity); their content
        keys too with ``keys``. ``sweep``: a cheaper IVF-PQ setting for querying every row
        (an audit): ``SWEEP_NPROBE`` lists, ``SWEEP_REFINE`` candidates re-ranked per neighbour."""
        from featurebank.extractor.search._exact import normalise

        faiss = require_faiss()
        if self.index is None:
            raise FeaturebankError(f"index {self.path} is not loaded; call update() first")
        if isinstance(self.index, faiss.IndexRefine):  # IVF-PQ, re-ranked
            faiss.downcast_index(self.index.base_index).nprobe = SWEEP_NPROBE if sweep else self.nprobe
            self.index.k_factor = SWEEP_REFINE if sweep else self.refine
        if hasattr(self.index, "hnsw"):  # faiss's default (16) loses recall at k = 10
            self.index.hnsw.efSearch = max(64, 4 * k)
        dist, rows = self.index.search(normalise(np.atleast_2d(queries)), k)
        sim = np.where(rows >= 0, 1 - dist / 2, -np.inf).astype(np.float32)
        return Neighbours(rows.astype(np.int64), self._keys_at(rows) if keys else None, sim)

    def self_neighbours(self, k: int = 10, progress=None) -> Neighbours:
        """Each indexed row's ``k`` nearest other rows (itself left out), queried by blocks;
        row positions and similarities (``keys`` None)."""
        parts = []
        for first, X, _ in iter_blocks(self.store, self.fingerprint, self.block_rows, 0, self.rows):
            found = self.search(X, k + 1, keys=False, sweep=True)
            own = found.rows == np.arange(first, first + len(X))[:, None]
            # drop the row itself where found, else the last (least similar) one
            drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
            keep = np.ones_like(own)
            keep[np.arange(len(X)), drop] = False
            parts.append((found.rows[keep].reshape(len(X), k),
                          found.similarity[keep].reshape(len(X), k)))
            if progress is not None:
                progress(first + len(X), self.rows)
        if not parts:
            return Neighbours(np.empty((0, k), np.int64), None, np.empty((0, k), np.float32))
        return Neighbours(np.concatenate([p[0] for p in parts]), None,
                          np.concatenate([p[1] for p in parts]))

    def _keys_at(self, rows: np.ndarray) -> np.ndarray:
        flat = rows.ravel()
        keys = np.full(flat.shape, "", dtype="<U64")
        valid = flat >= 0
        if valid.any():
            keys[valid] = self._stored_keys(self.rows)[flat[valid]].astype(str)
        return keys.reshape(rows.shape)

    # -- building -------------------------------------------------------------------------
    def update(self, progress=None) -> int:
        """Add the store's committed rows not yet indexed (building the index first if none
        exists, or rebuilding it if its rows are no longer the store's); return rows added.

        Under the index's lock; the new index replaces the file only when complete, so a
        kill leaves the previous one usable."""
        try:
            self.path.parent.mkdir(exist_ok=True)
        except OSError as exc:
            raise FeaturebankError(f"cannot keep an index beside store {self.store.path} "
                                   f"({exc.strerror}); make its folder writable, or search "
                                   "exactly (index='exact')") from exc
        with filelock.FileLock(self.path.with_name(f"{self.fingerprint}.lock"), thread_local=False):
            self.load()
            total = next(s.rows for s in self.store.feature_sets() if s.fingerprint == self.fingerprint)
            if self.index is not None and not self._same_rows():
                log.warning("index %s no longer matches the store's rows; rebuilding it", self.path)
                self.index, self.header = None, {}
            start = self.rows if self.index is not None else 0
            if start >= total:
                return 0
            if self.index is None:
                self.index = self._new_index()
            index = self.index
            for first, X, _ in iter_blocks(self.store, self.fingerprint, self.block_rows, start):
                index.add(X)
                if progress is not None:
                    progress(first + len(X), total)
            self._write(total)
            return total - start

    def _stored_keys(self, rows: int) -> np.ndarray:
        """Content keys (bytes) of the set's first ``rows`` rows, kept for the answers."""
        if self._keys is None or len(self._keys) != rows:
            self._keys = self.store.set_keys(self.fingerprint, rows)
        return self._keys

    def _same_rows(self) -> bool:
        return _keys_digest(self._stored_keys(self.rows)) == self.header.get("keys_sha256")

    def _new_index(self):
        faiss = require_faiss()
        info = next(s for s in self.store.feature_sets() if s.fingerprint == self.fingerprint)
        self.header = {"fingerprint": self.fingerprint, "spec": info.spec.to_json(),
                       "kind": self.kind, "dim": info.dim}
        if self.kind == "hnsw":
            return faiss.IndexHNSWFlat(info.dim, HNSW_M)
        # faiss wants ~39 training points per centroid and per PQ code: fewer lists and
        # smaller codebooks for small sets (an index is rarely worth it there anyway)
        # sqrt(rows) lists: a cheap quantiser to train and to query (1000 lists at 1M rows)
        nlist = int(min(4096, max(1, np.sqrt(info.rows)), info.rows // 39 or 1))
        nbits = int(min(8, max(1, np.log2(max(2, info.rows // 39)))))
        # sub-vectors of ~8 values (faiss's usual choice; 2-4 values train many times slower)
        m = next(m for m in range(min(64, max(1, info.dim // 8)), 0, -1) if info.dim % m == 0)
        # the PQ codes find 8x the candidates asked for, re-ranked by 8-bit scalar-quantised
        # vectors (dim bytes a row): recall@10 0.55 -> 0.94 on the benchmark's 100k rows
        index = faiss.IndexRefine(faiss.IndexIVFPQ(faiss.IndexFlatL2(info.dim), info.dim, nlist, m, nbits),
                                  faiss.IndexScalarQuantizer(info.dim, faiss.ScalarQuantizer.QT_8bit))
        index.train(self._sample(info.rows, max(TRAIN_SAMPLE, 40 * nlist)))
        return index

    def _sample(self, rows: int, n: int) -> np.ndarray:
        """Up to ``n`` rows spread evenly over the set, read block by block."""
        step = max(1, rows // n)
        parts = [X[(-first) % step::step] for first, X, _ in
                 iter_blocks(self.store, self.fingerprint, self.block_rows)]
        return np.ascontiguousarray(np.concatenate(parts)[:n])

    def _write(self, rows: int) -> None:
        faiss = require_faiss()
        self.header.update(rows=rows, keys_sha256=_keys_digest(self._stored_keys(rows)))
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(json.dumps(self.header).encode() + b"\n")
                f.write(faiss.serialize_index(self.index).tobytes())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
