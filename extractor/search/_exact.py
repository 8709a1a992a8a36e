"""Exact cosine neighbours, streamed from the store by blocks of rows (never the whole set in
memory): a query block against each stored block is one matrix product, and a running top-k
keeps the best ``k`` per query."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from featurebank.errors import FeaturebankError
from featurebank.extractor.search._options import DEFAULT_BLOCK_ROWS
from featurebank.extractor.store import FeatureStore

__all__ = ["Neighbours", "exact_search", "iter_blocks", "keys_of", "normalise", "self_neighbours"]


@dataclass
class Neighbours:
    """The ``k`` nearest stored rows of each query, most similar first.

    ``rows`` are row positions in the feature set (-1 where fewer than ``k`` rows exist),
    ``keys`` their content keys (``""`` there; None where not asked for: a million rows' keys
    cost gigabytes), ``similarity`` the cosine similarity (-inf there).
    """

    rows: np.ndarray
    keys: np.ndarray | None
    similarity: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)


def normalise(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero: it is similar to nothing)."""
    X = np.asarray(X, np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(norms, np.float32(1e-12))


def iter_blocks(store: FeatureStore, fingerprint: str, block_rows: int, start: int = 0,
                stop: int | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(first row, unit vectors, keys)`` of each block of the feature set's committed rows."""
    info = next((s for s in store.feature_sets() if s.fingerprint == fingerprint), None)
    if info is None:
        raise FeaturebankError(f"store {store.path} has no feature set {fingerprint}")
    stop = info.rows if stop is None else min(stop, info.rows)
    for first in range(start, stop, block_rows):
        X, keys = store.read_block(fingerprint, first, min(first + block_rows, stop))
        yield first, normalise(X), keys


class _TopK:
    """The running ``k`` best (similarity, row, key) of each of ``n`` queries."""

    def __init__(self, n: int, k: int):
        self.k = k
        self.sim = np.full((n, k), -np.inf, np.float32)
        self.rows = np.full((n, k), -1, np.int64)

    def add(self, sim: np.ndarray, first: int) -> None:
        n, b = sim.shape
        all_sim = np.concatenate([self.sim, sim], axis=1)
        all_rows = np.concatenate([self.rows, np.broadcast_to(np.arange(first, first + b), (n, b))],
                                  axis=1)
        take = min(self.k, all_sim.shape[1] - 1)
        best = np.argpartition(-all_sim, take, axis=1)[:, :self.k]
        self.sim = np.take_along_axis(all_sim, best, 1)
        self.rows = np.take_along_axis(all_rows, best, 1)

    def result(self) -> Neighbours:
        order = np.argsort(-self.sim, axis=1, kind="stable")
        sim, rows = np.take_along_axis(self.sim, order, 1), np.take_along_axis(self.rows, order, 1)
        rows[~np.isfinite(sim)] = -1  # fewer than k rows (or only the query itself)
        return Neighbours(rows, None, sim)


def keys_of(store: FeatureStore, fingerprint: str, rows: np.ndarray) -> np.ndarray:
    """Content keys (str) at row positions, ``""`` at -1."""
    flat = rows.ravel()
    keys = np.full(flat.shape, "", dtype="<U64")
    valid = flat >= 0
    if valid.any():
        keys[valid] = store.set_keys(fingerprint)[flat[valid]].astype(str)
    return keys.reshape(rows.shape)


def exact_search(store: FeatureStore, fingerprint: str, queries: np.ndarray, k: int = 10, *,
                 block_rows: int = DEFAULT_BLOCK_ROWS) -> Neighbours:
    """The ``k`` stored rows most similar (cosine) to each query, read ``block_rows`` at a time.

    Parameters
    ----------
    store : FeatureStore
        Any store, a sharded one through its virtual file.
    fingerprint : str
        The feature set searched; the queries must come from the same spec.
    queries : ndarray [q, dim]
    k : int
    block_rows : int
        Stored rows held at a time: memory ~ ``block_rows * (dim + q) * 4`` bytes.
    """
    Q = normalise(np.atleast_2d(queries))
    top = _TopK(len(Q), k)
    for first, B, _ in iter_blocks(store, fingerprint, block_rows):
        if B.shape[1] != Q.shape[1]:
            raise FeaturebankError(f"queries have {Q.shape[1]} values per row, feature set "
                                   f"{fingerprint} of {store.path} has {B.shape[1]}")
        top.add(Q @ B.T, first)
    found = top.result()
    found.keys = keys_of(store, fingerprint, found.rows)
    return found


def self_neighbours(store: FeatureStore, fingerprint: str, k: int = 10, *,
                    block_rows: int = DEFAULT_BLOCK_ROWS, progress=None) -> Neighbours:
    """Each stored row's ``k`` nearest other rows of the same set (itself left out); row
    positions and similarities only (``keys`` None: :func:`keys_of` gives those wanted).

    Blocks of queries against blocks of rows: memory ~ ``2 * block_rows * dim * 4`` bytes
    plus the ``rows * k`` result; time grows with rows squared (an index beyond a few hundred
    thousand rows). ``progress(done, total)`` is called after each query block.
    """
    info = next(s for s in store.feature_sets() if s.fingerprint == fingerprint)
    sim_all = np.empty((info.rows, k), np.float32)
    rows_all = np.empty((info.rows, k), np.int64)
    for qfirst, Q, _ in iter_blocks(store, fingerprint, block_rows):
        top = _TopK(len(Q), k)
        for first, B, _ in iter_blocks(store, fingerprint, block_rows):
            sim = Q @ B.T
            if first == qfirst:  # a row is not its own neighbour
                np.fill_diagonal(sim, -np.inf)
            top.add(sim, first)
        got = top.result()
        span = slice(qfirst, qfirst + len(Q))
        sim_all[span], rows_all[span] = got.similarity, got.rows
        if progress is not None:
            progress(qfirst + len(Q), info.rows)
    return Neighbours(rows_all, None, sim_all)
