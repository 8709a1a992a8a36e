"""Which stored images look like these: one feature set of a store searched exactly (streamed
blocks) or through its persisted faiss index, answers with paths and labels."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurebank.errors import FeaturebankError
from featurebank.extractor.search._exact import Neighbours, exact_search
from featurebank.extractor.search._index import NeighbourIndex
from featurebank.extractor.search._options import SearchOptions
from featurebank.extractor.store import FeatureStore
from featurebank.spec import FeatureSpec

__all__ = ["Match", "StoreSearch", "extractor_for"]


@dataclass(frozen=True)
class Match:
    """One stored neighbour: its content key, first path, label and cosine similarity."""

    key: str
    path: str
    label: str
    similarity: float

    def to_dict(self) -> dict:
        return {"key": self.key, "path": self.path, "label": self.label,
                "similarity": round(float(self.similarity), 6)}


class StoreSearch:
    """Nearest stored rows of one feature set of a store.

    Parameters
    ----------
    store : path or FeatureStore
        Read only; a sharded store through its virtual file.
    layer : str, optional
        Layer name or fingerprint of the set (needed when the store holds several).
    options : SearchOptions
        ``top``, ``block_rows`` and the method (exact, or an index beyond a size).
    """

    def __init__(self, store: str | Path | FeatureStore, layer: str | None = None, *,
                 options: SearchOptions | None = None):
        self.store = store if isinstance(store, FeatureStore) else FeatureStore(store)
        self.options = options or SearchOptions()
        info = self.store.resolve(layer, parameter="layer")
        if len(info.row_shape) != 1:
            raise FeaturebankError(f"feature set {info.fingerprint} of {self.store.path} holds "
                                   f"unpooled maps {info.row_shape}; search a pooled set")
        self.fingerprint, self.spec = info.fingerprint, info.spec
        self.method = self.options.method(info.rows, info.dim)
        self._index: NeighbourIndex | None = None
        self._table: dict[str, tuple[str, str]] | None = None
        self._rows = -1

    def neighbours(self, vectors: np.ndarray, top: int | None = None) -> Neighbours:
        """Row positions, keys and similarities of the ``top`` nearest rows of each vector."""
        top = top or self.options.top
        vectors = np.atleast_2d(np.asarray(vectors, np.float32))
        if self.method == "exact":
            return exact_search(self.store, self.fingerprint, vectors, top,
                                block_rows=self.options.block_rows)
        return self.index().search(vectors, top)

    def index(self) -> NeighbourIndex:
        """The faiss index, built or extended from the committed rows when they grew."""
        if self._index is None:
            self._index = NeighbourIndex(self.store, self.fingerprint, kind=self.method,
                                         block_rows=self.options.block_rows)
        rows = self._committed()
        if self._index.index is None or self._index.rows != rows:
            self._index.update()
        return self._index

    def _committed(self) -> int:
        return next(s.rows for s in self.store.feature_sets() if s.fingerprint == self.fingerprint)

    def matches(self, vectors: np.ndarray, top: int | None = None) -> list[list[Match]]:
        """The ``top`` nearest stored images of each vector, with their paths and labels."""
        found = self.neighbours(vectors, top)
        rows = self._committed()
        if self._table is None or rows != self._rows:  # the store grew: re-read its images
            self._table, self._rows = self.store.image_table(), rows
        out = []
        keys_of_rows = found.keys if found.keys is not None else np.full(found.rows.shape, "")
        for keys, sims in zip(keys_of_rows, found.similarity, strict=True):
            out.append([Match(str(k), *self._table.get(str(k), ("", "")), float(s))
                        for k, s in zip(keys, sims, strict=True) if k])
        return out


    def images(self, inputs: list[str], top: int | None = None,
               model: str | Path | None = None) -> Iterator[tuple[str, list[Match] | None, str | None]]:
        """``(path, matches, error)`` per input file (folders, files, lists, globs as for
        embed), in order: the inputs are collected and the extractor built first (a bad input
        or a missing model fails at once), then a file that cannot be decoded gets ``error``
        and the others go on."""
        from featurebank.extractor import DecodeError, collect

        paths = [item.path for item in collect(list(inputs))]
        extractor = extractor_for(self.spec, model)

        def answers() -> Iterator[tuple[str, list[Match] | None, str | None]]:
            for path in paths:
                try:
                    vectors = extractor.embed([path])[self.spec.layer]
                except DecodeError as exc:
                    yield path, None, exc.reason
                    continue
                yield path, self.matches(vectors, top)[0], None

        return answers()


def extractor_for(spec: FeatureSpec, model: str | Path | None = None, **kwargs):
    """An :class:`~featurebank.extractor.Extractor` computing exactly ``spec``'s features: a
    registry model from the export cache, a foreign ONNX model found by its digest (``model``:
    the adopted copy or the original file). Refuses one whose features would differ."""
    from featurebank.export import find_model_by_digest
    from featurebank.extractor import Extractor

    if spec.model.source == "onnx":
        path, adopted = find_model_by_digest(spec.model.weights_sha256, [model])
        target = str(path)
        if not adopted:  # the original file: its conventions come from the spec
            kwargs = {"preprocessing": spec.model.preprocessing, **kwargs}
    else:
        target = str(model or spec.model.model)
    if spec.quantization:
        kwargs = {"precision": "int8", "calibration": spec.quantization, **kwargs}
    ex = Extractor(target, layers=[spec.layer], pool=spec.pool, gem_p=spec.gem_p,
                   normalize=spec.normalize, **kwargs)
    got = ex.specs[0]
    if got.fingerprint() != spec.fingerprint():
        raise FeaturebankError(f"the model {target} computes {got.describe()}, but the "
                               f"store's feature set is {spec.describe()}; pass the model the "
                               "store was embedded with (model=FILE.onnx)")
    return ex
