"""Variants of an ONNX graph made with onnx's tools, the way converters rewrite graphs.

- :func:`convert_like_a_converter`: what a TensorFlow/Caffe converter leaves (NHWC BGR input,
  Transposes around every channel-first op, Cast pairs, explicit Pads, separate bias Adds,
  Identities, opaque names);
- :func:`to_float16`: float16 weights and activations with float32 input and output.

Used by ``classic_cnns`` (tests/test_foreign_classics.py and benchmarks).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from benchmarks.harness.foreign_models import opaque_names

_CHANNEL_FIRST = {"Conv", "BatchNormalization", "MaxPool", "AveragePool", "GlobalAveragePool"}


def convert_like_a_converter(proto: onnx.ModelProto) -> onnx.ModelProto:
    """What a TensorFlow/Caffe converter leaves: NHWC BGR 0-255 input (mean subtracted by
    the caller), every activation NHWC with Transposes around each channel-first op, Cast pairs,
    opaque names. Every original tensor keeps its values (in NHWC) under its old name before
    renaming, so the graph computes exactly what the original does."""
    g = proto.graph
    old_input = g.input[0].name
    hw = [d.dim_value for d in g.input[0].type.tensor_type.shape.dim][2:]  # from NCHW
    nodes = [
        helper.make_node("Gather", ["x_bgr", "pre_bgr_idx"], ["x_rgb"], axis=3),
        helper.make_node("Mul", ["x_rgb", "pre_inv255"], ["x_unit"]),
        helper.make_node("Add", ["x_unit", "pre_mean_unit"], [old_input]),  # an NHWC tensor
    ]
    inits = [onnx.numpy_helper.from_array(np.array([2, 1, 0], np.int64), "pre_bgr_idx"),
             onnx.numpy_helper.from_array(np.float32(1 / 255), "pre_inv255"),
             onnx.numpy_helper.from_array(np.float32([123, 117, 104]) / 255, "pre_mean_unit")]
    weights = {t.name: t for t in g.initializer}
    rank4 = _rank4(proto)
    for k, node in enumerate(g.node):
        if node.op_type == "Concat" and all(i in rank4 for i in node.input):
            new = onnx.NodeProto()
            new.CopyFrom(node)  # the channel axis of NHWC maps, then an Identity as tf2onnx leaves
            next(a for a in new.attribute if a.name == "axis").i = 3
            new.output[0] = f"{node.output[0]}__concat"
            nodes += [new, helper.make_node("Identity", [new.output[0]], [node.output[0]])]
        elif node.op_type in _CHANNEL_FIRST or node.op_type in ("Reshape", "Flatten"):
            nodes += _channel_first(node, k, rank4, weights, inits)
        elif node.op_type in ("Relu", "Add", "Clip"):
            to = TensorProto.DOUBLE if node.op_type == "Relu" else TensorProto.FLOAT
            new = onnx.NodeProto()
            new.CopyFrom(node)
            for j, name in enumerate(node.input[:2 if node.op_type == "Add" else 1]):
                nodes.append(helper.make_node("Cast", [name], [f"{name}__cast{k}"], to=to))
                new.input[j] = f"{name}__cast{k}"
            new.output[0] = f"{node.output[0]}__pre"
            nodes += [new, helper.make_node("Cast", [new.output[0]], [node.output[0]],
                                            to=TensorProto.FLOAT)]
        else:
            nodes.append(node)
    graph = helper.make_graph(
        nodes, "converted", [helper.make_tensor_value_info("x_bgr", TensorProto.FLOAT,
                                                           [1, *hw, 3])],
        list(g.output), initializer=[t for t in [*g.initializer, *inits]
                                     if any(t.name in n.input for n in nodes)])
    model = helper.make_model(graph, opset_imports=proto.opset_import,
                              producer_name="converter-like")
    model.ir_version = proto.ir_version
    onnx.checker.check_model(model)
    opaque_names(model)
    return model


def _channel_first(node, k, rank4, weights, inits) -> list:
    """``node`` run on NCHW copies of its NHWC inputs, its outputs transposed back to NHWC.

    As TensorFlow converters leave them, a strided conv reads an explicit Pad of the NHWC map
    and a conv's bias is a separate NHWC Add of a float64 constant cast to float32."""
    new = onnx.NodeProto()
    new.CopyFrom(node)
    nodes = []
    for j, name in enumerate(node.input):
        if name not in rank4 or name in weights:
            continue
        if node.op_type == "Conv" and _strided_padded(node):
            pads = next(a for a in new.attribute if a.name == "pads")
            top, left, bottom, right = pads.ints
            pads.ints[:] = [0, 0, 0, 0]
            inits.append(onnx.numpy_helper.from_array(
                np.array([0, top, left, 0, 0, bottom, right, 0], np.int64), f"pre_pads{k}"))
            nodes.append(helper.make_node("Pad", [name, f"pre_pads{k}"], [f"pad{k}"]))
            name = f"pad{k}"
        nodes.append(helper.make_node("Transpose", [name], [f"{name}__nchw{k}"], perm=[0, 3, 1, 2]))
        new.input[j] = f"{name}__nchw{k}"
    bias = None
    if node.op_type == "Conv" and len(node.input) > 2 and node.input[2] in weights:
        bias = onnx.numpy_helper.to_array(weights[node.input[2]]).astype(np.float64)
        del new.input[2]
        inits.append(onnx.numpy_helper.from_array(bias.reshape(1, 1, 1, -1), f"pre_bias{k}"))
        nodes.append(helper.make_node("Cast", [f"pre_bias{k}"], [f"bias{k}"], to=TensorProto.FLOAT))
    outs = [o for o in node.output if o in rank4]
    for o in outs:
        new.output[list(node.output).index(o)] = f"{o}__nchw"
    nodes.append(new)
    for o in outs:
        after = f"{o}__nobias" if bias is not None else o
        nodes.append(helper.make_node("Transpose", [f"{o}__nchw"], [after], perm=[0, 2, 3, 1]))
        if bias is not None:
            nodes.append(helper.make_node("Add", [after, f"bias{k}"], [o]))
    return nodes


def _strided_padded(node: onnx.NodeProto) -> bool:
    attrs = {a.name: list(a.ints) for a in node.attribute}
    return any(v > 1 for v in attrs.get("strides", [])) and any(attrs.get("pads", []))


def to_float16(proto: onnx.ModelProto, keep_io_types: bool = True) -> onnx.ModelProto:
    """Float16 weights and activations with float32 input and output (as converters'
    ``keep_io_types`` leave a graph: one Cast after the input, one before each output), or
    float16 input and outputs too."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    g = model.graph
    for t in g.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(onnx.numpy_helper.from_array(
                onnx.numpy_helper.to_array(t).astype(np.float16), t.name))
    for node in g.node:
        for a in node.attribute:
            if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(onnx.numpy_helper.from_array(
                    onnx.numpy_helper.to_array(a.t).astype(np.float16)))
        if node.op_type == "Cast":
            next(a for a in node.attribute if a.name == "to").i = TensorProto.FLOAT16
    if not keep_io_types:
        for vi in [g.input[0], *g.output]:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT16
        del g.value_info[:]
        onnx.checker.check_model(model)
        return model
    source, outputs = g.input[0].name, [o.name for o in g.output]
    renamed = {source: f"{source}__f16", **{o: f"{o}__f16" for o in outputs}}
    for node in g.node:
        node.input[:] = [renamed.get(i, i) for i in node.input]
        node.output[:] = [renamed.get(o, o) for o in node.output]
    nodes = [helper.make_node("Cast", [source], [renamed[source]], to=TensorProto.FLOAT16),
             *g.node, *(helper.make_node("Cast", [renamed[o]], [o], to=TensorProto.FLOAT)
                        for o in outputs)]
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    onnx.checker.check_model(model)
    return model


def _rank4(proto: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(proto)
    return {vi.name for vi in [*inferred.graph.input, *inferred.graph.value_info]
            if len(vi.type.tensor_type.shape.dim) == 4}
