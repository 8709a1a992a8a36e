"""The tuned classifier as a self-describing ONNX file, built by export's own machinery.

Catalogue, spec and input description are those of any featurebank export, so embed, train,
sweep and serve take the file like any model; ``featurebank.finetune`` adds the lineage (base and
tuned weights SHA-256, the training feature set, the cut, validation accuracy) and the class
names of ``logits``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from featurebank.export._metadata import LayerInfo, featurebank_version
from featurebank.export._onnx_export import (
    INPUT_NAME,
    _AllOutputs,
    _atomic_save,
    _check_writable,
    _trace,
    flops_shares,
)
from featurebank.finetune._tuned import META_FINETUNE
from featurebank.spec import META_INPUT, META_LAYERS, META_SPEC, META_VERSION, ModelSpec


def export_tuned(full: nn.Module, out: Path, base_spec: ModelSpec, lineage: dict[str, Any]) -> ModelSpec:
    """Write ``full`` (an assembled, eval-mode EfficientNetLite) to ``out`` atomically."""
    _check_writable(out)
    pre = base_spec.preprocessing
    spec = ModelSpec(model=f"{base_spec.model}.finetuned", weights_sha256=full.weights_sha256,
                     preprocessing=pre, source="finetune")
    size = pre.input_size
    with torch.no_grad():
        shapes = {k: tuple(v.shape[1:]) for k, v in full.features(torch.zeros(1, 3, *size)).items()}
    names = ["logits", *[n for n in shapes if n != "logits"]]
    shares = flops_shares(full, size)
    proto = _trace(_AllOutputs(full, names), size,
                   [n if n == "logits" else f"layer.{n}" for n in names])
    keep = [o for o in proto.graph.output if o.name == "logits"]
    del proto.graph.output[:]
    proto.graph.output.extend(keep)
    layers = [LayerInfo(n, n if n == "logits" else f"layer.{n}", shapes[n],
                        round(shares.get(n, 1.0), 6)) for n in shapes]
    meta = {
        META_SPEC: json.dumps(spec.to_dict()),
        META_LAYERS: json.dumps([la.to_dict() for la in layers]),
        META_INPUT: json.dumps({"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32",
                                "normalized": True, "shape": ["N", 3, *size]}),
        META_VERSION: featurebank_version(),
        META_FINETUNE: json.dumps({**lineage, "tuned_weights_sha256": full.weights_sha256}),
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "featurebank"
    onnx.checker.check_model(proto)
    _atomic_save(proto, out)
    return spec
