"""export: pretrained CNNs (torch) become self-describing ONNX files.

``import export`` does not import torch; only building or exporting a model does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:  # annotations only: importing export must not import torch
    import torch


def export_onnx(
    model: str, out: str | Path, weights: str | Path | None = None, input_size: int | None = None
) -> ModelSpec:
    """Export a registry model to a self-describing ONNX file, atomically.

    See :func:`export.onnx_export.export_onnx`; torch is imported only when this is called.
    """
    from export.onnx_export import export_onnx as _export

    return _export(model, out, weights=weights, input_size=input_size)


def build_torch_model(
    name: str, weights: str | Path | None = None, input_size: int | None = None
) -> torch.nn.Module:
    """The eval-mode torch module of a registry model, with ``features(x)`` and
    ``weights_sha256``.

    See :func:`export.torch_models.build_torch_model`; torch is imported only when called.
    """
    from export.torch_models import build_torch_model as _build

    return _build(name, weights=weights, input_size=input_size)


__all__ = [
    "DEFAULT_MODEL", "FeatureSpec", "FeaturebankError", "LayerInfo", "ModelSpec", "OnnxInfo",
    "Preprocessing", "build_torch_model", "ensure_exported", "export_onnx", "foreign_model_spec",
    "get_model_entry", "imagenet_classes", "list_models", "load_preprocessing", "read_onnx_metadata",
]
