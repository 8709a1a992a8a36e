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

from torch import nn

from featurebank.export import export_module
from featurebank.finetune._tuned import META_FINETUNE
from featurebank.spec import ModelSpec


def export_tuned(full: nn.Module, out: Path, base_spec: ModelSpec, lineage: dict[str, Any]) -> ModelSpec:
    """Write ``full`` (an assembled, eval-mode EfficientNetLite) to ``out`` atomically."""
    pre = base_spec.preprocessing
    spec = ModelSpec(model=f"{base_spec.model}.finetuned", weights_sha256=full.weights_sha256,
                     preprocessing=pre, source="finetune")
    export_module(full, spec, out, {
        META_FINETUNE: json.dumps({**lineage, "tuned_weights_sha256": full.weights_sha256})})
    return spec
