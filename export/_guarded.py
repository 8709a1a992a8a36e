"""The torch entry points of the export stage, each checking for torch first: without the
``torch`` extra they raise the one :func:`require_torch` message instead of an ImportError."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurebank.export._registry import require_torch
from featurebank.spec import ModelSpec

if TYPE_CHECKING:  # annotations only: importing export must not import torch
    import torch


def export_onnx(
    model: str, out: str | Path, weights: str | Path | None = None, input_size: int | None = None,
    transform: dict[str, Any] | None = None,
) -> ModelSpec:
    """Export a registry model to a self-describing ONNX file, atomically.

    See :func:`featurebank.export._onnx_export.export_onnx`; torch is imported only when this is called.
    """
    require_torch(f"exporting {model!r}")
    from featurebank.export._onnx_export import export_onnx as _export

    return _export(model, out, weights=weights, input_size=input_size, transform=transform)


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
