"""The network split at the cut: the frozen trunk below, the trainable top above (torch).

``TopNet`` is what trains: Lite's blocks after the cut, its head conv/BN, and a new linear
classifier, fed the cached maps. ``assemble`` puts the untouched trunk, the tuned top and the
new head back into one :class:`EfficientNetLite` for export.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn


def block_index(layer: str) -> int:
    return int(layer.split(".", 1)[1])


class TopNet(nn.Module):
    """Blocks after ``blocks.K`` + head conv/BN + dropout + a new ``Linear(1280, classes)``.

    BatchNorm keeps the pretrained running statistics (its affine weights still train): a few
    thousand images in batches of 64 estimate them worse than ImageNet did, and a frozen BN
    makes the training forward pass the exported one, bar dropout.
    """

    def __init__(self, base: nn.Module, layer: str, n_classes: int, dropout: float = 0.2):
        super().__init__()
        k = block_index(layer)
        self.cut = layer
        self.input_size = base.input_size  # the size the maps were computed at
        self.blocks = nn.ModuleList(base.blocks[k + 1:])
        self.head = base.head
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(base.head.bn.num_features, n_classes)

    def pooled(self, maps: torch.Tensor) -> torch.Tensor:
        x = maps
        for block in self.blocks:
            x = block(x)
        return self.head(x).mean((2, 3))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pooled(maps)))

    def train(self, mode: bool = True) -> TopNet:
        super().train(mode)
        for m in self.modules():  # frozen statistics, see the class docstring
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def top_parameters(self) -> list[nn.Parameter]:
        return [*self.blocks.parameters(), *self.head.parameters()]


def build_top(model: str, layer: str, n_classes: int, dropout: float,
              input_size: int | None = None) -> tuple[TopNet, str]:
    """A fresh :class:`TopNet` on the pretrained weights (built for ``input_size``), and the
    base weights' SHA-256."""
    from featurebank.export import build_torch_model

    base = build_torch_model(model, input_size=input_size)
    return TopNet(base, layer, n_classes, dropout), base.weights_sha256


def assemble(model: str, top: TopNet) -> nn.Module:
    """The whole classifier: pretrained stem and blocks up to the cut, ``top``'s tuned layers,
    its head as ``classifier``; eval mode, ``features(x)`` like any registry model."""
    from featurebank.export import build_torch_model

    base = build_torch_model(model, input_size=top.input_size)
    k = block_index(top.cut)
    full = type(base)(base.variant, input_size=base.input_size,
                      num_classes=top.classifier.out_features)
    state = {key: v for key, v in base.state_dict().items() if not key.startswith("classifier.")}
    tuned = top.state_dict()
    for key, value in tuned.items():
        if key.startswith("blocks."):
            i, rest = key.split(".", 2)[1:]
            state[f"blocks.{int(i) + k + 1}.{rest}"] = value
        elif key.startswith(("head.", "classifier.")):
            state[key] = value
    full.load_state_dict(state, strict=True)
    full.weights_sha256 = state_sha256(full.state_dict())
    return full.eval()


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names and float32 bytes of a state dict, in name order."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(np.ascontiguousarray(state[key].detach().cpu().numpy()).tobytes())
    return h.hexdigest()
