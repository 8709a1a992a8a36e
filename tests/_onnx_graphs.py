"""Small ONNX image graphs built node by node (no torch): shapes that exporters make and
featurebank must follow. Random weights; the tests compare featurebank's cuts with plain
onnxruntime runs of the same files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def outputs_of(path, tensors: list[str], x: np.ndarray) -> list[np.ndarray]:
    """``tensors`` of the untouched graph at ``path`` for ``x``, fed one image at a time (a
    graph exported at a fixed batch of 1 takes no more)."""
    import onnxruntime as ort

    proto = onnx.load(str(path))
    have = {o.name for o in proto.graph.output}
    proto.graph.output.extend(helper.make_empty_tensor_value_info(t)
                              for t in dict.fromkeys(tensors) if t not in have)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    runs = [session.run(tensors, {name: x[i:i + 1]}) for i in range(len(x))]
    return [np.concatenate([r[k] for r in runs]) for k in range(len(tensors))]


class _Builder:
    """Nodes and weights of one graph, named in order."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: list = []

    def weight(self, name: str, shape: tuple[int, ...], scale: float = 0.2) -> str:
        self.inits.append(numpy_helper.from_array(
            self.rng.normal(0, scale, shape).astype(np.float32), name))
        return name

    def op(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def conv(self, x: str, name: str, cin: int, cout: int, stride: int = 2) -> str:
        w, b = self.weight(f"{name}.w", (cout, cin, 3, 3)), self.weight(f"{name}.b", (cout,), 0.1)
        y = self.op("Conv", [x, w, b], name, pads=[1, 1, 1, 1], strides=[stride, stride])
        return self.op("Relu", [y], f"{name}.relu")

    def classifier(self, x: str, channels: int, classes: int = 5) -> str:
        flat = self.op("Flatten", [self.op("GlobalAveragePool", [x], "gap")], "flat")
        return self.op("Gemm", [flat, self.weight("fc.w", (classes, channels))], "logits",
                       transB=1)

    def save(self, path: Path, inputs: list, classes: int = 5, opset: int = 17) -> Path:
        graph = helper.make_graph(
            self.nodes, "g", inputs,
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
            initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
        return path


def uint8_nhwc(path: Path) -> Path:
    """A graph that takes uint8 NHWC pixels of any height and width (``image``) and normalises
    them itself, then three strided conv stages, a global pool and a classifier: what
    end-to-end and TF-converted embedders look like."""
    b = _Builder(1)
    x = b.op("Cast", ["image"], "pixels.f", to=TensorProto.FLOAT)
    half = numpy_helper.from_array(np.array(127.5, np.float32), "half")
    b.inits.append(half)
    x = b.op("Div", [b.op("Sub", [x, "half"], "centred"), "half"], "scaled")
    x = b.op("Transpose", [x], "nchw", perm=[0, 3, 1, 2])
    x = b.conv(b.conv(b.conv(x, "s1", 3, 8), "s2", 8, 16), "s3", 16, 32)
    b.classifier(x, 32)
    return b.save(path, [helper.make_tensor_value_info("image", TensorProto.UINT8,
                                                       ["N", "H", "W", 3])])


def data_dependent(path: Path) -> Path:
    """A 32 px NCHW graph whose second stage reads a ``Reshape`` to a shape computed through
    float arithmetic on the map's own shape (as tf2onnx leaves shape code): static shape
    inference loses every shape after it, a run does not."""
    b = _Builder(2)
    x = b.conv("x", "s1", 3, 8)
    shape = b.op("Cast", [b.op("Shape", [x], "shape")], "shape.f", to=TensorProto.FLOAT)
    low = b.op("ReduceMin", [x], "low", keepdims=0)  # from the image: no constant to fold
    zero = b.op("Sub", [low, low], "zero")
    shape = b.op("Cast", [b.op("Add", [shape, zero], "shape.f2")], "shape.i", to=TensorProto.INT64)
    x = b.conv(b.op("Reshape", [x, shape], "reshaped"), "s2", 8, 16)
    x = b.op("Relu", [b.op("Add", [b.conv(x, "s2b", 16, 16, stride=1), x], "res")], "res.relu")
    x = b.conv(x, "s3", 16, 32)
    b.classifier(x, 32)
    return b.save(path, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])])
