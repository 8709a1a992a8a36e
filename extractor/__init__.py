"""extractor: ONNX graphs truncated at chosen layers, run over image collections into a store."""

from extractor.api import Extractor
from extractor.preprocess import DecodeError, decode

__all__ = ["DecodeError", "Extractor", "FeatureStore", "decode"]


def __getattr__(name):  # the store pulls in h5py: import it only when asked for
    if name == "FeatureStore":
        from extractor.store import FeatureStore

        return FeatureStore
    raise AttributeError(name)
