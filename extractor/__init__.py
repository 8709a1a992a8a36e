"""featurebank.extractor: ONNX graphs cut at chosen layers, run over image collections into a
store.

- :class:`Extractor`: images in, vectors out (one dict keyed by layer);
- :func:`embed_collection`: a whole collection into the :class:`FeatureStore`, resumably, with
  the local engine or on a Ray cluster (``engine='ray'``);
- :func:`decode`: the one decode path (also used by the service and the classifiers);
- :func:`open_source`: the bytes behind any stored path (a file, a URL, a tar shard member, a
  parquet row: :mod:`featurebank.extractor.sources`).

Every name loads on first use (the store needs ``h5py``, the extractor ``onnxruntime``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featurebank.lazy import attach

# public name -> the module that defines it: everything loads on first use, so that
# ``from featurebank.extractor import EmbedRun`` (the command line's flags) costs no onnxruntime
_LAZY = {
    "Extractor": "featurebank.extractor._extractor",
    "resolve_model_path": "featurebank.extractor._extractor",
    "ImageItem": "featurebank.extractor._inputs",
    "collect": "featurebank.extractor._inputs",
    "DEFAULT_MAX_PIXELS": "featurebank.extractor._preprocess",
    "DecodeError": "featurebank.extractor._preprocess",
    "decode": "featurebank.extractor._preprocess",
    "image_key": "featurebank.extractor._preprocess",
    "read_bytes": "featurebank.extractor._preprocess",
    "label_table": "featurebank.extractor._labels",
    "upgrade_message": "featurebank.extractor.store._store",
    "EmbedRun": "featurebank.extractor._options",
    "ENGINES": "featurebank.extractor._options",
    "DEVICES": "featurebank.extractor._options",
    "FeatureStore": "featurebank.extractor.store",
    "FeatureSet": "featurebank.extractor.store",
    "embed_collection": "featurebank.extractor.engines",
    "EmbedSummary": "featurebank.extractor.engines",
    "SourceOptions": "featurebank.extractor.sources",
    "open_source": "featurebank.extractor.sources",
    # neighbour search over a store (extractor/search/)
    "IndexMismatchError": "featurebank.extractor.search",
    "Match": "featurebank.extractor.search",
    "NeighbourIndex": "featurebank.extractor.search",
    "Neighbours": "featurebank.extractor.search",
    "SearchOptions": "featurebank.extractor.search",
    "StoreSearch": "featurebank.extractor.search",
    "exact_search": "featurebank.extractor.search",
    "extractor_for": "featurebank.extractor.search",
    "self_neighbours": "featurebank.extractor.search",
}

__all__ = ["DEFAULT_MAX_PIXELS", "DEVICES", "DecodeError", "ENGINES", "EmbedRun", "EmbedSummary",
           "Extractor", "FeatureSet", "FeatureStore", "ImageItem", "collect", "decode",
           "SourceOptions", "embed_collection", "image_key", "label_table", "open_source",
           "read_bytes", "resolve_model_path", "upgrade_message",
           "IndexMismatchError", "Match", "NeighbourIndex", "Neighbours", "SearchOptions",
           "StoreSearch", "exact_search", "extractor_for", "self_neighbours"]

if TYPE_CHECKING:
    from featurebank.extractor._extractor import Extractor, resolve_model_path
    from featurebank.extractor._inputs import ImageItem, collect
    from featurebank.extractor._labels import label_table
    from featurebank.extractor._options import DEVICES, ENGINES, EmbedRun
    from featurebank.extractor._preprocess import (
        DEFAULT_MAX_PIXELS,
        DecodeError,
        decode,
        image_key,
        read_bytes,
    )
    from featurebank.extractor.engines import EmbedSummary, embed_collection
    from featurebank.extractor.search import (
        IndexMismatchError,
        Match,
        NeighbourIndex,
        Neighbours,
        SearchOptions,
        StoreSearch,
        exact_search,
        extractor_for,
        self_neighbours,
    )
    from featurebank.extractor.sources import SourceOptions, open_source
    from featurebank.extractor.store import FeatureSet, FeatureStore
    from featurebank.extractor.store._store import upgrade_message


__getattr__, __dir__ = attach(__name__, _LAZY)
