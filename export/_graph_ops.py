"""ONNX op families the catalogue reasons with, and what following a graph's data finds
(shared by ``_catalogue`` and ``_friendly``, so neither imports the other)."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

#: Ops that ONNX defines on channel-first data: their 4-D output is NCHW by definition.
CHANNEL_FIRST = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool",
                  "GlobalMaxPool", "LpPool", "GlobalLpPool", "InstanceNormalization", "LRN",
                  "BatchNormalization", "QLinearConv", "ConvInteger"}
#: Ops whose 4-D output keeps the layout of their 4-D inputs (elementwise, merges, resampling).
KEEPS_LAYOUT = {"Relu", "Clip", "Add", "Sub", "Mul", "Div", "Sigmoid", "HardSigmoid",
                 "HardSwish", "LeakyRelu", "PRelu", "Elu", "Selu", "Gelu", "Tanh", "Erf", "Pow",
                 "Sqrt", "Max", "Min", "Neg", "Abs", "Exp", "Log", "Softplus", "Softsign", "Mish",
                 "Sum", "Mean", "Identity", "Cast", "Dropout", "Concat", "Slice", "Split", "Pad",
                 "Resize", "Upsample", "Where", "Celu", "ThresholdedRelu", "Round", "Floor",
                 "Ceil", "Reciprocal", "Swish",
                 # normalisations that leave every value where it is (ConvNeXt's LayerNorm on
                 # NHWC maps normalises over C; the axes keep their meaning)
                 "LayerNormalization", "GroupNormalization", "LpNormalization",
                 "MeanVarianceNormalization", "Softmax", "LogSoftmax"}
WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul", "QLinearConv", "ConvInteger",
             "MatMulInteger", "QLinearMatMul"}
REDUCE_POOLS = {"ReduceMean", "ReduceMax"}
GLOBAL_POOLS = {"GlobalAveragePool", "GlobalMaxPool"}
FLATTENS = {"Flatten", "Reshape", "Squeeze"}
#: Ops whose output describes a tensor's shape: index data, never an activation.
SHAPE_OPS = {"Shape", "Size"}


@dataclass
class Flow:
    """What following the data through a graph found.

    ``tags``: layout (axis letters, e.g. ``NHWC``) of each 4-D tensor whose layout is known;
    ``pools``: the global pools (node, pooled input), in graph order; ``learned``: tensors
    computed from the image through a weighted op; ``static``: constants, shapes and whatever
    is computed from them alone (never activations).
    """

    tags: dict[str, str]
    pools: list[tuple[onnx.NodeProto, str]]
    learned: set[str]
    static: set[str]


def static_tensors(proto: onnx.ModelProto) -> set[str]:
    """Constants, shapes and whatever is computed from them alone: never image-dependent
    values (a weight cast or transposed by the graph, a shape, an index)."""
    static = {t.name for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type in SHAPE_OPS or all(i in static for i in node.input if i):
            static.update(node.output)
    return static
