"""Engines: a collection into the store, on this machine (threads) or on a Ray cluster.

Both share one per-file step (read, key, decode) and one summary type; Ray is imported only
when ``engine='ray'`` or :func:`ray_joblib_backend` is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from featurebank.extractor.engines._common import EmbedRun, EmbedSummary, prepare_file
from featurebank.extractor.engines._dispatch import embed_collection

__all__ = ["EmbedRun", "EmbedSummary", "embed_collection", "prepare_file", "ray_joblib_backend"]

if TYPE_CHECKING:
    from featurebank.extractor.engines._ray import ray_joblib_backend


def __getattr__(name: str) -> Any:
    if name == "ray_joblib_backend":  # imports Ray: only when asked for
        from featurebank.extractor.engines._ray import ray_joblib_backend

        return ray_joblib_backend
    raise AttributeError(f"module 'featurebank.extractor.engines' has no attribute {name!r}")
