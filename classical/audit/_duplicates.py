"""Exact duplicates (content keys), near-duplicate groups and leaks (cosine similarity of the
neighbours found, and a ratio test against the row's other neighbours), and outliers (distance
to the k-th neighbour) of stored rows."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["BY_FEATURES", "BY_PIXELS", "exact_duplicates", "found_by", "near_groups", "near_mask",
           "near_pairs", "outlier_ranking"]


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


#: how a pair was found, as the bits of a pair's fourth column (docs/audit.md)
BY_FEATURES, BY_PIXELS = 1, 2
FOUND_BY = {BY_FEATURES: "features", BY_PIXELS: "pixels", BY_FEATURES | BY_PIXELS: "features+pixels"}


def near_pairs(rows: np.ndarray, similarity: np.ndarray, threshold: float, ratio: float = 1.0,
               reference: int = 5, pixels: np.ndarray | None = None) -> np.ndarray:
    """``[m, 4]`` row pairs (i < j, each once) among the neighbours that :func:`near_mask`
    accepts or ``pixels`` (a mask like ``similarity``: pairs the pixel check confirmed) marks:
    the two rows, their similarity, and how they were found (:data:`BY_FEATURES` |
    :data:`BY_PIXELS`, either direction of the pair counting)."""
    by_features = near_mask(similarity, threshold, ratio, reference)
    by_pixels = np.zeros_like(by_features) if pixels is None else pixels
    code = by_features * BY_FEATURES + by_pixels * BY_PIXELS
    i, col = np.nonzero((code > 0) & (rows >= 0))
    if not len(i):
        return np.zeros((0, 4))
    j = rows[i, col]
    a, b = np.minimum(i, j), np.maximum(i, j)
    _, first, inverse = np.unique(np.stack([a, b], axis=1), axis=0, return_index=True,
                                  return_inverse=True)
    found = np.zeros(len(first), np.int64)
    np.bitwise_or.at(found, inverse.ravel(), code[i, col].astype(np.int64))
    pairs = np.stack([a[first], b[first], similarity[i, col][first], found], axis=1)
    return pairs[np.argsort(first, kind="stable")]


def found_by(codes: np.ndarray) -> str:
    """The name of the signals whose bits ``codes`` hold together."""
    return FOUND_BY[int(np.bitwise_or.reduce(codes.astype(np.int64)))]


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


def outlier_ranking(similarity: np.ndarray, count: int,
                    fence: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """The rows unusually far from their k-th neighbour (cosine distance ``1 - sim``), farthest
    first, at most ``count``: (rows, distances).

    Unusually far is beyond Tukey's upper fence of the store's distances, ``Q3 + fence * IQR``
    (1.5: Tukey's "outside"): on a small or even store a fixed count would list ordinary rows
    as outliers (91 of 141 rows, with the former rule, on a new user's five-class collection).
    ``fence=0`` keeps the ``count`` farthest whatever they are."""
    kth = similarity[:, -1]
    distance = np.where(np.isfinite(kth), 1.0 - kth, 2.0)
    order = np.argsort(-distance, kind="stable")
    if fence > 0 and len(distance):
        q1, q3 = np.percentile(distance, [25, 75])
        order = order[distance[order] > q3 + fence * (q3 - q1)]
    order = order[:count]
    return order, distance[order]
