"""export: pretrained CNNs (torch) become self-describing ONNX files.

``import export`` does not import torch; only building or exporting a model does.
"""

from export.cache import ensure_exported
from export.errors import FeaturebankError
from export.labels import imagenet_classes
from export.metadata import (
    LayerInfo,
    OnnxInfo,
    foreign_model_spec,
    load_preprocessing,
    read_onnx_metadata,
)
from export.registry import DEFAULT_MODEL, get_model_entry, list_models
from export.spec import FeatureSpec, ModelSpec, Preprocessing


def export_onnx(*args, **kwargs):  # noqa: D103 - documented in export.onnx_export
    from export.onnx_export import export_onnx as _export

    return _export(*args, **kwargs)


def build_torch_model(*args, **kwargs):  # noqa: D103 - documented in export.torch_models
    from export.torch_models import build_torch_model as _build

    return _build(*args, **kwargs)


export_onnx.__doc__ = "Export a registry model to a self-describing ONNX file (see export.onnx_export)."
build_torch_model.__doc__ = "The eval torch module and weights digest (see export.torch_models)."

__all__ = [
    "DEFAULT_MODEL", "FeatureSpec", "FeaturebankError", "LayerInfo", "ModelSpec", "OnnxInfo",
    "Preprocessing", "build_torch_model", "ensure_exported", "export_onnx", "foreign_model_spec",
    "get_model_entry", "imagenet_classes", "list_models", "load_preprocessing", "read_onnx_metadata",
]
