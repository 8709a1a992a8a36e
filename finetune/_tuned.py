"""A tuned ONNX file as a classifier: its ``logits`` are the class scores (no torch here).

:class:`TunedClassifier` answers like a ``featurebank train`` model (``estimator.classes_``,
``predict_proba(X, specs)``, ``extractor()``, ``check_specs``, ``fingerprints``, ``info``), so
``featurebank predict`` and the service use either the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from featurebank.classical import check_same_specs
from featurebank.errors import FeaturebankError, OptionError
from featurebank.paths import is_onnx_path
from featurebank.spec import FeatureSpec

#: metadata key of the lineage and class names of a fine-tuned export
META_FINETUNE = "featurebank.finetune"


def tuned_lineage(path: str | Path) -> dict[str, Any] | None:
    """The lineage a fine-tuned ONNX file carries, or None for any other file."""
    import onnx

    path = Path(path)
    if not (path.is_file() and is_onnx_path(path)):
        return None
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        return None
    meta = {p.key: p.value for p in proto.metadata_props}
    if META_FINETUNE not in meta:
        return None
    try:
        return json.loads(meta[META_FINETUNE])
    except ValueError as exc:
        raise FeaturebankError(f"{path}: damaged fine-tuning metadata ({exc})") from exc


def is_tuned_onnx(path: str | Path) -> bool:
    return tuned_lineage(path) is not None


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class TunedClassifier:
    """The classifier inside a fine-tuned ONNX file.

    Its features are the file's ``logits`` layer; :meth:`predict_proba` is their softmax.
    """

    path: Path
    classes: list[str]
    lineage: dict[str, Any]
    _specs: list[FeatureSpec] = field(default_factory=list, repr=False)
    #: the file does not record which images trained it (``evaluate`` says so)
    trained_keys: None = None
    #: no raw-pixel baseline comes with a tuned file
    baseline: None = None

    @property
    def specs(self) -> list[FeatureSpec]:
        """The one feature set it reads: its own ``logits``, average-pooled."""
        if not self._specs:
            self.extractor()
        return self._specs

    @property
    def excluded_keys(self) -> set[str]:
        """Training images left out on purpose (``finetune --exclude``): ``evaluate`` skips
        them too, as for a ``train`` classifier."""
        return set(self.lineage.get("excluded_keys") or ())

    @property
    def estimator(self) -> SimpleNamespace:  # what callers of a train model read the classes from
        return SimpleNamespace(classes_=np.array(self.classes, dtype=object))

    @property
    def fingerprints(self) -> list[str]:
        return [s.fingerprint() for s in self.specs]

    @property
    def info(self) -> dict[str, Any]:
        return {"onnx_path": str(self.path), "kind": "finetuned", **self.lineage}

    def extractor(self, model: str | Path | None = None, **kwargs: Any):
        """An Extractor computing this file's ``logits`` from images.

        ``model`` (``predict --model``) may only name this same file: the tuned file is its
        own model.
        """
        from featurebank.extractor import Extractor

        if model is not None and Path(model).resolve() != self.path.resolve():
            raise OptionError("model", f"{str(model)!r} names another file, but "
                              f"{self.path.name} is its own model: drop it")
        ex = Extractor(str(self.path), layers=("logits",), pool="avg", **kwargs)
        self._specs = list(ex.specs)
        return ex

    def check_specs(self, specs: list[FeatureSpec]) -> None:
        check_same_specs(self.specs, specs, f"{self.path.name} classifies from its own logits",
                         f"embed or serve with 'featurebank embed ... --model {self.path} --layer "
                         "logits'")

    def predict_proba(self, X: np.ndarray, specs: list[FeatureSpec]) -> np.ndarray:
        self.check_specs(specs)
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.classes):
            raise FeaturebankError(f"{self.path.name}: logits of {len(self.classes)} classes "
                                   f"expected, got an array of shape {X.shape}")
        return _softmax(X)

    def predict(self, X: np.ndarray, specs: list[FeatureSpec]) -> np.ndarray:
        return np.array(self.classes, dtype=object)[self.predict_proba(X, specs).argmax(1)]


def load_tuned(path: str | Path) -> TunedClassifier:
    """The classifier of a ``featurebank finetune`` ONNX file; a clear error for other files."""
    path = Path(path)
    lineage = tuned_lineage(path)
    if lineage is None:
        raise FeaturebankError(f"{path} is not a fine-tuned model (no {META_FINETUNE} metadata); "
                               "make one with 'featurebank finetune', or give a "
                               "'featurebank train' model (.joblib)")
    classes = [str(c) for c in lineage.get("classes", [])]
    if len(classes) < 2:
        raise FeaturebankError(f"{path}: fine-tuning metadata lists no class names")
    return TunedClassifier(path, classes, lineage)
