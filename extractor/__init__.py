"""featurebank.extractor: ONNX graphs cut at chosen layers, run over image collections into a
store.

- :class:`Extractor`: images in, vectors out (one dict keyed by layer);
- :func:`embed_collection`: a whole collection into the :class:`FeatureStore`, resumably, with
  the local engine or on a Ray cluster (``engine='ray'``);
- :func:`decode`: the one decode path (also used by the service and the classifiers).

The store (``h5py``) and the engines load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from featurebank.extractor._extractor import Extractor, resolve_model_path
from featurebank.extractor._inputs import ImageItem, collect
from featurebank.extractor._preprocess import DEFAULT_MAX_PIXELS, DecodeError, decode, image_key

_LAZY = {
    "FeatureStore": "featurebank.extractor.store",
    "FeatureSet": "featurebank.extractor.store",
    "embed_collection": "featurebank.extractor.engines",
    "EmbedSummary": "featurebank.extractor.engines",
    "EmbedRun": "featurebank.extractor.engines",
}

__all__ = ["DEFAULT_MAX_PIXELS", "DecodeError", "EmbedRun", "EmbedSummary", "Extractor",
           "FeatureSet", "FeatureStore", "ImageItem", "collect", "decode", "embed_collection",
           "image_key", "resolve_model_path"]

if TYPE_CHECKING:
    from featurebank.extractor.engines import EmbedRun, EmbedSummary, embed_collection
    from featurebank.extractor.store import FeatureSet, FeatureStore


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'featurebank.extractor' has no attribute {name!r}")
