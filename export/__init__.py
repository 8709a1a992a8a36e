"""featurebank.export: pretrained CNNs (torch) become self-describing ONNX files.

``import featurebank.export`` does not import torch; only building or exporting a model does.
Every name loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featurebank.lazy import attach

# public name -> the module that defines it
_LAZY = {
    "BatchPlan": "featurebank.export._batch",
    "DEFAULT_MODEL": "featurebank.spec",
    "LayerInfo": "featurebank.export._metadata",
    "ModelEntry": "featurebank.export._registry",
    "OnnxInfo": "featurebank.export._metadata",
    "PublishedWeights": "featurebank.export._published",
    "adopt": "featurebank.export._adopt",
    "build_torch_model": "featurebank.export._guarded",
    "cache_dir": "featurebank.export._cache",
    "cached_path": "featurebank.export._cache",
    "describe_tensor": "featurebank.export._catalogue",
    "ensure_exported": "featurebank.export._cache",
    "export_module": "featurebank.export._guarded",
    "export_onnx": "featurebank.export._guarded",
    "featurebank_version": "featurebank.export._metadata",
    "find_model_by_digest": "featurebank.export._adopt",
    "foreign_model_spec": "featurebank.export._metadata",
    "get_model_entry": "featurebank.export._registry",
    "imagenet_classes": "featurebank.export._labels",
    "infer_shapes": "featurebank.export._catalogue",
    "input_layout_from_shape": "featurebank.export._catalogue",
    "is_onnx_path": "featurebank.paths",
    "list_models": "featurebank.export._registry",
    "load_onnx": "featurebank.export._metadata",
    "load_preprocessing": "featurebank.export._metadata",
    "plan_batch": "featurebank.export._batch",
    "prepare_foreign": "featurebank.export._batch",
    "read_conventions": "featurebank.export._metadata",
    "read_onnx_metadata": "featurebank.export._metadata",
    "register_weights": "featurebank.export._published",
    "remember_model": "featurebank.export._adopt",
    "remembered_models": "featurebank.export._adopt",
    "require_torch": "featurebank.export._registry",
    "resolve_conventions": "featurebank.export._adopt",
    "rewrite_batch": "featurebank.export._batch",
    "torch_installed": "featurebank.export._registry",
    "unregister_weights": "featurebank.export._published",
}

__all__ = [
    "DEFAULT_MODEL", "BatchPlan", "LayerInfo", "ModelEntry", "OnnxInfo", "PublishedWeights", "adopt",
    "build_torch_model", "cache_dir", "cached_path", "describe_tensor", "ensure_exported",
    "export_module", "export_onnx", "featurebank_version", "find_model_by_digest",
    "foreign_model_spec", "get_model_entry", "imagenet_classes", "infer_shapes",
    "input_layout_from_shape", "is_onnx_path", "list_models", "load_onnx", "load_preprocessing",
    "plan_batch", "prepare_foreign", "read_conventions", "read_onnx_metadata", "remember_model",
    "register_weights", "remembered_models", "require_torch", "resolve_conventions",
    "rewrite_batch", "torch_installed", "unregister_weights",
]

if TYPE_CHECKING:
    from featurebank.export._adopt import (
        adopt,
        find_model_by_digest,
        remember_model,
        remembered_models,
        resolve_conventions,
    )
    from featurebank.export._batch import (
        BatchPlan,
        plan_batch,
        prepare_foreign,
        rewrite_batch,
    )
    from featurebank.export._cache import (
        cache_dir,
        cached_path,
        ensure_exported,
    )
    from featurebank.export._catalogue import (
        describe_tensor,
        infer_shapes,
        input_layout_from_shape,
    )
    from featurebank.export._guarded import (
        build_torch_model,
        export_module,
        export_onnx,
    )
    from featurebank.export._labels import (
        imagenet_classes,
    )
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
    from featurebank.export._published import (
        PublishedWeights,
        register_weights,
        unregister_weights,
    )
    from featurebank.export._registry import (
        ModelEntry,
        get_model_entry,
        list_models,
        require_torch,
        torch_installed,
    )
    from featurebank.paths import is_onnx_path
    from featurebank.spec import DEFAULT_MODEL

__getattr__, __dir__ = attach(__name__, _LAZY)
