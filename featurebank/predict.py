"""Predicting images with a trained classifier: the one place the command line and the service
load one and rank its answers.

A classifier is either a ``featurebank train`` model (``.joblib``: scikit-learn on stored
features) or a ``featurebank finetune`` model (``.onnx``: the tuned network's own logits). Both
answer the same way (``estimator.classes_``, ``predict_proba(X, specs)``, ``extractor()``,
``check_specs``, ``fingerprints``, ``info``); :func:`load_classifier` picks the loader by the
file, :func:`predict_images` runs images through it one file at a time, and :func:`ranked` is
the top-k of one row of probabilities.

This module sits above the stages (it imports classical and finetune, both on first use), beside
the entry points that use it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featurebank.options import Interval, check_options, option

__all__ = ["PredictOptions", "Prediction", "load_classifier", "predict_images", "ranked"]


@dataclass(frozen=True)
class PredictOptions:
    """How images are predicted (``featurebank predict``).

    Parameters
    ----------
    top : int
        How many labels to rank per image, most likely first.
    model : str, optional
        Where the classifier's ONNX network is (found by its SHA-256 in the cache otherwise).
    """

    top: int = option(1, Interval(int, 1, None))
    model: str | Path | None = option(None, str, Path, None, help="where the classifier's ONNX network "
                               "is (found by its SHA-256 in the cache otherwise)")

    def __post_init__(self) -> None:
        check_options(self)


def load_classifier(path: str | Path) -> Any:
    """The classifier in ``path``: a tuned ONNX network (an ONNX file) or a trained classifier
    (``.joblib``, else).

    Raises
    ------
    FeaturebankError
        The file does not exist, or is not a featurebank classifier (the message says which
        command makes one).
    """
    from featurebank.paths import is_onnx_path

    if is_onnx_path(path):  # a fine-tuned network classifies with its logits
        from featurebank.finetune import load_tuned

        return load_tuned(path)
    from featurebank.classical import load_trained

    return load_trained(path)


def ranked(probabilities: Sequence[float], classes: Sequence[Any],
           top: int = 1) -> list[tuple[str, float]]:
    """The ``top`` most likely (label, probability) pairs, most likely first (at least one)."""
    order = sorted(range(len(probabilities)), key=lambda i: -float(probabilities[i]))
    return [(str(classes[i]), float(probabilities[i])) for i in order[:max(1, top)]]


@dataclass
class Prediction:
    """One file's answer: its ranked labels, or why it could not be read (``error``)."""

    path: str
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    @property
    def label(self) -> str | None:
        return self.top[0][0] if self.top else None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "label": self.top[0][0], "probability": self.top[0][1],
                "top": [{"label": lab, "probability": p} for lab, p in self.top]}

    def to_line(self) -> str:
        """Tab-separated: path, then label and probability of each ranked class."""
        if self.error is not None:
            return f"{self.path}\terror: {self.error}"
        return self.path + "\t" + "\t".join(f"{lab}\t{p:.4f}" for lab, p in self.top)


def predict_images(classifier: Any, images: Sequence[str], *, top: int = 1,
                   model: str | Path | None = None) -> Iterator[Prediction]:
    """Predict every image of ``images`` (folders, files, list files or globs, as for embed).

    The inputs are collected and the classifier's extractor is built before the first answer,
    so a bad input or a missing model fails at once. Then one :class:`Prediction` per file, in
    order; a file that cannot be decoded gives a Prediction with ``error`` instead of stopping
    the others.

    Parameters
    ----------
    classifier : a :func:`load_classifier` result
    images : sequence of str
    top : int
        How many labels to rank per image.
    model : path, optional
        Where the classifier's ONNX model is (found by its SHA-256 in the cache otherwise).
    """
    import numpy as np

    from featurebank.extractor import DecodeError, collect

    PredictOptions(top=top, model=model)
    paths = [item.path for item in collect(list(images))]
    extractor = classifier.extractor(model)
    classes = list(classifier.estimator.classes_)

    def answers() -> Iterator[Prediction]:
        for path in paths:
            try:
                feats = extractor.embed([path])
            except DecodeError as exc:
                yield Prediction(path, error=exc.reason)
                continue
            X = np.hstack(list(feats.values()))
            proba = classifier.predict_proba(X, extractor.specs)[0]
            yield Prediction(path, ranked(proba, classes, top))

    return answers()
