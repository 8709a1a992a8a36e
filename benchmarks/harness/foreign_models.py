"""Foreign ONNX models built by the tests: small torch modules exported in every convention.

Shared by tests/test_foreign.py (parity, refusals), tests/test_foreign_cli.py (the command
line) and benchmarks/foreign_fmnist.py. Importing it imports torch: test modules skip first
when torch is absent.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import torch

from featurebank.export import adopt

nn = torch.nn


class Tiny(nn.Module):
    """Three strided convs and a head; ``nhwc_head`` permutes the last activation to NHWC."""

    def __init__(self, nhwc_input: bool, head: str, size: int):
        super().__init__()
        torch.manual_seed(0)
        self.nhwc_input, self.head = nhwc_input, head
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 16, 3, 2, 1)
        self.c3 = nn.Conv2d(16, 24, 3, 2, 1)
        self.fc = nn.Linear(24 * (size // 8) ** 2 if head == "flatten" else 24, 5)
        with torch.no_grad():  # BN statistics that do something
            self.b1.running_mean.uniform_(-0.5, 0.5)
            self.b1.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        if self.nhwc_input:
            x = x.permute(0, 3, 1, 2)
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.c2(x))
        x = torch.relu(self.c3(x))
        if self.head == "gap":
            pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        elif self.head == "reducemean":  # an NHWC activation pooled by ReduceMean
            x = torch.sigmoid(x.permute(0, 2, 3, 1)) * 2.0
            pooled = x.mean((1, 2))
        else:
            pooled = torch.flatten(x, 1)
        return self.fc(pooled)


@dataclass(frozen=True)
class Convention:
    name: str
    layout: str
    channel_order: str
    pixel_range: int
    mean: tuple
    std: tuple
    head: str
    size: int = 32
    batch: str = "dynamic"  # or "fixed" (1)
    spatial: str = "fixed"  # or "dynamic"
    opaque: bool = False
    head_layout: str = "NCHW"
    flags: dict = field(default_factory=dict)


CONVENTIONS = [
    Convention("nchw-rgb-imagenet-gap", "nchw", "rgb", 1, (0.485, 0.456, 0.406),
               (0.229, 0.224, 0.225), "gap"),
    Convention("nhwc-bgr-255-meanonly-reducemean-opaque-batch1", "nhwc", "bgr", 255,
               (104.0, 117.0, 123.0), (1.0, 1.0, 1.0), "reducemean", batch="fixed",
               opaque=True, head_layout="NHWC"),
    Convention("nchw-rgb-255-flatten-gemm", "nchw", "rgb", 255, (128.0,) * 3, (64.0,) * 3,
               "flatten"),
    Convention("nchw-bgr-dynamic-size-gap", "nchw", "bgr", 1, (0.5,) * 3, (0.25,) * 3, "gap",
               size=40, spatial="dynamic"),
    Convention("nhwc-rgb-dynamic-size-reducemean", "nhwc", "rgb", 255, (127.5,) * 3,
               (127.5,) * 3, "reducemean", size=48, spatial="dynamic", head_layout="NHWC"),
]


def export_module(module, conv: Convention, path) -> None:
    shape = (1, conv.size, conv.size, 3) if conv.layout == "nhwc" else (1, 3, conv.size, conv.size)
    axes = {0: "batch"} if conv.batch == "dynamic" else {}
    if conv.spatial == "dynamic":
        axes.update({1: "h", 2: "w"} if conv.layout == "nhwc" else {2: "h", 3: "w"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.zeros(shape),), str(path), dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": axes, "output": {0: "batch"}} if axes else None)
    if conv.opaque:
        proto = onnx.load(str(path))
        opaque_names(proto)
        onnx.save(proto, str(path))


def opaque_names(proto: onnx.ModelProto) -> None:
    """Rename every tensor to t<N>, as converters from other frameworks leave them."""
    g = proto.graph
    names = {}
    for vi in [*g.input, *g.output]:
        names.setdefault(vi.name, f"t{len(names)}")
    for node in g.node:
        for t in [*node.input, *node.output]:
            if t and t not in {i.name for i in g.initializer}:
                names.setdefault(t, f"t{len(names)}")
    for node in g.node:
        node.input[:] = [names.get(t, t) for t in node.input]
        node.output[:] = [names.get(t, t) for t in node.output]
        node.name = ""
    for vi in [*g.input, *g.output, *g.value_info]:
        vi.name = names.get(vi.name, vi.name)


def conventions_of(conv: Convention) -> dict:
    flags = {"pixel_range": conv.pixel_range, "channel_order": conv.channel_order,
             "mean": ",".join(map(str, conv.mean)), "std": ",".join(map(str, conv.std))}
    if conv.spatial == "dynamic":
        flags["input_size"] = str(conv.size)
    return flags


def model_input(pixels: np.ndarray, conv) -> np.ndarray:
    """What the original graph expects for these RGB uint8 pixels, converted by hand."""
    x = pixels[..., ::-1] if conv.channel_order == "bgr" else pixels
    x = x.astype(np.float32) * np.float32(conv.pixel_range / 255.0)
    x = (x - np.float32(conv.mean)) / np.float32(conv.std)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if conv.layout == "nchw" else x)


def reference(path, tensor: str, pixels: np.ndarray, conv, one_by_one: bool = False) -> np.ndarray:
    """``tensor`` of the untouched original graph, added as an output, for these pixels."""
    proto = onnx.load(str(path))
    if tensor not in {o.name for o in proto.graph.output}:
        proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = model_input(pixels, conv)
    name = session.get_inputs()[0].name
    if one_by_one:  # a graph fixed at batch 1
        return np.concatenate([session.run([tensor], {name: x[i:i + 1]})[0] for i in range(len(x))])
    return session.run([tensor], {name: x})[0]


class ForeignLite(nn.Module):
    """Lite0 taking NHWC, BGR, 0-255 pixels with the mean subtracted (Caffe style), pooled by
    ReduceMean: what a converted third-party classifier looks like."""

    def __init__(self, lite):
        super().__init__()
        self.lite = lite

    def forward(self, x):
        x = x.permute(0, 3, 1, 2).flip(1) / 128.0  # Lite's std is 128/255 on 0-255 pixels
        x = self.lite.stem(x)
        for block in self.lite.blocks:
            x = block(x)
        return self.lite.classifier(self.lite.head(x).mean((2, 3)))


LITE_FLAGS = {"pixel_range": 255, "channel_order": "bgr", "mean": "127,127,127",
              "resize": 254, "interpolation": "bicubic"}
LITE = Convention("lite0-nhwc-bgr-255-meanonly-opaque", "nhwc", "bgr", 255, (127.0,) * 3,
                  (1.0,) * 3, "reducemean", size=224, opaque=True)


def make_foreign(root) -> dict:
    """Every convention exported and adopted under ``root``: name -> (convention, original,
    adopted)."""
    out = {}
    for conv in CONVENTIONS:
        src, dst = root / f"{conv.name}.onnx", root / f"{conv.name}.adopted.onnx"
        export_module(Tiny(conv.layout == "nhwc", conv.head, conv.size), conv, src)
        adopt(src, dst, **conventions_of(conv))
        out[conv.name] = (conv, src, dst)
    return out


def make_foreign_lite(root):
    """The pretrained Lite0 as a foreign file: opaque names, NHWC BGR 0-255, ReduceMean pool."""
    from featurebank.export import build_torch_model

    src = root / "converted_classifier.onnx"
    export_module(ForeignLite(build_torch_model("efficientnet_lite0")), LITE, src)
    return src
