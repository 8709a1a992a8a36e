"""Read-only look-ups of stored vectors by content key, for a reader that runs beside writers
(the service answers images ``featurebank embed`` already stored)."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np

from featurebank.errors import FeaturebankError
from featurebank.extractor.store._store import FeatureStore

log = logging.getLogger(__name__)


class StoreCache:
    """Read-only look-ups in a feature store, re-reading its key index only when the file changes.

    What the service answers stored images from. It never writes the store (``featurebank embed`` may be filling it meanwhile); a
    store that is missing or unreadable is a miss, never an error answered to a client.
    """

    def __init__(self, path: str | Path, fingerprints: list[str]):
        self.path = Path(path)
        self.fingerprints = fingerprints
        self._stamp: tuple[int, int] | None = None
        self._index: list[dict[str, int]] = []
        self._lock = threading.Lock()

    def check(self) -> None:
        """Refuse at start-up a file that exists but is not a readable store."""
        if self.path.exists():
            FeatureStore(self.path, mode="r")

    def _refresh(self) -> FeatureStore:
        st = os.stat(self.path)
        stamp = (st.st_mtime_ns, st.st_size)
        store = FeatureStore(self.path, mode="r")
        if stamp != self._stamp:
            self._index = [store.key_index(fp) for fp in self.fingerprints]
            self._stamp = stamp
        return store

    def lookup(self, keys: list[str]) -> dict[int, np.ndarray]:
        """Position in ``keys`` -> concatenated vector, for the keys every layer has stored."""
        with self._lock:
            try:
                if not self.path.is_file():
                    return {}
                store = self._refresh()
                hits = [i for i, k in enumerate(keys) if all(k in ix for ix in self._index)]
                if not hits:
                    return {}
                parts = [store.rows(fp, [ix[keys[i]] for i in hits])
                         for fp, ix in zip(self.fingerprints, self._index, strict=True)]
            except (OSError, FeaturebankError, KeyError) as exc:
                log.warning("store %s not usable for look-ups now (%s)", self.path, exc)
                self._stamp = None
                return {}
        X = np.hstack(parts)
        return {i: X[j] for j, i in enumerate(hits)}
