"""``EmbeddingTransformer``: images -> features inside scikit-learn Pipelines, extracted once.

Features are cached by (spec fingerprint, content key): in the feature store when ``store`` is
given (shared by every clone and every joblib worker), and in a bounded in-memory cache of
``cache_size`` vectors held by the fitted transformer (per process).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
from featurebank.extractor import Extractor, image_key
from featurebank.extractor._preprocess import read_bytes
from PIL import Image
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from featurebank.spec import DEFAULT_MODEL, FeatureOptions


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
        (``n_jobs > 1``): every worker process then reads what the others embedded.
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
        blocks = [self._vectors(fp, spec_i, keys, keyed)
                  for spec_i, fp in enumerate(self.fingerprints_)]
        return np.hstack(blocks).astype(np.float32)

    def _vectors(self, fp: str, spec_i: int, keys: list[str], keyed) -> np.ndarray:
        found = self._lookup(fp, keys)
        missing = [i for i, k in enumerate(keys) if k not in found]
        unique = list(dict.fromkeys(keys[i] for i in missing))
        if unique:
            first = {k: keyed[keys.index(k)][1] for k in unique}
            # one pass gives every layer: cache all of them now
            per_layer = list(self._ex.embed([first[k] for k in unique]).values())
            for j, (layer_fp, arr) in enumerate(zip(self.fingerprints_, per_layer, strict=True)):
                for k, vec in zip(unique, arr, strict=True):
                    self._memory.put((layer_fp, k), vec)
                if self.store is not None:
                    self._save(self.specs_[j], unique, arr)
            self.n_embedded_ += len(unique)
            found.update(zip(unique, per_layer[spec_i], strict=True))
        return np.stack([found[k] for k in keys])

    def _lookup(self, fp: str, keys: list[str]) -> dict[str, np.ndarray]:
        found = {}
        for k in keys:
            vec = self._memory.get((fp, k))
            if vec is not None:
                found[k] = vec
        rest = [k for k in dict.fromkeys(keys) if k not in found]
        if rest and self.store is not None and Path(self.store).exists():
            from featurebank.extractor.store import FeatureStore

            fs = FeatureStore(self.store)
            present = [k for k, ok in zip(rest, fs.has(fp, rest), strict=True) if ok]
            if present:
                found.update(zip(present, fs.get(fp, present), strict=True))
        return found

    def _save(self, spec, keys: list[str], arr: np.ndarray) -> None:
        from featurebank.extractor.store import FeatureStore

        with FeatureStore(self.store, mode="a") as fs:
            fs.commit({spec: (keys, arr)}, dtype="float32")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False  # input is a list of images, not a feature matrix
        tags.requires_fit = True
        return tags
