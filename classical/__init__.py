"""classical: scikit-learn on stored features (probes, SVMs, sweeps, reports)."""

from classical.features import SpecMismatchError, load_features
from classical.model import TrainedModel, load_model
from classical.probe import LinearProbe, cross_validate_probe, k_shot_indices
from classical.transformer import EmbeddingTransformer

__all__ = ["EmbeddingTransformer", "LinearProbe", "SpecMismatchError", "TrainedModel",
           "cross_validate_probe", "k_shot_indices", "load_features", "load_model"]
