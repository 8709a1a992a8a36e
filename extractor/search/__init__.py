"""featurebank.extractor.search: which stored images look like these.

- :func:`exact_search` / :func:`self_neighbours`: exact cosine neighbours, streamed from the
  store ``block_rows`` rows at a time (memory bounded whatever the store's size);
- :class:`NeighbourIndex`: a faiss index (HNSW or IVF-PQ, ``featurebank[faiss]``) persisted
  beside the store, keyed by the feature set's fingerprint and its rows' content keys, extended
  from committed rows under its own lock;
- :class:`StoreSearch`: one feature set searched by either, answers with paths and labels;
- :class:`SearchOptions`: ``top``, ``block_rows`` and the method (light: no numpy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featurebank.lazy import attach

_LAZY = {
    "DEFAULT_BLOCK_ROWS": "featurebank.extractor.search._options",
    "INDEX_KINDS": "featurebank.extractor.search._options",
    "SearchOptions": "featurebank.extractor.search._options",
    "Neighbours": "featurebank.extractor.search._exact",
    "exact_search": "featurebank.extractor.search._exact",
    "iter_blocks": "featurebank.extractor.search._exact",
    "keys_of": "featurebank.extractor.search._exact",
    "normalise": "featurebank.extractor.search._exact",
    "self_neighbours": "featurebank.extractor.search._exact",
    "IndexMismatchError": "featurebank.extractor.search._index",
    "NeighbourIndex": "featurebank.extractor.search._index",
    "index_dir": "featurebank.extractor.search._index",
    "Match": "featurebank.extractor.search._query",
    "StoreSearch": "featurebank.extractor.search._query",
    "extractor_for": "featurebank.extractor.search._query",
}

__all__ = ["DEFAULT_BLOCK_ROWS", "INDEX_KINDS", "IndexMismatchError", "Match", "NeighbourIndex",
           "Neighbours", "SearchOptions", "StoreSearch", "exact_search", "extractor_for",
           "index_dir", "iter_blocks", "keys_of", "normalise", "self_neighbours"]

if TYPE_CHECKING:
    from featurebank.extractor.search._exact import (
        Neighbours,
        exact_search,
        iter_blocks,
        keys_of,
        normalise,
        self_neighbours,
    )
    from featurebank.extractor.search._index import IndexMismatchError, NeighbourIndex, index_dir
    from featurebank.extractor.search._options import DEFAULT_BLOCK_ROWS, INDEX_KINDS, SearchOptions
    from featurebank.extractor.search._query import Match, StoreSearch, extractor_for

__getattr__, __dir__ = attach(__name__, _LAZY)
