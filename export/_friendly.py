"""Friendly names of a foreign image CNN's cut points: ``stage.K``, ``head``, ``pool``, ``logits``.

Read from the graph's structure, so converter-made graphs with opaque tensor names get them
too; only where the structure cannot tell (the activation after DenseNet's last norm) the module
scopes torch's exporters record decide. The rule is versioned (``featurebank.spec.NAMING_RULES``,
this is rule 5): a name must never come to mean another tensor under the same fingerprint, so a
catalogue records the rule its names need (4 where rule 5 names nothing differently, so that
fingerprints move only where a name moved: :data:`NAMING_RULE`).

- ``stage.K``: the output of the last block at the K-th spatial resolution (see
  :func:`stage_outputs`); never an expansion layer inside a block, never a classifier conv.
  The last stage ends in the normalisation when only a normalisation and activations lie
  between its block output and the pool (DenseNet's ``norm5``, rule 3; rule 2 named the
  concatenation before it), with the activations when nothing says they lie outside the
  module that holds the norm (timm's ``BatchNormAct2d``), without them when the exporter
  recorded them outside it (torchvision's ``F.relu`` in ``DenseNet.forward``: rule 4).
  When the network's head starts after the pool (a weighted layer between the pool and the
  classifier: MobileNetV3's 1280-wide layer), the map the pool reads is the last stage (its
  1x1 conv belongs to the trunk, MobileNetV3's last stage; rule 4).
- ``head``: the input of the last global pool; without one, the last 4-D map before the
  classifier (a Flatten + Gemm head).
- ``pool``: the input of the last classifier layer. For a network with a global pool, the
  pooled vector (GlobalAveragePool, or ReduceMean/ReduceMax over the spatial axes, or, from
  rule 5, an AveragePool/MaxPool whose output is 1x1 followed by a Flatten/Reshape: the
  model-zoo ResNet-50, Inception, ShuffleNet; then any Flatten). For a fully connected head
  (VGG, AlexNet: fully connected layers between the last map and the classifier; rule 5) the
  input of the classifier layer, fc7 after its activation.
- ``logits``: the graph's output (before a Softmax); the pooled vector itself when a
  classifier conv comes before the pool (SqueezeNet).
"""

from __future__ import annotations

import ast
from dataclasses import replace

import onnx

from featurebank.export._graph_ops import FLATTENS, WEIGHTED, Flow

#: The friendly-name rule this version builds (see ``featurebank.spec.NAMING_RULES``).
NAMING_RULE = 5
#: A block's output is a merge of two or more activations (a residual sum, a concatenation).
_MERGES = {"Add", "Sum", "Concat"}
#: Ops that only copy values (or change their layout or type): never a stage of their own.
_COPIES = {"Transpose", "Identity", "Dropout", "Pad"}
#: Ops after the classifier that do not change what the logits are.
_SOFTMAX = {"Softmax", "LogSoftmax"}
_AFTER_LOGITS = _SOFTMAX | {"Identity", "Cast", "Dropout"}
_DOWNSAMPLING_POOLS = {"MaxPool", "AveragePool", "LpPool"}
#: What may follow a block's merge and still be its output: activations and copies (not a
#: normalisation: ConvNeXt's down-sampling LayerNorm after the last block starts the next stage).
_AFTER_MERGE = {"Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "PRelu",
                "Elu", "Selu", "Celu", "Gelu", "Tanh", "Softplus", "Mish", "Swish",
                "ThresholdedRelu", "Cast", "Identity", "Dropout", "Transpose"}
_NORMS = {"BatchNormalization", "LayerNormalization", "InstanceNormalization",
          "GroupNormalization"}


def friendly_names(proto: onnx.ModelProto, entries: list[tuple[str, str | None]],
                   shapes: dict[str, tuple], flow: Flow,
                   rule: int = NAMING_RULE) -> dict[str, list[str]]:
    """tensor -> its friendly names, for the catalogue entries ``(tensor, layout)``, by naming
    rule ``rule`` (4 or 5: what the module docstring says rule 5 adds)."""
    nodes = list(proto.graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    listed = dict(entries)
    names: dict[str, list[str]] = {}
    logits = _logits(proto, listed, shapes, nodes, producer)
    if rule >= 5:  # a pool is global by what it does: a 1x1 output, then flattened
        flow = replace(flow, pools=_with_windowed_pools(flow, nodes, consumers, shapes))
    pool_tensor = head = classifier = None
    if flow.pools:
        node, head = flow.pools[-1]
        classifier = _classifier_conv(nodes, producer, flow, shapes, head, node, logits)
        pool_tensor = _flattened(node.output[0], consumers, shapes)
        while head in producer and nodes[producer[head]].op_type in _COPIES - {"Pad"} \
                and nodes[producer[head]].input[0] in listed:
            head = nodes[producer[head]].input[0]  # the map itself, not a transposed copy
    elif logits is not None:  # a Flatten + Gemm head: the last map before the classifier
        maps = [t for t, lay in entries if lay in ("NCHW", "NHWC")
                and producer[t] < producer[logits]]
        head = maps[-1] if maps else None
        if rule >= 5 and head is not None:
            pool_tensor = _fully_connected_input(head, logits, nodes, producer, flow, listed)
    stages = stage_outputs(proto, entries, shapes, flow, classifier)
    if stages and head in listed:
        end = _normalised_end(stages[-1], head, nodes, producer, flow, listed)
        if end is not None:  # the last block's output normalised before the pool (DenseNet)
            stages[-1] = end
        elif classifier is None and _head_after_pool(nodes, producer, flow, logits) \
                and _hw(head, listed, shapes) == _hw(stages[-1], listed, shapes):
            stages[-1] = head  # the pool's input is the trunk's last map (MobileNetV3)
    for k, tensor in enumerate(stages, 1):
        names.setdefault(tensor, []).append(f"stage.{k}")
    if head in listed:
        names.setdefault(head, []).append("head")
    if pool_tensor in listed:
        names.setdefault(pool_tensor, []).append("pool")
    if logits is not None:
        names.setdefault(logits, []).append("logits")
    return names


def _with_windowed_pools(flow: Flow, nodes, consumers, shapes) -> list:
    """``flow.pools`` and the AveragePool/MaxPool nodes that pool a map to 1x1 and are then
    flattened, in graph order. The output is tested, not the kernel: Inception v1's pool pads."""
    known = {id(node) for node, _ in flow.pools}
    found = list(flow.pools)
    for node in nodes:
        if node.op_type not in _DOWNSAMPLING_POOLS - {"LpPool"} or id(node) in known:
            continue
        data = _data_inputs(node, flow)
        out, src = shapes.get(node.output[0], ()), shapes.get(data[0], ()) if data else ()
        if len(out) == 4 == len(src) and tuple(out[2:]) == (1, 1) and min(src[2:]) > 1 \
                and _flattened(node.output[0], consumers, shapes) != node.output[0]:
            found.append((node, data[0]))
    order = {id(n): i for i, n in enumerate(nodes)}
    return sorted(found, key=lambda pair: order[id(pair[0])])


def _fully_connected_input(head: str, logits: str, nodes, producer, flow: Flow,
                           listed) -> str | None:
    """The input of the classifier layer of a fully connected head (fc7 after its activation:
    VGG, AlexNet), else None: a listed vector computed by a weighted layer after ``head``."""
    node = nodes[producer[logits]] if logits in producer else None
    if node is None or node.op_type not in WEIGHTED:
        return None
    tensor = _data_inputs(node, flow)[0] if _data_inputs(node, flow) else None
    while tensor in producer and tensor not in listed \
            and nodes[producer[tensor]].op_type in _COPIES | {"Cast"}:
        tensor = nodes[producer[tensor]].input[0]
    while tensor in producer and nodes[producer[tensor]].op_type in {"Dropout", "Identity"}:
        tensor = nodes[producer[tensor]].input[0]  # eval copies: the activation itself
    if tensor not in listed or listed[tensor] != "NC" or tensor not in producer:
        return None
    between = nodes[producer[head] + 1:producer[tensor] + 1]
    return tensor if any(n.op_type in WEIGHTED for n in between) else None


def _normalised_end(stage: str, head: str, nodes, producer, flow: Flow,
                    listed) -> str | None:
    """Where the last stage ends when ``head`` is ``stage`` through a normalisation and then
    only activations and copies (each op with one data input), else None.

    That is ``head``, unless the exporter recorded an activation after the norm outside the
    module that holds the norm (see :func:`_module_scope`): then the norm's output.
    """
    chain, tensor = [], head  # the ops from the stage to the head, last first
    for _ in range(16):
        if tensor == stage:
            break
        if tensor not in producer:
            return None
        node = nodes[producer[tensor]]
        inputs = _data_inputs(node, flow)
        if len(inputs) != 1 or node.op_type not in _AFTER_MERGE | _NORMS:
            return None
        chain.append(node)
        tensor = inputs[0]
    else:
        return None
    chain.reverse()
    at = max((i for i, n in enumerate(chain) if n.op_type in _NORMS), default=None)
    if at is None:
        return None
    norm_scope = _module_scope(chain[at])
    parent = None if norm_scope is None else norm_scope[:-1]  # the module holding the norm
    for node in chain[at + 1:]:
        scope = _module_scope(node)
        if node.op_type not in _COPIES | {"Cast"} and parent is not None and scope is not None \
                and scope[:len(parent)] != parent:
            end = node.input[0]
            while end not in listed and end in producer \
                    and nodes[producer[end]].op_type in _COPIES | {"Cast"}:
                end = nodes[producer[end]].input[0]  # back to the listed map (NHWC graphs)
            return end if end in listed else None
    return head


def _module_scope(node: onnx.NodeProto) -> tuple[str, ...] | None:
    """The torch module path an exporter recorded for ``node``: the dynamo exporter's
    ``pkg.torch.onnx.name_scopes``, the TorchScript exporter's ``/features/norm5/Relu`` node
    name; None when the graph records none (opaque or converter-made graphs)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                return tuple(ast.literal_eval(prop.value))[:-1]  # the last is the op itself
            except (ValueError, SyntaxError):
                return None
    if node.name.startswith("/"):
        return tuple(node.name.split("/")[1:-1])
    return None


def _hw(tensor: str, listed, shapes) -> tuple | None:
    lay = listed.get(tensor)
    if lay not in ("NCHW", "NHWC"):
        return None
    return tuple(shapes[tensor][lay.index(a)] for a in "HW")


def _head_after_pool(nodes, producer, flow: Flow, logits) -> bool:
    """Whether a weighted layer lies between the last global pool and the classifier (the
    network's head starts after the pool: MobileNetV3's 1280-wide conv or Linear)."""
    if not flow.pools or logits is None or logits not in producer:
        return False
    pool_at = next(i for i, n in enumerate(nodes) if n is flow.pools[-1][0])
    return sum(n.op_type in WEIGHTED for n in nodes[pool_at + 1:producer[logits] + 1]) >= 2


def _flattened(tensor: str, consumers, shapes) -> str:
    """The 2-D vector a pooled ``[N, C, 1, 1]`` map becomes (through copies and a Flatten),
    else the map itself."""
    t = tensor
    for _ in range(8):
        after = consumers.get(t, [])
        if len(shapes.get(t, ())) == 2 or len(after) != 1 or \
                after[0].op_type not in FLATTENS | _COPIES | {"Cast"}:
            break
        t = after[0].output[0]
    return t if len(shapes.get(t, ())) == 2 else tensor


def _logits(proto, listed, shapes, nodes, producer) -> str | None:
    """The first graph output that is a listed 2-D vector, before any Softmax (and the
    nearest to the output of its copies: a float32 output over its float16 source)."""
    for out in proto.graph.output:
        tensor = out.name
        for _ in range(8):
            op = nodes[producer[tensor]].op_type if tensor in producer else None
            if op in _SOFTMAX or (op in _AFTER_LOGITS and tensor not in listed):
                tensor = nodes[producer[tensor]].input[0]
            else:
                break
        if tensor in listed and len(shapes.get(tensor, ())) == 2:
            return tensor
    return None


def _data_inputs(node: onnx.NodeProto, flow: Flow) -> list[str]:
    return [i for i in node.input if i and i not in flow.static]


def _classifier_conv(nodes, producer, flow, shapes, pooled_input, pool_node,
                     logits) -> int | None:
    """Index of the classifier conv (a 1x1 conv whose map is pooled into the logits, with no
    weighted op after the pool), or None. It and everything after it are never stages."""
    if logits is None or logits not in producer:
        return None
    pool_at = next(i for i, n in enumerate(nodes) if n is pool_node)
    if any(n.op_type in WEIGHTED for n in nodes[pool_at + 1:producer[logits] + 1]):
        return None  # a Gemm (or a 1x1 conv on the pooled map) after the pool classifies
    tensor = pooled_input
    while tensor in producer:
        node = nodes[producer[tensor]]
        if node.op_type in WEIGHTED:  # a classifier is a 1x1 conv at stride 1 (SqueezeNet,
            # NiN); a strided or wider conv there starts a stage of a headless network
            attrs = {a.name: list(a.ints) for a in node.attribute}
            kernel = attrs.get("kernel_shape") or list(shapes.get(node.input[1], ())[2:])
            one_by_one = node.op_type == "Conv" and kernel == [1, 1] \
                and set(attrs.get("strides", [1])) == {1}
            return producer[tensor] if one_by_one else None
        data = _data_inputs(node, flow)
        if len(data) != 1:
            return None
        tensor = data[0]
    return None


def stage_outputs(proto: onnx.ModelProto, entries, shapes, flow: Flow,
                  before: int | None = None) -> list[str]:
    """The output of each resolution stage, in graph order.

    Candidates are the activations all data flows through (no other activation is alive
    after them: a residual shortcut bypassing a tensor disqualifies it; constants and shape
    tensors do not count), computed before the classifier conv (node index ``before``), that
    are not mere copies (Transpose, Identity, Dropout, Pad). Per spatial size, the last
    candidate that is a merge (``Add``/``Sum``/``Concat`` of two or more activations,
    possibly followed by activations, Casts and Transposes: the output of a residual or dense
    block) or a linear bottleneck's output (see :func:`_linear_output`: the last inverted
    residual of a resolution without a shortcut, EfficientNet's 320-channel block; rule 4)
    wins; a stage with neither takes its narrowest candidate (a block's projection rather
    than the wide expansion feeding the next stride), and a down-sampling pool's output (the
    input of the stage) only when nothing else is at that size.
    """
    nodes = list(proto.graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    last_use: dict[str, int] = {}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for i, n in enumerate(nodes):
        for t in n.input:
            last_use[t] = i
            consumers.setdefault(t, []).append(n)
    data = {t for t, shape in shapes.items()
            if len(shape) >= 2 and t in producer and t not in flow.static}
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
        at = producer[tensor]
        if lay in ("NCHW", "NHWC") and tensor in through and nodes[at].op_type not in _COPIES \
                and (before is None or at < before):
            hw = tuple(shapes[tensor][lay.index(a)] for a in "HW")
            if min(hw) > 1:
                by_size.setdefault(hw, []).append(tensor)

    def merged(t: str) -> bool:
        for _ in range(16):  # a merge, then at most a few activations, casts and transposes
            node = nodes[producer[t]]
            inputs = _data_inputs(node, flow)
            if node.op_type in _MERGES and len(inputs) >= 2:
                return True
            if len(inputs) != 1 or inputs[0] not in producer or node.op_type not in _AFTER_MERGE:
                return False
            t = inputs[0]
        return False

    def channels(t: str) -> int:
        return shapes[t][layouts[t].index("C")]

    chosen = []
    for tensors in by_size.values():
        inner = [t for t in tensors if nodes[producer[t]].op_type not in _DOWNSAMPLING_POOLS]
        tensors = inner or tensors
        blocks = [t for t in tensors
                  if merged(t) or _linear_output(t, nodes, producer, consumers, flow)]
        chosen.append(blocks[-1] if blocks else min(reversed(tensors), key=channels))
    return sorted(chosen, key=producer.__getitem__)


def _linear_output(tensor: str, nodes, producer, consumers, flow: Flow) -> bool:
    """Whether ``tensor`` is a linear bottleneck's output: a conv (with its normalisation,
    bias and the copies a converter wraps around it) with no activation after it, read only
    by weighted layers and merges of two or more activations: the next block or the head
    conv. A transition conv feeding a down-sampling pool (DenseNet's) is not one; an
    expansion is activated, so never one."""

    def linear(node: onnx.NodeProto) -> bool:  # copies, casts, a norm, a constant's + - * /
        data = _data_inputs(node, flow)
        return len(data) == 1 and (node.op_type in _COPIES | _NORMS | {"Cast"} or (
            node.op_type in {"Add", "Sub", "Mul", "Div"} and len(node.input) == 2))

    t, node = tensor, None
    for _ in range(12):  # back to the op that computed it
        if t not in producer:
            return False
        node = nodes[producer[t]]
        if not linear(node):
            break
        t = _data_inputs(node, flow)[0]
    if node is None or node.op_type != "Conv":
        return False
    readers, todo = [], [(tensor, 0)]
    while todo:
        t, depth = todo.pop()
        for c in consumers.get(t, []):
            if linear(c) and depth < 12:
                todo.append((c.output[0], depth + 1))
            else:
                readers.append(c)
    return bool(readers) and all(c.op_type in WEIGHTED or (
        c.op_type in _MERGES and len(_data_inputs(c, flow)) >= 2) for c in readers)
