"""featurebank.classical: scikit-learn on stored features (probes, SVMs, sweeps, reports).

Every name loads on first use: ``from featurebank.classical import CLASSIFIERS`` (what the
command line offers) costs no scikit-learn, and a tuned model's ``check_same_specs`` no more than
its own module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featurebank.lazy import attach

# public name -> the module that defines it
_LAZY = {
    "AUTO": "featurebank.classical._options",
    "CLASSIFIERS": "featurebank.classical._options",
    "PROBABILITIES": "featurebank.classical._options",
    "EmbeddingTransformer": "featurebank.classical._transformer",
    "LabelledFeatures": "featurebank.classical._features",
    "LinearProbe": "featurebank.classical._probe",
    "ONNX_KINDS": "featurebank.classical._onnx_ops",
    "OnnxClassifier": "featurebank.classical._onnx_ops",
    "SpecMismatchError": "featurebank.classical._features",
    "TrainOptions": "featurebank.classical._options",
    "TrainedClassifier": "featurebank.classical._model",
    "check_same_specs": "featurebank.classical._features",
    "classifier_as_onnx": "featurebank.classical._onnx_ops",
    "cross_validate_probe": "featurebank.classical._probe",
    "evaluate": "featurebank.classical._workflow",
    "fewshot_curve": "featurebank.classical._workflow",
    "k_shot_indices": "featurebank.classical._probe",
    "labelled_only": "featurebank.classical._features",
    "load_features": "featurebank.classical._features",
    "load_trained": "featurebank.classical._model",
    "pyplot": "featurebank.classical._report",
    "raw_pixels": "featurebank.classical._model",
    "save_figure": "featurebank.classical._report",
    "sweep": "featurebank.classical._workflow",
    "train": "featurebank.classical._workflow",
    # knowing the data (classical/audit/)
    "AuditOptions": "featurebank.classical.audit",
    "AuditReport": "featurebank.classical.audit",
    "audit_stores": "featurebank.classical.audit",
    "confident_learning": "featurebank.classical.audit",
    "out_of_fold_probabilities": "featurebank.classical.audit",
    "read_exclusions": "featurebank.classical.audit",
}

__all__ = ["AUTO", "CLASSIFIERS", "PROBABILITIES", "EmbeddingTransformer", "LabelledFeatures",
           "LinearProbe", "ONNX_KINDS", "OnnxClassifier", "SpecMismatchError", "TrainOptions",
           "TrainedClassifier", "check_same_specs", "classifier_as_onnx", "cross_validate_probe",
           "evaluate", "fewshot_curve", "k_shot_indices", "labelled_only", "load_features",
           "load_trained", "pyplot", "raw_pixels", "save_figure", "sweep", "train",
           "AuditOptions", "AuditReport", "audit_stores", "confident_learning",
           "out_of_fold_probabilities", "read_exclusions"]

if TYPE_CHECKING:
    from featurebank.classical._features import (
        LabelledFeatures,
        SpecMismatchError,
        check_same_specs,
        labelled_only,
        load_features,
    )
    from featurebank.classical._model import TrainedClassifier, load_trained, raw_pixels
    from featurebank.classical._onnx_ops import ONNX_KINDS, OnnxClassifier, classifier_as_onnx
    from featurebank.classical._options import AUTO, CLASSIFIERS, PROBABILITIES, TrainOptions
    from featurebank.classical._probe import LinearProbe, cross_validate_probe, k_shot_indices
    from featurebank.classical._report import pyplot, save_figure
    from featurebank.classical._transformer import EmbeddingTransformer
    from featurebank.classical._workflow import evaluate, fewshot_curve, sweep, train
    from featurebank.classical.audit import (
        AuditOptions,
        AuditReport,
        audit_stores,
        confident_learning,
        out_of_fold_probabilities,
        read_exclusions,
    )


#: names "model" meant before it meant the network only (issue 31)
_DEPRECATED = {"TrainedModel": "TrainedClassifier", "load_model": "load_trained"}

__getattr__, __dir__ = attach(__name__, _LAZY, deprecated=_DEPRECATED)
