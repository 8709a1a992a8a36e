"""Recipes for the ONNX files of the conformance table (``python -m benchmarks.zoo``).

Everything is built here from the timm/torchvision module, with torch's exporters and onnx's
own tools (nothing is downloaded), the way such files come to users:

- ``onnx``: ``torch.onnx.export`` (dynamo, opset 18), dynamic batch;
- ``onnx-b1``: the TorchScript exporter (``dynamo=False``), opset 14 (the first with
  attention), a fixed batch of 1 (the
  classic model-zoo file: ``[1, 3, H, W]`` input, a ``Reshape``/``Flatten`` to ``[1, -1]``);
- ``fp16``: ``onnx-b1`` with float16 weights, each followed by a ``Cast`` to float32;
- ``nhwc``: ``onnx-b1`` converted the way TF converters leave graphs: NHWC input, every op
  wrapped in ``Transpose``/``Cast`` pairs (4-D tensors are NHWC between ops);
- ``opaque``: ``onnx-b1`` with every tensor and node renamed ``t<i>``/``n<i>``.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper, shape_inference

VARIANTS = ("onnx", "onnx-b1", "fp16", "nhwc", "opaque")


def build(variant: str, model: torch.nn.Module, size: int, out: Path) -> Path:
    """Write ``variant`` of ``model`` (eval, library module) to ``out``."""
    if variant == "onnx":
        _torch_export(model, size, out, batch=2, opset=18, dynamo=True)
        return out
    base = out.with_name(out.stem.rsplit(".", 1)[0] + ".onnx-b1.onnx")
    if not base.exists():
        _torch_export(model, size, base, batch=1, opset=14, dynamo=False)
    if variant == "onnx-b1":
        return base
    proto = onnx.load(str(base))
    proto = {"fp16": fp16_weights, "nhwc": nhwc_with_transposes, "opaque": opaque_names}[variant](proto)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    return out


def adopt_stating(src: Path, dst: Path, pre, nhwc: bool = False) -> None:
    """``featurebank adopt`` with the library model's conventions stated (its preprocessing
    ``pre``; 0-1 RGB pixels; NCHW input, or NHWC for the ``nhwc`` variant)."""
    from featurebank.export import adopt

    conv = {k: v for k, v in pre.to_dict().items() if k not in ("background",)}
    conv.update(pixel_range=1, channel_order="rgb", layout="nhwc" if nhwc else "nchw")
    conv_file = dst.with_suffix(".json")
    conv_file.write_text(json.dumps(conv))
    adopt(src, dst, conv_file)


def _torch_export(model, size, out: Path, batch: int, opset: int, dynamo: bool) -> None:
    x = torch.zeros(batch, 3, size, size)
    for name in ("torch.onnx", "onnx_ir", "onnxscript", "torch.export"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset,
                                        input_names=["input"], output_names=["output"],
                                        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
            path = Path(tmp) / "m.onnx"
            program.save(str(path), external_data=False)
            onnx.save(onnx.load(str(path)), str(out))
        else:
            torch.onnx.export(model, (x,), str(out), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["output"])


def fp16_weights(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Float weights stored as float16, cast back to float32 where they are used."""
    casts, inits = [], []
    for t in proto.graph.initializer:
        if t.data_type == TensorProto.FLOAT and np.prod(t.dims) > 1:
            half = numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name + ".fp16")
            inits.append(half)
            casts.append(helper.make_node("Cast", [half.name], [t.name], to=TensorProto.FLOAT))
        else:
            inits.append(t)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(inits)
    nodes = casts + list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto


def nhwc_with_transposes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """NHWC input; each op's 4-D inputs Transpose'd to NCHW and Cast, its 4-D outputs back."""
    inferred = shape_inference.infer_shapes(proto)
    rank = {vi.name: len(vi.type.tensor_type.shape.dim)
            for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]}
    consts = {t.name for t in proto.graph.initializer}
    graph_in = proto.graph.input[0]
    dims = [d.dim_value for d in graph_in.type.tensor_type.shape.dim]
    nodes = []
    for i, node in enumerate(proto.graph.node):
        new_inputs = []
        for j, name in enumerate(node.input):
            if name and name not in consts and rank.get(name) == 4:
                tmp = f"{name}__nchw{i}_{j}"
                nodes += [helper.make_node("Transpose", [name], [tmp + "t"], perm=[0, 3, 1, 2]),
                          helper.make_node("Cast", [tmp + "t"], [tmp], to=TensorProto.FLOAT)]
                name = tmp
            new_inputs.append(name)
        outs, back = [], []
        for name in node.output:
            if rank.get(name) == 4 and node.op_type != "Constant":
                outs.append(name + "__nchw")
                back += [helper.make_node("Transpose", [name + "__nchw"], [name + "__t"], perm=[0, 2, 3, 1]),
                         helper.make_node("Cast", [name + "__t"], [name], to=TensorProto.FLOAT)]
            else:
                outs.append(name)
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        del copy.input[:]
        copy.input.extend(new_inputs)
        del copy.output[:]
        copy.output.extend(outs)
        nodes += [copy, *back]
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    graph_in.type.tensor_type.shape.ClearField("dim")
    for d in (dims[0], dims[2], dims[3], dims[1]):
        graph_in.type.tensor_type.shape.dim.add().dim_value = d
    del proto.graph.value_info[:]
    return proto


def opaque_names(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Every tensor (but the initializers' data) and node renamed: nothing says what it is."""
    names: dict[str, str] = {}

    def rename(name: str) -> str:
        if not name:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for t in proto.graph.initializer:
        t.name = rename(t.name)
    for vi in [*proto.graph.input, *proto.graph.output]:
        vi.name = rename(vi.name)
    for i, node in enumerate(proto.graph.node):
        node.name = f"n{i}"
        for field in (node.input, node.output):
            renamed = [rename(n) for n in field]
            del field[:]
            field.extend(renamed)
    del proto.graph.value_info[:]
    return proto
