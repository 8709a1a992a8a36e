"""The feature store: file format, sharded stores, the writer lock and crash repair.

See docs/STORE_FORMAT.md for the layout; :class:`FeatureStore` is the one way in;
:class:`StoreCache` reads stored vectors by content key beside a writer. Every name loads on
first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featurebank.lazy import attach

# public name -> the module that defines it
_LAZY = {
    "FORMAT_VERSION": "featurebank.extractor.store._store",
    "FeatureSet": "featurebank.extractor.store._format",
    "FeatureStore": "featurebank.extractor.store._store",
    "Features": "featurebank.extractor.store._format",
    "StoreCache": "featurebank.extractor.store._cache",
    "StoreLockedError": "featurebank.extractor.store._lock",
    "is_sharded": "featurebank.extractor.store._format",
    "upgrade_store": "featurebank.extractor.store._upgrade",
}

__all__ = ["FORMAT_VERSION", "FeatureSet", "FeatureStore", "Features", "StoreCache",
           "StoreLockedError", "is_sharded", "upgrade_store"]

if TYPE_CHECKING:
    from featurebank.extractor.store._cache import StoreCache
    from featurebank.extractor.store._format import Features, FeatureSet, is_sharded
    from featurebank.extractor.store._lock import StoreLockedError
    from featurebank.extractor.store._store import FORMAT_VERSION, FeatureStore
    from featurebank.extractor.store._upgrade import upgrade_store

__getattr__, __dir__ = attach(__name__, _LAZY)
