"""featurebank: transfer learning by feature extraction.

One namespace, laid out along the flow:

- :mod:`featurebank.export`: pretrained CNNs and users' ONNX files become self-describing ONNX;
- :mod:`featurebank.extractor`: the graph cut at layers and pooled, run over image collections
  into the HDF5 feature store;
- :mod:`featurebank.classical`: scikit-learn on stored features;
- :mod:`featurebank.spec` and :mod:`featurebank.errors`: the ground floor every stage uses.

The common entry points are importable from here. They load lazily: ``import featurebank``
imports neither torch, h5py nor onnxruntime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from featurebank.errors import FeaturebankError
from featurebank.lazy import attach
from featurebank.spec import FeatureOptions, FeatureSpec, ModelSpec, Preprocessing

# public name -> the stage that owns it
_LAZY = {
    "Extractor": "featurebank.extractor",
    "FeatureStore": "featurebank.extractor",
    "embed_collection": "featurebank.extractor",
    "EmbeddingTransformer": "featurebank.classical",
    "LinearProbe": "featurebank.classical",
    "load_trained": "featurebank.classical",
    "list_models": "featurebank.export",
    "export_onnx": "featurebank.export",
}

__all__ = ["EmbeddingTransformer", "Extractor", "FeatureOptions", "FeatureSpec", "FeatureStore",
           "FeaturebankError", "LinearProbe", "ModelSpec", "Preprocessing", "__version__",
           "embed_collection", "export_onnx", "list_models", "load_trained"]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these load on first use
    from featurebank.classical import EmbeddingTransformer, LinearProbe, load_trained
    from featurebank.export import export_onnx, list_models
    from featurebank.extractor import Extractor, FeatureStore, embed_collection


def _version() -> str:
    """The installed distribution's version (importlib.metadata costs ~30 ms: read on demand)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("featurebank")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0.0.0+unknown"


_load, __dir__ = attach(__name__, _LAZY, deprecated={"load_model": "load_trained"})


def __getattr__(name: str) -> Any:
    if name == "__version__":
        globals()[name] = value = _version()
        return value
    return _load(name)
