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
from featurebank.export._layers import LayerInfo

#: Ops that ONNX defines on channel-first data: their 4-D output is NCHW by definition.
_CHANNEL_FIRST = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool",
                  "GlobalMaxPool", "LpPool", "GlobalLpPool", "InstanceNormalization", "LRN",
                  "BatchNormalization", "QLinearConv", "ConvInteger"}
#: Ops whose 4-D output keeps the layout of their 4-D inputs (elementwise, merges, resampling).
_KEEPS_LAYOUT = {"Relu", "Clip", "Add", "Sub", "Mul", "Div", "Sigmoid", "HardSigmoid",
                 "HardSwish", "LeakyRelu", "PRelu", "Elu", "Selu", "Gelu", "Tanh", "Erf", "Pow",
                 "Sqrt", "Max", "Min", "Neg", "Abs", "Exp", "Log", "Softplus", "Softsign", "Mish",
                 "Sum", "Mean", "Identity", "Cast", "Dropout", "Concat", "Slice", "Split", "Pad",
                 "Resize", "Upsample", "Where", "Celu", "ThresholdedRelu", "Round", "Floor"}
_WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul", "QLinearConv", "ConvInteger",
             "MatMulInteger", "QLinearMatMul"}
_REDUCE_POOLS = {"ReduceMean", "ReduceMax"}
_GLOBAL_POOLS = {"GlobalAveragePool", "GlobalMaxPool"}
_FLATTENS = {"Flatten", "Reshape", "Squeeze"}


def input_layout_from_shape(dims: tuple) -> str | None:
    """``NCHW`` or ``NHWC`` when exactly one of axes 1 and 3 has 3 channels, else None."""
    if len(dims) != 4:
        return None
    c_first, c_last = dims[1] == 3, dims[3] == 3
    return "NCHW" if c_first and not c_last else "NHWC" if c_last and not c_first else None


def infer_shapes(proto: onnx.ModelProto, input_dims: list[int] | None = None) -> dict[str, tuple]:
    """Every tensor's inferred shape (-1 where unknown), the graph input fixed to ``input_dims``."""
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
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.dim_value else -1
                                    for d in vi.type.tensor_type.shape.dim)
    return shapes


def foreign_catalogue(proto: onnx.ModelProto, input_layout: str | None = None,
                      input_size: tuple[int, int] | None = None,
                      tensor_layouts: dict[str, str] | None = None,
                      measured: dict[str, tuple] | None = None) -> list:
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
        Shapes (with batch) observed by running the graph, for tensors inference cannot size.

    Returns
    -------
    list of LayerInfo
        In graph order. Friendly names: ``stage.K`` (the output of the K-th spatial resolution
        stage, see :func:`_stage_outputs`), ``head`` (the input of the last global pool),
        ``pool`` (the pooled vector), ``logits`` (the classifier output); every other entry is
        named by its tensor.
    """
    weights = {t.name for t in proto.graph.initializer}
    graph_input = next(i for i in proto.graph.input if i.name not in weights)
    in_dims = tuple(d.dim_value if d.dim_value else -1 for d in graph_input.type.tensor_type.shape.dim)
    layout = (input_layout or input_layout_from_shape(in_dims) or "").upper() or None
    fixed = None
    if input_size is not None and layout is not None and len(in_dims) == 4:
        h, w = input_size
        fixed = [1, in_dims[1], h, w] if layout == "NCHW" else [1, h, w, in_dims[3]]
    shapes = infer_shapes(proto, fixed)
    shapes.update(measured or {})
    stated = {t: v.upper() for t, v in (tensor_layouts or {}).items()}
    tags, pools, learned = _follow_layouts(proto, graph_input.name, layout, shapes, stated)
    macs = _cumulative_macs(proto, shapes)
    total = max(macs.values(), default=0)

    entries: list[tuple[str, str]] = []  # (tensor, layout) of every cut candidate, graph order
    for node in proto.graph.node:
        for out in node.output:
            rank = len(shapes.get(out, ()))
            if out in learned and rank == 4:
                entries.append((out, tags.get(out)))
            elif out in learned and rank == 2:
                entries.append((out, "NC"))
    names = _friendly_names(proto, entries, shapes, pools)
    layers = []
    for tensor, lay in entries:
        share = round(macs[tensor] / total, 6) if total and tensor in macs else None
        for name in names.get(tensor, [tensor]):
            layers.append(LayerInfo(name, tensor, tuple(shapes[tensor][1:]), share, lay))
    return layers


def _follow_layouts(proto, input_name, layout, shapes, stated):
    """Layout tag (axis letters, e.g. ``NHWC``) of each 4-D tensor, the global pools found
    (node, pooled input) and the tensors computed by a weighted op (learned activations)."""
    consts = {t.name for t in proto.graph.initializer}
    tags: dict[str, str] = {input_name: layout} if layout else {}
    learned: set[str] = set()
    pools: list[tuple[onnx.NodeProto, str]] = []
    for node in proto.graph.node:
        if node.op_type == "Constant":
            consts.update(node.output)
            continue
        if node.op_type in _WEIGHTED or any(i in learned for i in node.input):
            learned.update(node.output)
        data = [i for i in node.input if i and i not in consts and len(shapes.get(i, ())) == 4]
        tag = None
        if node.op_type in _CHANNEL_FIRST:
            tag = "NCHW"
        elif node.op_type == "Transpose" and data and tags.get(data[0]):
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [3, 2, 1, 0])
            tag = "".join(tags[data[0]][p] for p in perm)
        elif node.op_type in _KEEPS_LAYOUT or (node.op_type in _REDUCE_POOLS and _keepdims(node)):
            found = {tags.get(i) for i in data}
            tag = found.pop() if len(found) == 1 else None
        if node.op_type in _GLOBAL_POOLS and data and tags.get(data[0]) in ("NCHW", None):
            pools.append((node, data[0]))
        if node.op_type in _REDUCE_POOLS and data and tags.get(data[0]):
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
                        f"its layout was stated as {stated[out]}; drop that --tensor-layout")
                tag = stated[out]
            if tag:
                tags[out] = tag
    unknown = set(stated) - {o for n in proto.graph.node for o in n.output}
    if unknown:
        raise FeaturebankError(f"tensor-layout names tensor(s) {sorted(unknown)} that are not in "
                               f"the graph; see 'featurebank layers FILE.onnx' for tensor names")
    return tags, pools, learned


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


def _friendly_names(proto, entries, shapes, pools) -> dict[str, list[str]]:
    """tensor -> catalogue names: stage.K, head, pool, logits (else the tensor's own name)."""
    listed = {t for t, _ in entries}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    names: dict[str, list[str]] = {}
    for k, tensor in enumerate(_stage_outputs(proto, entries, shapes), 1):
        names.setdefault(tensor, []).append(f"stage.{k}")
    pool_tensor = None
    if pools:
        node, pooled_input = pools[-1]
        pool_tensor = node.output[0]
        after = consumers.get(pool_tensor, [])
        if len(shapes.get(pool_tensor, ())) == 4 and len(after) == 1 and after[0].op_type in _FLATTENS \
                and len(shapes.get(after[0].output[0], ())) == 2:
            pool_tensor = after[0].output[0]
        if pooled_input in listed:
            names.setdefault(pooled_input, []).append("head")
        if pool_tensor in listed:
            names.setdefault(pool_tensor, []).append("pool")
    producer = {o: n for n in proto.graph.node for o in n.output}
    for out in proto.graph.output:
        tensor = out.name
        if producer.get(tensor) is not None and producer[tensor].op_type == "Softmax":
            tensor = producer[tensor].input[0]
        if tensor in listed and tensor != pool_tensor and len(shapes.get(tensor, ())) == 2 \
                and producer.get(tensor) is not None \
                and producer[tensor].op_type in ("Gemm", "MatMul", "Add"):
            names.setdefault(tensor, []).append("logits")
            break
    return names


def _stage_outputs(proto, entries, shapes) -> list[str]:
    """The output of each resolution stage, in graph order.

    Candidates are the activations all data flows through (nothing else is alive after them:
    a residual shortcut bypassing a tensor disqualifies it). Per spatial size, the last
    candidate that is a merge (``Add``/``Concat``, or an activation right after one: the
    output of a residual block) wins; a stage without a merge takes its narrowest candidate
    (a block's projection rather than the wide expansion feeding the next stride). Outputs of
    ``Pad`` (SAME padding before a strided conv) are never stage outputs.
    """
    nodes = list(proto.graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    last_use: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for t in n.input:
            last_use[t] = i
    data = {t for t, shape in shapes.items() if len(shape) >= 2 and t in producer}
    alive: set[str] = set()
    through: set[str] = set()
    for i, n in enumerate(nodes):
        alive = {t for t in alive if last_use.get(t, -1) > i}
        alive.update(o for o in n.output if o in data and last_use.get(o, -1) > i)
        if len(alive) == 1 and next(iter(alive)) in n.output:
            through.add(next(iter(alive)))
    layouts = dict(entries)
    by_size: dict[tuple, list[str]] = {}
    for tensor, lay in entries:
        if lay in ("NCHW", "NHWC") and tensor in through and nodes[producer[tensor]].op_type != "Pad":
            hw = tuple(shapes[tensor][lay.index(a)] for a in "HW")
            if min(hw) > 1:
                by_size.setdefault(hw, []).append(tensor)

    def merged(t: str) -> bool:
        node = nodes[producer[t]]
        if node.op_type in ("Add", "Sum", "Concat"):
            return True
        first = node.input[0] if node.input else ""
        return node.op_type in _KEEPS_LAYOUT and first in producer and \
            nodes[producer[first]].op_type in ("Add", "Sum", "Concat")

    def channels(t: str) -> int:
        return shapes[t][layouts[t].index("C")]

    chosen = []
    for tensors in by_size.values():
        merges = [t for t in tensors if merged(t)]
        chosen.append(merges[-1] if merges else min(reversed(tensors), key=channels))
    return sorted(chosen, key=producer.__getitem__)


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
            f"(shape {shown} after the batch) or is not computed from the image by a learned "
            f"layer; featurebank cuts only 4-D activations (NCHW or NHWC, pooled over their "
            f"spatial axes) and 2-D vectors")
