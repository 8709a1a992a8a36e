"""The layer catalogue of an ONNX graph featurebank did not make, read from the graph itself.

Shapes come from ONNX shape inference run with the stated input size, so dynamic height and
width become numbers. Layouts come from following the graph input's layout through the
graph: a ``Transpose`` permutes it, elementwise and shape-keeping ops pass it on, and ops that
ONNX defines on channel-first data (``Conv``, pools, ``BatchNormalization``) produce NCHW. A
4-D tensor whose layout cannot be followed is listed with layout ``None``: cutting there is
refused until the user states it (``--tensor-layout TENSOR=nchw|nhwc``), never guessed.
"""

from __future__ import annotations

import math

import onnx
from onnx import numpy_helper, shape_inference

from featurebank.errors import FeaturebankError
from featurebank.export._friendly import NAMING_RULE, _logits, friendly_names
from featurebank.export._friendly_tokens import token_entries, token_names, transformer_graph
from featurebank.export._graph_ops import (
    CHANNEL_FIRST,
    GLOBAL_POOLS,
    KEEPS_LAYOUT,
    REDUCE_POOLS,
    WEIGHTED,
    Flow,
    static_tensors,
)
from featurebank.export._layers import LayerInfo

#: Element types of activations that can be cut (cast to float32 before pooling).
_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
           onnx.TensorProto.BFLOAT16}


def input_layout_from_shape(dims: tuple) -> str | None:
    """``NCHW`` or ``NHWC`` when exactly one of axes 1 and 3 has 3 channels, else None."""
    if len(dims) != 4:
        return None
    c_first, c_last = dims[1] == 3, dims[3] == 3
    return "NCHW" if c_first and not c_last else "NHWC" if c_last and not c_first else None


def infer_shapes(proto: onnx.ModelProto, input_dims: list[int] | None = None) -> dict[str, tuple]:
    """Every tensor's inferred shape (-1 where unknown), the graph input fixed to ``input_dims``."""
    return _infer(proto, input_dims)[0]


def _infer(proto: onnx.ModelProto, input_dims: list[int] | None = None):
    """Inferred shapes (as :func:`infer_shapes`) and element types (``TensorProto`` codes)."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    del model.graph.value_info[:]  # stale dynamic shapes from the exporter would win otherwise
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    if input_dims is not None:
        weights = {t.name for t in model.graph.initializer}
        graph_input = next(i for i in model.graph.input if i.name not in weights)
        shape = graph_input.type.tensor_type.shape
        shape.ClearField("dim")
        for d in input_dims:
            shape.dim.add().dim_value = int(d)
    inferred = model
    for data_prop in (True, False):  # data propagation resolves Reshape shapes; not always possible
        try:
            inferred = shape_inference.infer_shapes(model, data_prop=data_prop)
            break
        except Exception:  # noqa: BLE001 - inference is best effort; shapes stay unknown
            continue
    shapes = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    types = {t.name: t.data_type for t in proto.graph.initializer}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
        if vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.dim_value else -1
                                    for d in vi.type.tensor_type.shape.dim)
    return shapes, types


def foreign_catalogue(proto: onnx.ModelProto, input_layout: str | None = None,
                      input_size: tuple[int, int] | None = None,
                      tensor_layouts: dict[str, str] | None = None,
                      measured: dict[str, tuple] | None = None,
                      measured_types: dict[str, int] | None = None) -> list:
    """Cut points of a foreign graph: 4-D activations with their layout, 2-D vectors, names.

    Parameters
    ----------
    proto : onnx.ModelProto
        The graph (not modified).
    input_layout : {'NCHW', 'NHWC'}, optional
        Layout of the graph input; default: what its shape shows (3 channels on one axis).
    input_size : (height, width), optional
        Fixes the input's spatial size for shape inference (dynamic graphs).
    tensor_layouts : dict, optional
        Stated layouts of activations the graph cannot show; a statement that contradicts the
        graph is refused.
    measured : dict, optional
        Shapes (with batch) of the float32 tensors observed by running the graph
        (:func:`featurebank.export._batch.plan_batch`); they win over shape inference, and
        when given, only these tensors are floating-point activations.
    measured_types : dict, optional
        The ONNX element types of the measured tensors.

    Returns
    -------
    list of LayerInfo
        In graph order: every float activation computed from the image by a learned layer
        that is 4-D (with its layout) or 2-D; shape, index and constant tensors are never
        listed. Friendly names (see :func:`featurebank.export._friendly.friendly_names`):
        ``stage.K``, ``head``, ``pool``, ``logits``; a vision transformer's (see
        :mod:`featurebank.export._friendly_tokens`): ``blocks.K`` and ``head`` (``[N, T, C]``
        tokens, layout ``tokens``), ``pool``, ``logits``. Every other entry is named by its
        tensor.
    """
    return catalogue_and_rule(proto, input_layout, input_size, tensor_layouts, measured,
                              measured_types)[0]


def catalogue_and_rule(proto: onnx.ModelProto, input_layout: str | None = None,
                       input_size: tuple[int, int] | None = None,
                       tensor_layouts: dict[str, str] | None = None,
                       measured: dict[str, tuple] | None = None,
                       measured_types: dict[str, int] | None = None) -> tuple[list, int]:
    """:func:`foreign_catalogue` and the naming rule its names need: :data:`NAMING_RULE`
    where that rule names a tensor differently from the rule before it, else the rule before
    (so a fingerprint moves only where a name moved)."""
    graph_input, layout, fixed = _fixed_input(proto, input_layout, input_size)
    shapes, types = _infer(proto, fixed)
    # tensors static inference left without a (full) shape: the run measured them
    measured = measured or {}
    from_run = {t for t, shape in measured.items() if len(shapes.get(t, ())) != len(shape)
                or min(shapes[t][1:], default=1) < 1}
    shapes.update(measured)
    types.update(measured_types or {})
    stated = {t: v.upper() for t, v in (tensor_layouts or {}).items()}
    flow = _follow_layouts(proto, graph_input.name, layout, shapes, stated)
    entries = _cut_entries(proto, flow, shapes, types, measured)
    vit = transformer_graph(proto, measured or shapes)  # None for a CNN
    if vit is None:
        names = friendly_names(proto, entries, shapes, flow)
        rule = NAMING_RULE if names != friendly_names(proto, entries, shapes, flow,
                                                       NAMING_RULE - 1) else NAMING_RULE - 1
    else:  # the token tensors of its blocks are cut points; its patch grid is no stage
        producer = {o: i for i, n in enumerate(proto.graph.node) for o in n.output}
        entries = token_entries(vit, entries, producer)
        names = token_names(vit, _logits(proto, dict(entries), shapes, list(proto.graph.node),
                                         producer))
        rule = NAMING_RULE - 1  # rule 5 names no transformer tensor differently
    return _layer_infos(entries, names, shapes, types, _cumulative_macs(proto, shapes),
                        from_run), rule


def _fixed_input(proto: onnx.ModelProto, input_layout: str | None,
                 input_size: tuple[int, int] | None):
    """The graph input, its layout (stated, else shown by its shape) and the input shape that
    shape inference fixes (a batch of 1 at ``input_size``; None when not known)."""
    weights = {t.name for t in proto.graph.initializer}
    graph_input = next(i for i in proto.graph.input if i.name not in weights)
    in_dims = tuple(d.dim_value if d.dim_value else -1 for d in graph_input.type.tensor_type.shape.dim)
    layout = (input_layout or input_layout_from_shape(in_dims) or "").upper() or None
    fixed = None
    if input_size is not None and layout is not None and len(in_dims) == 4:
        h, w = input_size
        fixed = [1, in_dims[1], h, w] if layout == "NCHW" else [1, h, w, in_dims[3]]
    return graph_input, layout, fixed


def _cut_entries(proto, flow: Flow, shapes, types, measured) -> list[tuple[str, str | None]]:
    """(tensor, layout) of every cut candidate, in graph order: learned float activations
    that are 4-D (layout as followed) or 2-D (``NC``). With ``measured``, only the tensors the
    run measured are floating-point activations."""
    entries: list[tuple[str, str | None]] = []
    for node in proto.graph.node:
        for out in node.output:
            if out not in flow.learned or out in flow.static:
                continue
            if (out not in measured) if measured else \
                    types.get(out, onnx.TensorProto.FLOAT) not in _FLOATS:
                continue
            rank = len(shapes.get(out, ()))
            if rank == 4:
                entries.append((out, flow.tags.get(out)))
            elif rank == 2:
                entries.append((out, "NC"))
    return entries


def _layer_infos(entries, names, shapes, types, macs, from_run: set[str]) -> list[LayerInfo]:
    """One :class:`LayerInfo` per name of each entry (its tensor's name when it has none)."""
    total = max(macs.values(), default=0)
    layers = []
    for tensor, lay in entries:
        share = round(macs[tensor] / total, 6) if total and tensor in macs else None
        dtype = types.get(tensor, onnx.TensorProto.FLOAT)
        for name in names.get(tensor, [tensor]):
            layers.append(LayerInfo(name, tensor, tuple(shapes[tensor][1:]), share, lay,
                                    None if dtype == onnx.TensorProto.FLOAT else
                                    onnx.TensorProto.DataType.Name(dtype).lower(),
                                    measured=tensor in from_run))
    return layers


def _follow_layouts(proto, input_name, layout, shapes, stated) -> Flow:
    """Follow the input's layout through the graph (see the module docstring)."""
    static = static_tensors(proto)  # a Constant, a Shape, a weight cast or transposed
    tags: dict[str, str] = {input_name: layout} if layout else {}
    learned: set[str] = set()
    pools: list[tuple[onnx.NodeProto, str]] = []
    for node in proto.graph.node:
        inputs = [i for i in node.input if i]
        if all(o in static for o in node.output):
            continue
        if node.op_type in WEIGHTED or any(i in learned for i in inputs):
            learned.update(node.output)
        data = [i for i in inputs if i not in static and len(shapes.get(i, ())) == 4]
        tag = None
        if node.op_type in CHANNEL_FIRST:
            tag = "NCHW"
        elif node.op_type == "Transpose" and data and tags.get(data[0]):
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [3, 2, 1, 0])
            tag = "".join(tags[data[0]][p] for p in perm)
        elif node.op_type == "MatMul" and len(data) == 1 and data[0] == inputs[0] \
                and tags.get(data[0]) == "NHWC":  # a dense layer on channels-last maps
            tag = "NHWC"
        elif node.op_type in KEEPS_LAYOUT or (node.op_type in REDUCE_POOLS and _keepdims(node)):
            found = {tags.get(i) for i in data}
            tag = found.pop() if len(found) == 1 else None
        if node.op_type in GLOBAL_POOLS and data and tags.get(data[0]) in ("NCHW", None):
            pools.append((node, data[0]))
        if node.op_type in REDUCE_POOLS and data and tags.get(data[0]):
            spatial = sorted(tags[data[0]].index(a) for a in "HW")
            if _reduce_axes(node, proto, len(shapes[data[0]])) == spatial:
                pools.append((node, data[0]))
        for out in node.output:
            if len(shapes.get(out, ())) != 4:
                continue
            if out in stated:
                if tag and tag != stated[out]:
                    raise FeaturebankError(
                        f"tensor {out!r} is {tag} in the graph (followed from the input), but "
                        f"its layout was stated as {stated[out]}; drop that tensor_layout=...")
                tag = stated[out]
            if tag:
                tags[out] = tag
    unknown = set(stated) - {o for n in proto.graph.node for o in n.output}
    if unknown:
        raise FeaturebankError(f"tensor_layout=... names tensor(s) {sorted(unknown)} that are "
                               f"not in the graph; see 'featurebank layers FILE.onnx' for tensor "
                               "names")
    return Flow(tags, pools, learned, static)


def _keepdims(node: onnx.NodeProto) -> bool:
    return next((a.i for a in node.attribute if a.name == "keepdims"), 1) == 1


def _reduce_axes(node: onnx.NodeProto, proto: onnx.ModelProto, rank: int) -> list[int] | None:
    axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    if axes is None and len(node.input) > 1:  # opset 18: axes is an input
        inits = {t.name: t for t in proto.graph.initializer}
        consts = {n.output[0]: n.attribute[0].t for n in proto.graph.node
                  if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
        source = inits.get(node.input[1]) or consts.get(node.input[1])
        axes = None if source is None else [int(v) for v in numpy_helper.to_array(source).ravel()]
    return None if axes is None else sorted(a % rank for a in axes)


def _cumulative_macs(proto: onnx.ModelProto, shapes: dict[str, tuple]) -> dict[str, int]:
    """Multiply-adds (Conv, Gemm, MatMul) spent up to and including each node's outputs."""
    done, spent = 0, {}
    for node in proto.graph.node:  # ONNX graphs are topologically sorted
        done += _node_macs(node, shapes)
        spent.update(dict.fromkeys(node.output, done))
    return spent


def _node_macs(node: onnx.NodeProto, shapes: dict[str, tuple]) -> int:
    """Multiply-adds of a Conv / Gemm / MatMul node per sample (0 if a shape is unknown)."""
    out = shapes.get(node.output[0], ())
    if node.op_type == "Conv" and len(node.input) > 1:
        per_output = shapes.get(node.input[1], ())[1:]  # weight (Cout, Cin/groups, kh, kw)
    elif node.op_type in ("Gemm", "MatMul"):
        a = shapes.get(node.input[0], ())
        trans_a = any(at.name == "transA" and at.i for at in node.attribute)
        per_output = a[-2:-1] if trans_a else a[-1:]
    else:
        return 0
    dims = [*out[1:], *per_output]
    return math.prod(dims) if dims and all(d > 0 for d in dims) else 0


def describe_tensor(proto: onnx.ModelProto, tensor: str, input_size=None, layout=None) -> str | None:
    """Why ``tensor`` (in the graph but not a catalogue entry) cannot be cut, or None."""
    if tensor not in {o for n in proto.graph.node for o in n.output}:
        return None
    weights = {t.name for t in proto.graph.initializer}
    graph_input = next(i for i in proto.graph.input if i.name not in weights)
    dims = [d.dim_value or -1 for d in graph_input.type.tensor_type.shape.dim]
    fixed = None
    if input_size and layout and len(dims) == 4:
        fixed = [1, dims[1], *input_size] if layout.upper() == "NCHW" else [1, *input_size, dims[3]]
    shape = infer_shapes(proto, fixed).get(tensor)
    shown = "x".join(str(d) for d in shape[1:]) if shape else "unknown"
    return (f"tensor {tensor!r} has {len(shape) if shape else 'an unknown'} dimensions "
            f"(shape {shown} after the batch), is not float32, or is not computed from the "
            f"image by a learned layer (a shape, an index, a constant); featurebank cuts only "
            f"float 4-D activations (NCHW or NHWC, pooled over their spatial axes) and 2-D "
            f"vectors")
