"""The feature store: file format, sharded stores, the writer lock and crash repair.

See docs/STORE_FORMAT.md for the layout; :class:`FeatureStore` is the one way in.
"""

from featurebank.extractor.store._format import Features, is_sharded
from featurebank.extractor.store._format import FeatureSetInfo as FeatureSet
from featurebank.extractor.store._lock import StoreLockedError
from featurebank.extractor.store._store import FORMAT_VERSION, FeatureStore
from featurebank.extractor.store._upgrade import upgrade_store

__all__ = ["FORMAT_VERSION", "FeatureSet", "FeatureStore", "Features", "StoreLockedError",
           "is_sharded", "upgrade_store"]
