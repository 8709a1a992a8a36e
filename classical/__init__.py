"""featurebank.classical: scikit-learn on stored features (probes, SVMs, sweeps, reports)."""

from featurebank.classical._features import (
    LabelledFeatures,
    SpecMismatchError,
    labelled_only,
    load_features,
)
from featurebank.classical._model import TrainedModel, load_model, raw_pixels
from featurebank.classical._probe import LinearProbe, cross_validate_probe, k_shot_indices
from featurebank.classical._transformer import EmbeddingTransformer
from featurebank.classical._workflow import evaluate, fewshot_curve, sweep, train

__all__ = ["EmbeddingTransformer", "LabelledFeatures", "LinearProbe", "SpecMismatchError",
           "TrainedModel", "cross_validate_probe", "evaluate", "fewshot_curve", "k_shot_indices",
           "labelled_only", "load_features", "load_model", "raw_pixels", "sweep", "train"]
