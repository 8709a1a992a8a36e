"""Engines: a collection into the store, on this machine (threads) or on a Ray cluster.

Both share one per-file step (read, key, decode) and one summary type; Ray is imported only
when ``engine='ray'`` is asked for.
"""

from featurebank.extractor.engines._common import EmbedRun, EmbedSummary, prepare_file
from featurebank.extractor.engines._dispatch import embed_collection

__all__ = ["EmbedRun", "EmbedSummary", "embed_collection", "prepare_file"]
