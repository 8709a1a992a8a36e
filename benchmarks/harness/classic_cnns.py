"""Small CNNs shaped like the classics, exported as model zoos and converters leave them.

Each family (ResNet, SqueezeNet, DenseNet, MobileNetV2) is a few-block torch module exported at
a fixed batch of 1 with a ``Reshape`` to ``[1, -1]`` before the classifier, as model-zoo files
are. Variants are made from that graph with onnx's tools, the way converters rewrite graphs
(``onnx_variants``):

- ``fixed``: the torch export as it is (NCHW, RGB, 0-1);
- ``dynamic``: exported with a dynamic batch axis (the baseline);
- ``fp16``: float16 weights and activations, float32 input and output (``keep_io_types``);
- ``converted``: NHWC BGR 0-255 input (the graph transposes and reorders it itself), every
  channel-first op wrapped in Transposes so every activation is NHWC, float64 Cast pairs around
  each ReLU and float32 Cast pairs around each Add, NHWC Concats followed by an Identity, an
  explicit Pad before each strided conv, conv biases as NHWC Adds of a float64 constant cast
  to float32, every tensor renamed ``t<N>``.

Each family names the module scopes whose last output is a stage (``STAGES``): the test reads
those tensors from the torch export and checks that the catalogue's ``stage.K`` of every variant
holds the same values. Shared by tests/test_foreign_classics.py and benchmarks.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from benchmarks.harness.onnx_variants import convert_like_a_converter, to_float16

nn = torch.nn
SIZE = 64  # input side: stages at 32, 16, 8 (and 4)
CLASSES = 10


class _Net(nn.Module):
    """The classifier end shared by the families: pool, a batch-1 Reshape, a Linear."""

    def head(self, x):
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).reshape(1, -1))


def _bn_stats(module: nn.Module) -> nn.Module:
    """Random BatchNorm statistics, so folding them is visible."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return module.eval()


class Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNetish(_Net):
    STAGES = ("/stem_act", "/layer1/layer1.1/", "/layer2/layer2.1/", "/layer3/layer3.1/")

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8))
        self.stem_act = nn.ReLU()
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(Basic(8, 8, 1), Basic(8, 8, 1))
        self.layer2 = nn.Sequential(Basic(8, 16, 2), Basic(16, 16, 1))
        self.layer3 = nn.Sequential(Basic(16, 24, 2), Basic(24, 24, 1))
        self.fc = nn.Linear(24, CLASSES)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.pool(self.stem_act(self.stem(x))))))
        return self.head(x)


class Fire(nn.Module):
    def __init__(self, cin, squeeze, expand):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.e1, self.e3 = nn.Conv2d(squeeze, expand, 1), nn.Conv2d(squeeze, expand, 3, 1, 1)

    def forward(self, x):
        s = torch.relu(self.squeeze(x))
        return torch.cat([torch.relu(self.e1(s)), torch.relu(self.e3(s))], 1)


class SqueezeNetish(nn.Module):
    """SqueezeNet: fire modules, then a classifier conv whose map is pooled into the logits."""

    STAGES = ("/conv1_act", "/fire3/", "/fire5/")

    def __init__(self):
        super().__init__()
        self.conv1, self.conv1_act = nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU()
        self.fire2, self.fire3 = Fire(16, 4, 8), Fire(16, 4, 8)
        self.fire4, self.fire5 = Fire(16, 6, 12), Fire(24, 6, 12)
        self.classifier = nn.Conv2d(24, CLASSES, 1)

    def forward(self, x):
        x = nn.functional.max_pool2d(self.conv1_act(self.conv1(x)), 3, 2, 1, ceil_mode=True)
        x = self.fire3(self.fire2(x))
        x = self.fire5(self.fire4(nn.functional.max_pool2d(x, 3, 2, 1, ceil_mode=True)))
        x = torch.relu(self.classifier(x))
        return nn.functional.adaptive_avg_pool2d(x, 1).reshape(1, -1)


class DenseBlock(nn.Module):
    def __init__(self, cin, growth, layers, incremental=False):
        super().__init__()
        self.incremental = incremental
        self.layers = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(cin + k * growth), nn.ReLU(),
                          nn.Conv2d(cin + k * growth, growth, 3, 1, 1, bias=False))
            for k in range(layers))

    def forward(self, x):
        if self.incremental:  # Caffe's way: each layer's map is appended to one growing map
            for layer in self.layers:
                x = torch.cat([x, layer(x)], 1)
            return x
        features = [x]
        for layer in self.layers:  # torchvision's way: every layer reads all earlier maps
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


class DenseNetish(nn.Module):
    """DenseNet: dense blocks in torchvision's and in Caffe's form, and Caffe's classifier: a
    1x1 conv on the pooled map, then a Softmax. The last stage ends in the norm + ReLU before
    the pool (timm's DenseNet ``features.norm5``), not at the concatenation before it."""

    STAGES = ("/stem_act", "/block1/", "/block2/", "/norm/")

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8))
        self.stem_act = nn.ReLU()
        self.block1 = DenseBlock(8, 4, 3)  # 20 channels at 16x16
        self.trans1 = nn.Sequential(nn.BatchNorm2d(20), nn.ReLU(), nn.Conv2d(20, 10, 1),
                                    nn.AvgPool2d(2))
        self.block2 = DenseBlock(10, 4, 3, incremental=True)  # 22 channels at 8x8
        self.trans2 = nn.Sequential(nn.BatchNorm2d(22), nn.ReLU(), nn.Conv2d(22, 11, 1),
                                    nn.AvgPool2d(2))
        self.block3 = DenseBlock(11, 4, 2)  # 19 channels at 4x4
        self.norm = nn.Sequential(nn.BatchNorm2d(19), nn.ReLU())
        self.fc = nn.Conv2d(19, CLASSES, 1)

    def forward(self, x):
        x = nn.functional.max_pool2d(self.stem_act(self.stem(x)), 3, 2, 1)
        x = self.block3(self.trans2(self.block2(self.trans1(self.block1(x)))))
        x = self.fc(nn.functional.adaptive_avg_pool2d(self.norm(x), 1))
        return torch.softmax(x.reshape(1, -1), 1)


class Inverted(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        mid = cin * expand
        layers = [] if expand == 1 else [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid),
                                         nn.ReLU6()]
        layers += [nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid),
                   nn.ReLU6(), nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetish(_Net):
    """MobileNetV2: inverted residuals whose wide expansion feeds the next stride; the last
    resolution ends in a block without a shortcut (MobileNetV2's 320-channel block), whose
    linear projection is the stage's output (naming rule 4; rule 3 took the residual before)."""

    STAGES = ("/blocks/blocks.0/", "/blocks/blocks.2/", "/blocks/blocks.5/")

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU6())
        self.blocks = nn.Sequential(Inverted(8, 6, 1, 1), Inverted(6, 12, 2, 4),
                                    Inverted(12, 12, 1, 4), Inverted(12, 16, 2, 4),
                                    Inverted(16, 16, 1, 4), Inverted(16, 20, 1, 4))
        self.conv_head = nn.Sequential(nn.Conv2d(20, 48, 1, bias=False), nn.BatchNorm2d(48),
                                       nn.ReLU6())
        self.fc = nn.Linear(48, CLASSES)

    def forward(self, x):
        return self.head(self.conv_head(self.blocks(self.stem(x))))


class LayerNorm2d(nn.LayerNorm):
    """ConvNeXt's channel LayerNorm on NCHW maps: permute to NHWC, normalise, permute back."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class NeXtBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, 1, 3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x):
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))  # NHWC: LayerNorm and Linear on C
        y = self.gamma * self.fc2(nn.functional.gelu(self.fc1(y)))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtish(_Net):
    """ConvNeXt: NHWC LayerNorms and Linears inside NCHW blocks (not converted: its NHWC
    stretches are not NCHW maps a converter would transpose)."""

    STAGES = ("/stage1/stage1.1/", "/stage2/stage2.1/", "/stage3/stage3.1/")
    CONVERTIBLE = False

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 4, 4), LayerNorm2d(8))
        self.stage1 = nn.Sequential(NeXtBlock(8), NeXtBlock(8))
        self.down2 = nn.Sequential(LayerNorm2d(8), nn.Conv2d(8, 16, 2, 2))
        self.stage2 = nn.Sequential(NeXtBlock(16), NeXtBlock(16))
        self.down3 = nn.Sequential(LayerNorm2d(16), nn.Conv2d(16, 24, 2, 2))
        self.stage3 = nn.Sequential(NeXtBlock(24), NeXtBlock(24))
        self.fc = nn.Linear(24, CLASSES)

    def forward(self, x):
        x = self.stage2(self.down2(self.stage1(self.stem(x))))
        return self.head(self.stage3(self.down3(x)))


FAMILIES = {"resnet": ResNetish, "squeezenet": SqueezeNetish, "densenet": DenseNetish,
            "mobilenet": MobileNetish, "convnext": ConvNeXtish}
#: What ``featurebank adopt`` is told about each variant.
FLAGS = {"fixed": {"pixel_range": 1, "channel_order": "rgb"},
         "dynamic": {"pixel_range": 1, "channel_order": "rgb"},
         "converted": {"pixel_range": 255, "channel_order": "bgr", "mean": "104,117,123"},
         "fp16": {"pixel_range": 1, "channel_order": "rgb"}}


@dataclass
class Classic:
    """One exported variant: where it is, how to feed it, which tensors are its stages."""

    family: str
    variant: str
    path: Path
    flags: dict
    stage_scopes: tuple[str, ...]
    torch_path: Path  # the fixed-batch torch export the stages are read from

    def to_torch_input(self, pixels: np.ndarray) -> np.ndarray:
        """The torch export's input (NCHW RGB 0-1) for uint8 RGB NHWC pixels."""
        return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255)

    def model_input(self, pixels: np.ndarray) -> np.ndarray:
        """This variant's input for uint8 RGB NHWC pixels, converted by hand."""
        if self.variant != "converted":  # fp16 takes float32 and casts it itself
            return self.to_torch_input(pixels)
        return np.ascontiguousarray(pixels[..., ::-1].astype(np.float32)
                                    - np.float32([104, 117, 123]))


def export(module: nn.Module, path: Path, dynamic: bool = False) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_bn_stats(module), (torch.zeros(1, 3, SIZE, SIZE),), str(path),
                          dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}
                          if dynamic else None)


def stage_tensors(proto: onnx.ModelProto, scopes) -> list[str]:
    """The last output of the nodes under each module scope (a stage's expected tensor)."""
    return [[n.output[0] for n in proto.graph.node if n.name.startswith(s)][-1] for s in scopes]


def make_classics(root: Path, families=tuple(FAMILIES),
                  variants=("fixed", "converted")) -> list[Classic]:
    """Export the families in the variants under ``root`` (``dynamic`` on request: it differs
    from ``fixed`` only in its declared batch axis)."""
    out = []
    for family in families:
        torch.manual_seed(0)
        module = FAMILIES[family]()
        fixed = root / f"{family}.fixed.onnx"
        export(module, fixed)
        for variant in variants:
            if variant == "converted" and not getattr(module, "CONVERTIBLE", True):
                continue
            path = root / f"{family}.{variant}.onnx"
            if variant == "dynamic":
                export(module, path, dynamic=True)
            elif variant == "converted":
                onnx.save(convert_like_a_converter(onnx.load(str(fixed))), str(path))
            elif variant == "fp16":
                onnx.save(to_float16(onnx.load(str(fixed))), str(path))
            out.append(Classic(family, variant, path if variant != "fixed" else fixed,
                               FLAGS[variant], module.STAGES, fixed))
    return out
