"""``EmbeddingTransformer``: images -> features inside scikit-learn Pipelines, extracted once.

Features are cached by (spec fingerprint, content key): in the feature store when ``store`` is
given, else in a process-wide memory cache. Clones made by GridSearchCV share that cache, so a
search over classifier parameters embeds each image once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from extractor.api import Extractor
from extractor.preprocess import image_key, read_bytes

#: Process-wide cache {(fingerprint, key): vector} and counters (read by tests and benchmarks).
_MEMORY: dict[tuple[str, str], np.ndarray] = {}
STATS = {"embedded": 0, "cache_hits": 0}


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
        Feature store used as cache (and filled); default: in-memory cache.
    batch_size : int
    device : {'auto', 'cpu', 'cuda'}
    """

    def __init__(self, model: str = "efficientnet_lite0", layers=("head",), pool: str = "avg",
                 gem_p: float = 3.0, normalize: bool = False, store=None, batch_size: int = 32,
                 device: str = "auto"):
        self.model = model
        self.layers = layers
        self.pool = pool
        self.gem_p = gem_p
        self.normalize = normalize
        self.store = store
        self.batch_size = batch_size
        self.device = device

    def _extractor(self) -> Extractor:
        layers = [self.layers] if isinstance(self.layers, str) else list(self.layers)
        return Extractor(self.model, layers, self.pool, self.gem_p, self.normalize, self.device,
                         self.batch_size)

    def fit(self, X, y=None):
        """Resolve the spec (no learning: the network is frozen)."""
        ex = self._extractor()
        self.specs_ = ex.specs
        self.fingerprints_ = [s.fingerprint() for s in ex.specs]
        self.n_features_out_ = int(sum(ex.graph.dims))
        self._ex = ex
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
            out = self._ex.embed([first[k] for k in unique])
            arrays = out if isinstance(out, np.ndarray) else list(out.values())
            # one pass gives every layer: cache all of them now
            per_layer = [arrays] if isinstance(out, np.ndarray) else arrays
            for j, (layer_fp, arr) in enumerate(zip(self.fingerprints_, per_layer, strict=True)):
                for k, vec in zip(unique, arr, strict=True):
                    _MEMORY[(layer_fp, k)] = vec
                if self.store is not None:
                    self._save(self.specs_[j], unique, arr)
            STATS["embedded"] += len(unique)
            found.update({k: _MEMORY[(fp, k)] for k in unique})
        STATS["cache_hits"] += len(keys) - len(unique)
        return np.stack([found[k] for k in keys])

    def _lookup(self, fp: str, keys: list[str]) -> dict[str, np.ndarray]:
        found = {k: _MEMORY[(fp, k)] for k in keys if (fp, k) in _MEMORY}
        rest = [k for k in dict.fromkeys(keys) if k not in found]
        if rest and self.store is not None and Path(self.store).exists():
            from extractor.store import FeatureStore

            fs = FeatureStore(self.store)
            present = [k for k, ok in zip(rest, fs.has(fp, rest), strict=True) if ok]
            if present:
                found.update(zip(present, fs.get(fp, present), strict=True))
        return found

    def _save(self, spec, keys: list[str], arr: np.ndarray) -> None:
        from extractor.store import FeatureStore

        with FeatureStore(self.store, mode="a") as fs:
            fs.commit({spec: (keys, arr)}, dtype="float32")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False  # input is a list of images, not a feature matrix
        tags.requires_fit = True
        return tags
