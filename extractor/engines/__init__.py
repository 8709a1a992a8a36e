"""Engines: a collection into the store, on this machine (threads) or on a Ray cluster.

Both share one per-file step (read, key, decode) and one summary type; Ray is imported only
when ``engine='ray'`` or :func:`ray_joblib_backend` is asked for. Every name loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featurebank.lazy import attach

_LAZY = {"EmbedRun": "featurebank.extractor.engines._common",
         "EmbedSummary": "featurebank.extractor.engines._common",
         "prepare_file": "featurebank.extractor.engines._common",
         "embed_collection": "featurebank.extractor.engines._dispatch",
         "ray_joblib_backend": "featurebank.extractor.engines._ray"}  # imports Ray

__all__ = ["EmbedRun", "EmbedSummary", "embed_collection", "prepare_file", "ray_joblib_backend"]

if TYPE_CHECKING:
    from featurebank.extractor.engines._common import EmbedRun, EmbedSummary, prepare_file
    from featurebank.extractor.engines._dispatch import embed_collection
    from featurebank.extractor.engines._ray import ray_joblib_backend

__getattr__, __dir__ = attach(__name__, _LAZY)
