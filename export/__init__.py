"""featurebank.export: pretrained CNNs (torch) become self-describing ONNX files.

``import featurebank.export`` does not import torch; only building or exporting a model does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from featurebank.export._adopt import (
    adopt,
    find_model_by_digest,
    remember_model,
    remembered_models,
    resolve_conventions,
)
from featurebank.export._batch import BatchPlan, plan_batch, prepare_foreign, rewrite_batch
from featurebank.export._cache import cache_dir, cached_path, ensure_exported
from featurebank.export._catalogue import describe_tensor, infer_shapes, input_layout_from_shape
from featurebank.export._labels import imagenet_classes
from featurebank.export._metadata import (
    LayerInfo,
    OnnxInfo,
    featurebank_version,
    foreign_model_spec,
    load_onnx,
    load_preprocessing,
    read_conventions,
    read_onnx_metadata,
)
from featurebank.export._registry import (
    ModelEntry,
    get_model_entry,
    list_models,
    require_torch,
    torch_installed,
)
from featurebank.paths import is_onnx_path
from featurebank.spec import DEFAULT_MODEL, ModelSpec

if TYPE_CHECKING:  # annotations only: importing export must not import torch
    import torch


def export_onnx(
    model: str, out: str | Path, weights: str | Path | None = None, input_size: int | None = None
) -> ModelSpec:
    """Export a registry model to a self-describing ONNX file, atomically.

    See :func:`featurebank.export._onnx_export.export_onnx`; torch is imported only when this is called.
    """
    require_torch(f"exporting {model!r}")
    from featurebank.export._onnx_export import export_onnx as _export

    return _export(model, out, weights=weights, input_size=input_size)


def export_module(module: torch.nn.Module, spec: ModelSpec, out: str | Path,
                  extra: dict[str, str] | None = None) -> None:
    """Write a featurebank torch network (a fine-tuned one, say) as a self-describing ONNX file.

    See :func:`featurebank.export._onnx_export.export_module`; torch is imported only when called.
    """
    require_torch("exporting a torch module")
    from featurebank.export._onnx_export import export_module as _export_module

    _export_module(module, spec, out, extra)


def build_torch_model(
    name: str, weights: str | Path | None = None, input_size: int | None = None
) -> torch.nn.Module:
    """The eval-mode torch module of a registry model, with ``features(x)`` and
    ``weights_sha256``.

    See :func:`featurebank.export._torch_models.build_torch_model`; torch is imported only when called.
    """
    require_torch(f"building the torch model {name!r}")
    from featurebank.export._torch_models import build_torch_model as _build

    return _build(name, weights=weights, input_size=input_size)


__all__ = [
    "DEFAULT_MODEL", "BatchPlan", "LayerInfo", "ModelEntry", "OnnxInfo", "adopt",
    "build_torch_model", "cache_dir", "cached_path", "describe_tensor", "ensure_exported",
    "export_module", "export_onnx", "featurebank_version", "find_model_by_digest",
    "foreign_model_spec", "get_model_entry", "imagenet_classes", "infer_shapes",
    "input_layout_from_shape", "is_onnx_path", "list_models", "load_onnx", "load_preprocessing",
    "plan_batch", "prepare_foreign", "read_conventions", "read_onnx_metadata", "remember_model",
    "remembered_models", "require_torch", "resolve_conventions", "rewrite_batch",
    "torch_installed",
]
