"""Exact duplicates (content keys), near-duplicate groups and leaks (cosine similarity of the
neighbours found, and a ratio test against the row's other neighbours), and outliers (distance
to the k-th neighbour) of stored rows."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["exact_duplicates", "near_groups", "near_mask", "near_pairs", "outlier_ranking"]


def exact_duplicates(tables: dict[str, list[tuple[str, str]]]) -> list[dict]:
    """Contents stored under more than one path, within or across stores.

    ``tables``: store name -> its (path, content key) pairs. One entry per such content:
    ``{"key", "copies": [{"store", "path"}, ...]}``, most copies first."""
    copies: dict[str, list[dict]] = defaultdict(list)
    for name, pairs in tables.items():
        for path, key in pairs:
            copies[key].append({"store": name, "path": path})
    found = [{"key": k, "copies": c} for k, c in copies.items() if len(c) > 1]
    return sorted(found, key=lambda d: (-len(d["copies"]), d["key"]))


def near_mask(similarity: np.ndarray, threshold: float, ratio: float = 1.0,
              reference: int = 5) -> np.ndarray:
    """Which of each row's neighbours (``similarity`` ``[n, k]``, nearest first) are its
    near-duplicates: similarity at or above ``threshold`` AND a cosine distance at most
    ``ratio`` times the distance to the row's ``reference``-th neighbour (the last one found
    if fewer).

    The second test is Lowe's ratio test (SIFT, 2004) with a neighbour further out: an edited
    copy lies far nearer its original than the row's other neighbours do, an ordinary image
    in a crowd of look-alikes (many garments of one kind) does not, however high its
    similarity. The reference is the 5th neighbour rather than the 2nd so that a copy whose
    original has a few copies of its own (a group) still stands out. ``ratio`` 1 and above
    turns the test off; a row without a ``reference``-th neighbour passes it."""
    ref = similarity[:, min(reference, similarity.shape[1]) - 1]
    ref_distance = np.where(np.isfinite(ref), 1.0 - ref, np.inf)[:, None]
    near = similarity >= threshold
    if ratio < 1.0:
        near &= (1.0 - similarity) <= ratio * ref_distance
    return near


def near_pairs(rows: np.ndarray, similarity: np.ndarray, threshold: float, ratio: float = 1.0,
               reference: int = 5) -> np.ndarray:
    """``[m, 2]`` row pairs (i < j, each once) among the neighbours that :func:`near_mask`
    accepts, and their similarities ``[m]`` as a third column."""
    i, col = np.nonzero(near_mask(similarity, threshold, ratio, reference) & (rows >= 0))
    j = rows[i, col]
    a, b = np.minimum(i, j), np.maximum(i, j)
    pairs = np.stack([a, b, similarity[i, col]], axis=1)
    _, first = np.unique(pairs[:, :2], axis=0, return_index=True)
    return pairs[np.sort(first)]


def near_groups(n_rows: int, pairs: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """Connected components (size >= 2) of the near-duplicate pairs: the rows of each group and
    its weakest link (the lowest similarity that joined it), largest groups first."""
    if not len(pairs):
        return []
    a, b = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n_rows, n_rows))
    _, component = connected_components(graph, directed=False)
    weakest = np.full(component.max() + 1, np.inf)
    np.minimum.at(weakest, component[a], pairs[:, 2])
    members = np.unique(np.concatenate([a, b]))
    order = np.argsort(component[members], kind="stable")
    members = members[order]
    cuts = np.flatnonzero(np.diff(component[members])) + 1
    groups = [(g, float(weakest[component[g[0]]])) for g in np.split(members, cuts)]
    return sorted(groups, key=lambda g: (-len(g[0]), g[0][0]))


def outlier_ranking(similarity: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` rows farthest from their k-th neighbour (cosine distance ``1 - sim``),
    farthest first: (rows, distances)."""
    kth = similarity[:, -1]
    distance = np.where(np.isfinite(kth), 1.0 - kth, 2.0)
    order = np.argsort(-distance, kind="stable")[:count]
    return order, distance[order]
