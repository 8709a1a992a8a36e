"""Trained classifiers saved with the spec(s) of the features they read.

A saved model (joblib) holds the estimator, the full FeatureSpec of each layer it reads (their
fingerprints check every input), the class names, the content keys it was trained on (so
evaluation never scores training images) and an optional raw-pixel baseline trained on the same
images for a side-by-side number.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from PIL import Image

from featurebank.errors import FeaturebankError
from featurebank.export import featurebank_version
from featurebank.extractor.sources import is_url, parse_source, read_all
from featurebank.spec import FeatureSpec

FORMAT = "featurebank.classifier/1"
PIXEL_SIDE = 28


def raw_pixels(paths, side: int = PIXEL_SIDE) -> np.ndarray:
    """The raw-pixel baseline's features: grey images downscaled to side x side, in [0, 1]."""
    import io

    out = np.empty((len(paths), side * side), np.float32)
    # any stored path form; each tar shard or parquet file is streamed once for all its images
    for i, data in read_all([str(p) for p in paths]):
        try:
            if isinstance(data, Exception):
                raise data
            with Image.open(io.BytesIO(data)) as im:
                out[i] = np.asarray(im.convert("L").resize((side, side), Image.Resampling.BILINEAR),
                                    np.float32).ravel() / 255.0
        except Exception as exc:
            raise FeaturebankError(f"raw-pixel baseline: cannot read {paths[i]} ({exc})") from exc
    return out


def check_images(paths, where: str) -> None:
    """Refuse, before any work, to re-read images that are not there.

    Stores (format 2 and 3) hold absolute paths or URLs; a relative one comes from a version-1
    store, whose
    paths meant the folder embed ran in, and is never guessed against the current folder.
    """
    paths = [str(p) for p in paths]
    relative = [p for p in paths if not os.path.isabs(p) and not is_url(p)]
    # a local file or the local container of a member (format 3); URLs are checked when read,
    # since asking an object store about each image first would cost a request per image
    local = [p for p in paths if os.path.isabs(p)]
    missing = [p for p in local if not os.path.isfile(parse_source(p).container)]
    if not relative and not missing:
        return
    if relative:
        raise FeaturebankError(
            f"the raw-pixel baseline re-reads the images, but {where} holds {len(relative)} "
            f"relative path(s) (e.g. {relative[0]}) from a store of format version 1; run "
            "'featurebank store upgrade STORE --root DIR' (DIR: the folder embed ran in), or "
            "pass baseline=False to skip the baseline")
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    raise FeaturebankError(
        f"the raw-pixel baseline re-reads the images, but {len(missing)} of {len(paths)} "
        f"images of {where} are missing: {shown}. Put them back, or pass "
        "baseline=False to skip the baseline")


@dataclass
class TrainedClassifier:
    """A classifier bound to the feature specs it was trained on (``featurebank train``)."""

    estimator: Any
    specs: list[FeatureSpec]
    classes: list[str]
    trained_keys: set[str] = field(default_factory=set)
    baseline: Any = None
    info: dict = field(default_factory=dict)
    #: training rows left out on purpose (``--exclude``): ``evaluate`` skips them too
    excluded_keys: set[str] = field(default_factory=set)

    @property
    def fingerprints(self) -> list[str]:
        return [s.fingerprint() for s in self.specs]

    def check_specs(self, specs: list[FeatureSpec]) -> None:
        from featurebank.classical._features import check_same_specs

        check_same_specs(self.specs, specs, "the classifier was trained on features",
                         "embed with the classifier's spec")

    def predict_proba(self, X: np.ndarray, specs: list[FeatureSpec]) -> np.ndarray:
        self.check_specs(specs)
        return self.estimator.predict_proba(X)

    def predict(self, X: np.ndarray, specs: list[FeatureSpec]) -> np.ndarray:
        self.check_specs(specs)
        return self.estimator.predict(X)

    def extractor(self, model: str | Path | None = None, **kwargs):
        """An Extractor that computes exactly this model's features.

        Parameters
        ----------
        model : path, optional
            Where the ONNX model is (``--model``). A model adopted from a foreign file is
            found by its SHA-256: in this path (the adopted copy or the original file), in
            paths remembered by :func:`featurebank.export.remember_model`, or in the cache
            copy ``featurebank adopt`` keeps. Registry models come from the export cache.
        **kwargs
            Extractor options (``device``, ``threads``, ``max_pixels``, ...).
        """
        from featurebank.export import find_model_by_digest, remembered_models
        from featurebank.extractor import Extractor

        spec = self.specs[0]
        given = model or next(iter(remembered_models()), None)
        if spec.model.source == "onnx":
            path, adopted = find_model_by_digest(spec.model.weights_sha256,
                                                 [model, *remembered_models(),
                                                  self.info.get("onnx_path")])
            target = str(path)
            if not adopted:  # the original file: its conventions come from the spec
                kwargs = {"preprocessing": spec.model.preprocessing, **kwargs}
        else:
            target = str(given or self.info.get("onnx_path") or spec.model.model)
        if spec.quantization:  # int8 features: the same cached int8 graph, found by its tag
            kwargs = {"precision": "int8", "calibration": spec.quantization, **kwargs}
        ex = Extractor(target, layers=[s.layer for s in self.specs], pool=spec.pool,
                       gem_p=spec.gem_p, normalize=spec.normalize, **kwargs)
        self.check_specs(ex.specs)
        return ex

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        payload = {"format": FORMAT, "featurebank_version": featurebank_version(),
                   "estimator": self.estimator, "specs": [s.to_json() for s in self.specs],
                   "fingerprints": self.fingerprints, "classes": list(self.classes),
                   "trained_keys": sorted(self.trained_keys), "baseline": self.baseline,
                   "info": self.info, "excluded_keys": sorted(self.excluded_keys)}
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            joblib.dump(payload, tmp, compress=3)
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise FeaturebankError(f"cannot write classifier {path}: {exc.strerror or exc}") from exc
        return path


def load_trained(path: str | Path) -> TrainedClassifier:
    """Load a classifier saved by :meth:`TrainedClassifier.save` (``featurebank train``)."""
    path = Path(path)
    if not path.is_file():
        raise FeaturebankError(f"classifier file {path} does not exist; train one with "
                               "'featurebank train'")
    try:
        payload = joblib.load(path)
    except Exception as exc:
        raise FeaturebankError(f"{path} is not a featurebank classifier ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise FeaturebankError(f"{path} is not a featurebank classifier (format {FORMAT} expected)")
    return TrainedClassifier(payload["estimator"], [FeatureSpec.from_json(s) for s in payload["specs"]],
                        payload["classes"], set(payload["trained_keys"]), payload["baseline"],
                        payload.get("info", {}), set(payload.get("excluded_keys", ())))

