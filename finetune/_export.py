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

import torch
from torch import nn

from featurebank.export import export_module
from featurebank.finetune._tuned import META_FINETUNE
from featurebank.spec import ModelSpec


class FlipAveraged(nn.Module):
    """A classifier whose ``logits`` are the mean of its logits on the image and on its mirror
    (flip test-time augmentation inside the graph); every other layer is the image's own.

    The mirror's pass is a second pass, not a doubled batch, so an extractor cutting the file
    at ``blocks.N`` keeps only the image's pass. ``forward`` is the plain single pass: the
    exporter counts each cut's share of the multiply-adds with it.
    """

    def __init__(self, full: nn.Module):
        super().__init__()
        self.full = full
        self.weights_sha256 = full.weights_sha256
        # the catalogue modules, where the exporter looks for them
        self.stem, self.blocks, self.head, self.classifier = (full.stem, full.blocks, full.head,
                                                              full.classifier)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.full.features(x)
        out["logits"] = (out["logits"] + self.full(torch.flip(x, dims=[3]))) / 2  # NCHW: width
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.full(x)


def export_tuned(full: nn.Module, out: Path, base_spec: ModelSpec, lineage: dict[str, Any],
                 tta_flip: bool = False) -> ModelSpec:
    """Write ``full`` (an assembled, eval-mode EfficientNetLite) to ``out`` atomically; with
    ``tta_flip``, its logits average the image's and its mirror's."""
    if tta_flip:
        full = FlipAveraged(full)
    pre = base_spec.preprocessing
    spec = ModelSpec(model=f"{base_spec.model}.finetuned", weights_sha256=full.weights_sha256,
                     preprocessing=pre, source="finetune")
    export_module(full, spec, out, {
        META_FINETUNE: json.dumps({**lineage, "tuned_weights_sha256": full.weights_sha256})})
    return spec
