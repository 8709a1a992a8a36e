"""``EmbeddingTransformer``: images -> features inside scikit-learn Pipelines, extracted once.

Features are cached by (spec fingerprint, content key): in the feature store when ``store`` is
given (shared by every clone and every joblib worker process: workers read it without waiting,
and take turns to add to it, so a parallel grid search embeds each image once), and in a bounded
in-memory cache of ``cache_size`` vectors held by the fitted transformer (per process: without
a store, every worker of ``n_jobs > 1`` embeds the images it meets again).
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from featurebank.extractor import EmbedRun, Extractor, image_key, read_bytes
from featurebank.options import Interval, check_params, field_constraints
from featurebank.spec import DEFAULT_MODEL, FeatureOptions

WRITER_WAIT_S = 3600.0  # a worker waits this long for another one's embedding batch


class _VectorCache:
    """At most ``size`` vectors keyed by (fingerprint, content key); least recently used go."""

    def __init__(self, size: int):
        self.size = size
        self._data: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    def get(self, key: tuple[str, str]) -> np.ndarray | None:
        vec = self._data.get(key)
        if vec is not None:
            self._data.move_to_end(key)
        return vec

    def put(self, key: tuple[str, str], vec: np.ndarray) -> None:
        if self.size <= 0:
            return
        self._data[key] = vec
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def content_key(image) -> tuple[str, object]:
    """(key, payload to embed) for a path, bytes, PIL image or array."""
    if isinstance(image, (str, Path)):
        data = read_bytes(image)
        return image_key(data), data
    if isinstance(image, (bytes, bytearray)):
        return image_key(bytes(image)), bytes(image)
    if isinstance(image, Image.Image):
        arr = np.asarray(image)
        image = arr
    arr = np.ascontiguousarray(image)
    h = hashlib.sha256(f"{arr.shape}{arr.dtype}".encode())
    h.update(arr.tobytes())
    return h.hexdigest(), arr


class EmbeddingTransformer(TransformerMixin, BaseEstimator):
    """Turn images into frozen-CNN features for scikit-learn.

    The constructor takes flat parameters (scikit-learn's ``get_params``, ``clone`` and grid
    search need them); ``fit`` builds the :class:`featurebank.FeatureOptions` from them.

    Parameters
    ----------
    model : str
        Registry name or ``.onnx`` file.
    layers : sequence of str
        Layers to cut at; several are concatenated in this order.
    pool : {'avg', 'max', 'gem', 'none'}
    gem_p : float
    normalize : bool
    store : path, optional
        Feature store used as cache (and filled). Pass one for a parallel grid search
        (``n_jobs > 1``): every worker process then reads what the others embedded, and each
        image is embedded once in all (workers wait their turn to write; none fails on the
        store's lock). Without it, the cache is per process.
    batch_size : int
    device : {'auto', 'cpu', 'cuda'}
    cache_size : int
        Vectors kept in memory per fitted transformer (least recently used go first);
        0 keeps none.

    Attributes
    ----------
    specs_ : list of FeatureSpec
        One per layer.
    n_embedded_ : int
        Images this fitted transformer computed (not found in a cache).
    """

    #: checked in ``fit``; the feature and run parameters as their options dataclasses declare
    _parameter_constraints: dict = {
        **field_constraints(FeatureOptions, "model", "layers", "pool", "gem_p", "normalize"),
        **field_constraints(EmbedRun, "batch_size", "device"),
        "store": [str, os.PathLike, None],
        "cache_size": [Interval(int, 0, None)],
    }

    def __init__(self, model: str = DEFAULT_MODEL, *, layers=("head",), pool: str = "avg",
                 gem_p: float = 3.0, normalize: bool = False, store=None, batch_size: int = 32,
                 device: str = "auto", cache_size: int = 100_000):
        self.model = model
        self.layers = layers
        self.pool = pool
        self.gem_p = gem_p
        self.normalize = normalize
        self.store = store
        self.batch_size = batch_size
        self.device = device
        self.cache_size = cache_size

    def _extractor(self) -> Extractor:
        options = FeatureOptions(model=self.model, layers=self.layers, pool=self.pool,
                                 gem_p=self.gem_p, normalize=self.normalize)
        return Extractor(options, device=self.device, batch_size=self.batch_size)

    def fit(self, X, y=None):
        """Resolve the spec (no learning: the network is frozen)."""
        check_params(self)
        ex = self._extractor()
        self.specs_ = ex.specs
        self.fingerprints_ = [s.fingerprint() for s in ex.specs]
        self.n_features_out_ = int(sum(ex.graph.dims))
        self.n_embedded_ = 0
        self._ex = ex
        self._memory = _VectorCache(self.cache_size)
        return self

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self)
        names = []
        for spec, dim in zip(self.specs_, self._ex.graph.dims, strict=True):
            names += [f"{spec.layer}_{i}" for i in range(dim)]
        return np.asarray(names, dtype=object)

    def transform(self, X) -> np.ndarray:
        check_is_fitted(self)
        images = list(X) if not isinstance(X, (str, Path, bytes)) else [X]
        keyed = [content_key(im) for im in images]
        keys = [k for k, _ in keyed]
        payload = dict(keyed)  # one payload per content: equal keys, equal bytes
        unique = list(payload)
        found = {fp: self._lookup(fp, unique) for fp in self.fingerprints_}
        missing = [k for k in unique if any(k not in found[fp] for fp in self.fingerprints_)]
        if missing:
            for fp, vectors in self._compute(missing, payload).items():
                found[fp].update(vectors)
        blocks = [np.stack([found[fp][k] for k in keys]) for fp in self.fingerprints_]
        return np.hstack(blocks).astype(np.float32)

    def _compute(self, keys: list[str], payload: dict) -> dict[str, dict[str, np.ndarray]]:
        """Vectors of ``keys`` for every layer: embedded here, or -- with a store -- read from
        it when another worker embedded them while this one waited for the writer lock."""
        if self.store is None:
            return self._embed(keys, payload)
        from featurebank.extractor.store import FeatureStore

        # Writers take turns: the lock is held from the re-check to the commit, so two workers
        # never embed the same image; readers (``_lookup``) never take it.
        with FeatureStore(self.store, mode="a", wait=WRITER_WAIT_S) as fs:
            have = np.all([fs.has(fp, keys) for fp in self.fingerprints_], axis=0)
            done = [k for k, ok in zip(keys, have, strict=True) if ok]
            todo = [k for k, ok in zip(keys, have, strict=True) if not ok]
            out: dict[str, dict[str, np.ndarray]] = {fp: {} for fp in self.fingerprints_}
            if done:
                for fp in self.fingerprints_:
                    out[fp].update(zip(done, fs.get(fp, done), strict=True))
            if todo:
                new = self._embed(todo, payload)
                fs.commit({spec: (todo, np.stack([new[fp][k] for k in todo]))
                           for spec, fp in zip(self.specs_, self.fingerprints_, strict=True)},
                          dtype="float32")
                for fp in self.fingerprints_:
                    out[fp].update(new[fp])
        return out

    def _embed(self, keys: list[str], payload: dict) -> dict[str, dict[str, np.ndarray]]:
        per_layer = list(self._ex.embed([payload[k] for k in keys]).values())
        self.n_embedded_ += len(keys)
        out = {}
        for fp, arr in zip(self.fingerprints_, per_layer, strict=True):
            out[fp] = dict(zip(keys, arr, strict=True))
            for k, vec in out[fp].items():
                self._memory.put((fp, k), vec)
        return out

    def _lookup(self, fp: str, keys: list[str]) -> dict[str, np.ndarray]:
        found = {}
        for k in keys:
            vec = self._memory.get((fp, k))
            if vec is not None:
                found[k] = vec
        rest = [k for k in keys if k not in found]
        if rest and self.store is not None and Path(self.store).exists():
            from featurebank.extractor.store import FeatureStore

            fs = FeatureStore(self.store)
            present = [k for k, ok in zip(rest, fs.has(fp, rest), strict=True) if ok]
            if present:
                found.update(zip(present, fs.get(fp, present), strict=True))
        return found

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False  # input is a list of images, not a feature matrix
        tags.requires_fit = True
        return tags
