"""Friendly names of a vision transformer's graph and its prefix tokens (naming rule 4).

A pre-norm vision transformer keeps one residual stream of ``[N, T, C]`` tokens: each block
adds an attention branch, then an MLP branch (``x = x + attn(norm(x)); x = x + mlp(norm(x))``).
In the graph that is a chain of ``Add`` nodes whose two inputs are the stream and a branch
computed from it; the chain starts after the position embedding and ends before the final norm.
Read from that structure alone (so opaque tensor names do not matter):

- ``blocks.K`` (K from 0): the stream after the K-th block's second ``Add`` (its MLP branch);
  the chain must alternate an attention branch (a ``Softmax`` or a fused attention op) and a
  branch without one, else nothing is named;
- ``head``: the last ``[N, T, C]`` tensor all data flows through after the last block (the
  final norm's output; the last block's output where the head pools without a norm first);
- ``pool``: the 2-D vector the classifier reads, where it is computed from ``head``;
- ``logits``: the graph's output (as for CNNs).

Prefix tokens (class, distillation and register tokens, see
:mod:`featurebank.extractor.graphs._tokens`) are ``T - h * w`` for the patch-embedding
convolution's ``h x w`` output grid, trusted only when every token ``Concat`` between that
convolution and the stream puts learned (constant) tokens before the patch tokens and they add
up to that count. The first prefix token is a class token when the classifier reads token 0
of ``head``; a head that pools the patch tokens does not show it. Where the graph does not show
the count (or the class token), the user states it or token cuts (the ``cls`` pool) are refused
(:func:`settle_tokens`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import numpy_helper

from featurebank.errors import FeaturebankError
from featurebank.export._graph_ops import WEIGHTED, static_tensors
from featurebank.spec import Preprocessing

log = logging.getLogger(__name__)
#: The layout of a transformer's ``[N, T, C]`` cut in the catalogue.
TOKENS = "tokens"
_ATTENTION = {"Softmax", "Attention", "MultiHeadAttention"}
_RESIDUAL = {"Add", "Sum"}
_PASS = {"Identity", "Cast", "Dropout"}


@dataclass(frozen=True)
class TokenGraph:
    """What the graph shows of a vision transformer.

    Attributes
    ----------
    blocks : tuple of str
        The output tensor of each block, in order.
    head : str
        The tokens the head pools (after the final norm, if any).
    pool : str or None
        The vector the classifier reads, where it comes from ``head``.
    prefix : int or None
        Tokens before the patch tokens; None where the graph does not show it (``why``).
    class_token : bool or None
        Whether the first prefix token is a class token; None where the graph does not show it.
    why : str or None
        Why ``prefix`` is unknown.
    """

    blocks: tuple[str, ...]
    head: str
    pool: str | None
    prefix: int | None
    class_token: bool | None
    why: str | None = None


class _Graph:
    """Producers, consumers and constants of a graph, for walking it."""

    def __init__(self, proto: onnx.ModelProto, shapes: dict[str, tuple]):
        self.nodes = list(proto.graph.node)
        self.shapes = shapes
        self.static = static_tensors(proto)
        self.producer = {o: i for i, n in enumerate(self.nodes) for o in n.output if o}
        self.last_use: dict[str, int] = {}
        for i, n in enumerate(self.nodes):
            for t in n.input:
                self.last_use[t] = i
        self.constants = {t.name: t for t in proto.graph.initializer}
        self.constants.update({n.output[0]: a.t for n in self.nodes if n.op_type == "Constant"
                               for a in n.attribute if a.name == "value"})

    def data(self, node: onnx.NodeProto) -> list[str]:
        return [i for i in node.input if i and i not in self.static]

    def const(self, name: str) -> list[int] | None:
        t = self.constants.get(name)
        return None if t is None else [int(v) for v in np.ravel(numpy_helper.to_array(t))]

    def ancestors(self, tensor: str, stop: str | None = None) -> set[int] | None:
        """Indices of the non-constant nodes ``tensor`` is computed by, up to ``stop``; with
        ``stop``, None unless every path ends there (a branch computed from that tensor alone)."""
        seen: set[int] = set()
        stack, reached = [tensor], stop is None
        while stack:
            t = stack.pop()
            if t == stop:
                reached = True
            elif t not in self.static and t in self.producer:
                i = self.producer[t]
                if i not in seen:
                    seen.add(i)
                    stack.extend(x for x in self.nodes[i].input if x)
            elif stop is not None and t not in self.static:
                return None  # reads the image (or another input) past ``stop``
        return seen if reached else None


def transformer_graph(proto: onnx.ModelProto, shapes: dict[str, tuple]) -> TokenGraph | None:
    """The blocks, head and prefix tokens of a vision transformer's graph, or None when the
    graph is not one (no residual chain of alternating attention and MLP branches).

    ``shapes`` holds each activation's shape with its batch axis (measured, or inferred).
    """
    g = _Graph(proto, shapes)
    chain = _residual_chain(g)
    if chain is None:
        return None
    stream0, adds = chain
    blocks = tuple(g.nodes[i].output[0] for i in adds[1::2])
    head = _head(g, blocks[-1])
    pool = _pool(g, proto, head)
    prefix, why = _prefix_tokens(g, stream0)
    reads_first = pool is not None and _reads_token_zero(g, head, pool)
    class_token = True if reads_first else (False if prefix == 0 else None)
    return TokenGraph(blocks, head, pool, prefix, class_token, why)


def _tokens_shape(g: _Graph, tensor: str) -> tuple | None:
    shape = g.shapes.get(tensor, ())
    return shape if len(shape) == 3 and min(shape[1:]) > 0 else None


def _residual_chain(g: _Graph) -> tuple[str, list[int]] | None:
    """(the stream before the first block, the indices of the chain's Add nodes)."""
    adds = {}
    for i, n in enumerate(g.nodes):
        data = g.data(n)
        shape = _tokens_shape(g, n.output[0]) if n.output else None
        if n.op_type in _RESIDUAL and len(n.input) == 2 and len(data) == 2 and shape \
                and all(g.shapes.get(t) == shape for t in data):
            adds[n.output[0]] = i
    following: dict[str, list[int]] = {}
    for i in adds.values():
        for t in g.nodes[i].input:
            if t in adds:
                following.setdefault(t, []).append(i)
    best: tuple[str, list[int]] | None = None
    for out, i in adds.items():
        if any(t in adds for t in g.nodes[i].input):
            continue  # not the first Add of a chain
        starts = [s for s in g.nodes[i].input
                  if g.ancestors(next(t for t in g.nodes[i].input if t != s), s) is not None]
        if len(starts) != 1:
            continue
        chain, tensor = [i], out
        while len(following.get(tensor, [])) == 1:
            chain.append(following[tensor][0])
            tensor = g.nodes[chain[-1]].output[0]
        if _alternates(g, starts[0], chain) and (best is None or len(chain) > len(best[1])):
            best = (starts[0], chain)
    return best


def _alternates(g: _Graph, stream: str, chain: list[int]) -> bool:
    """Whether each Add adds a branch computed from the stream alone, attention and MLP in turn."""
    if len(chain) < 2 or len(chain) % 2:
        return False
    for k, i in enumerate(chain):
        branch_input = next((t for t in g.nodes[i].input if t != stream), None)
        branch = g.ancestors(branch_input, stream) if branch_input else None
        if not branch:
            return False
        attends = any(g.nodes[j].op_type in _ATTENTION for j in branch)
        if attends != (k % 2 == 0):
            return False
        stream = g.nodes[i].output[0]
    return True


def _head(g: _Graph, last_block: str) -> str:
    """The last tensor of the stream's shape that all data flows through after ``last_block``."""
    shape, head, alive = g.shapes[last_block], last_block, {last_block}
    for i in range(g.producer[last_block] + 1, len(g.nodes)):
        n = g.nodes[i]
        alive = {t for t in alive if g.last_use.get(t, -1) > i}
        alive.update(o for o in n.output if o and o not in g.static and g.last_use.get(o, -1) > i)
        if len(alive) == 1 and next(iter(alive)) in n.output and \
                g.shapes.get(next(iter(alive))) == shape:
            head = next(iter(alive))
    return head


def _pool(g: _Graph, proto: onnx.ModelProto, head: str) -> str | None:
    """The 2-D input of the classifier that makes the graph's first output from ``head``."""
    tensor = proto.graph.output[0].name if proto.graph.output else None
    for _ in range(8):  # back through Softmax, copies and a bias Add to the weighted op
        node = g.nodes[g.producer[tensor]] if tensor in g.producer else None
        if node is None:
            return None
        data = g.data(node)
        if node.op_type in WEIGHTED and data and len(g.shapes.get(data[0], ())) == 2:
            pool = data[0]
            found = g.ancestors(pool)
            return pool if found is not None and g.producer.get(head) in found else None
        if len(data) != 1 or node.op_type not in _PASS | {"Add", "Softmax", "LogSoftmax"}:
            return None
        tensor = data[0]
    return None


def _reads_token_zero(g: _Graph, head: str, pool: str) -> bool:
    """Whether ``pool`` is computed from token 0 of ``head`` (``head[:, 0]``, ``head[:, :1]``)."""
    on_path = g.ancestors(pool) or set()
    for i in on_path:
        n = g.nodes[i]
        if not n.input or n.input[0] != head:
            continue
        attrs = {a.name: a for a in n.attribute}
        if n.op_type == "Gather" and len(n.input) > 1:
            axis = attrs["axis"].i if "axis" in attrs else 0
            if axis in (1, -2) and g.const(n.input[1]) == [0]:
                return True
        if n.op_type == "Slice":
            if len(n.input) >= 4:
                starts, ends, axes = (g.const(n.input[k]) for k in (1, 2, 3))
            else:  # opset < 10: attributes
                starts, ends, axes = (list(attrs[k].ints) if k in attrs else None
                                      for k in ("starts", "ends", "axes"))
            steps = g.const(n.input[4]) if len(n.input) > 4 else [1]
            if axes in ([1], [-2]) and starts == [0] and ends == [1] and steps == [1]:
                return True
    return False


def _prefix_tokens(g: _Graph, stream: str) -> tuple[int | None, str | None]:
    """(prefix tokens, None) where the graph shows them, else (None, why not)."""
    tokens = g.shapes[stream][1]
    before = g.ancestors(stream) or set()
    convs = sorted(i for i in before if g.nodes[i].op_type == "Conv"
                   and len(g.shapes.get(g.nodes[i].output[0], ())) == 4)
    if not convs:
        return None, (f"no convolution makes its patch tokens, so the patch count behind its "
                      f"{tokens} tokens is not shown")
    grid = g.shapes[g.nodes[convs[-1]].output[0]][2:]
    patches = int(np.prod(grid))
    prefix = tokens - patches
    if min(grid) < 1 or prefix < 0:
        return None, (f"its {tokens} tokens do not extend the patch grid "
                      f"{'x'.join(map(str, grid))} of its patch-embedding convolution")
    added = 0
    for i in sorted(before):
        n = g.nodes[i]
        if i < convs[-1] or n.op_type != "Concat":
            continue
        axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
        data = g.data(n)
        out, fed = g.shapes.get(n.output[0], ()), g.shapes.get(data[0], ()) if data else ()
        if len(out) != 3 or axis not in (1, -2):
            continue
        if len(data) != 1 or n.input[-1] != data[0] or len(fed) != 3:
            return None, (f"a Concat ({n.name or n.output[0]!r}) puts tokens after or between "
                          f"its patch tokens")
        added += out[1] - fed[1]
    if added != prefix:
        return None, (f"its {tokens} tokens are {prefix} more than its {patches} patches, but "
                      f"{added} learned token(s) are concatenated before them")
    return prefix, None


def token_names(vit: TokenGraph, logits: str | None) -> dict[str, list[str]]:
    """tensor -> friendly names of a transformer's graph (see the module docstring)."""
    names: dict[str, list[str]] = {}
    for k, tensor in enumerate(vit.blocks):
        names.setdefault(tensor, []).append(f"blocks.{k}")
    names.setdefault(vit.head, []).append("head")
    if vit.pool is not None:
        names.setdefault(vit.pool, []).append("pool")
    if logits is not None:
        names.setdefault(logits, []).append("logits")
    return names


def token_entries(vit: TokenGraph, entries: list[tuple[str, str | None]],
                  order: dict[str, int]) -> list[tuple[str, str | None]]:
    """The catalogue entries plus the transformer's named token tensors, in graph order."""
    tokens = [(t, TOKENS) for t in dict.fromkeys([*vit.blocks, vit.head])]
    return sorted([*entries, *tokens], key=lambda e: order[e[0]])


def settle_tokens(pre: Preprocessing, vit: TokenGraph | None, name: str) -> Preprocessing:
    """``pre`` with the prefix tokens and class token the graph shows.

    A statement the graph contradicts is refused; where the graph does not show a value, the
    stated one stays (None when unstated: token cuts, or the ``cls`` pool, are then refused
    with a message saying what to state). ``class_token`` None means unstated; for a graph
    that is no transformer it becomes the default (True), so a CNN's spec does not change.
    """
    if vit is None:
        return pre if pre.class_token is not None else replace(pre, class_token=True)
    prefix, cls = pre.prefix_tokens, pre.class_token
    if vit.prefix is not None:
        if prefix is not None and prefix != vit.prefix:
            raise FeaturebankError(
                f"{name}: the graph shows {vit.prefix} token(s) before its patch tokens (its "
                f"patch grid and token count), but prefix_tokens = {prefix} was stated; drop "
                f"prefix_tokens or state {vit.prefix}")
        prefix = vit.prefix
    elif prefix is None:
        log.warning("%s: the graph does not show how many tokens come before the patch tokens "
                    "(%s); its token cuts are refused until it is stated: 'featurebank adopt "
                    "FILE.onnx ... --prefix-tokens N' (adopt(..., prefix_tokens=N))",
                    name, vit.why)
    if vit.class_token is not None:
        if cls is not None and cls != vit.class_token:
            shown = ("its classifier reads token 0, a class token" if vit.class_token else
                     "it has no token before the patch tokens")
            raise FeaturebankError(f"{name}: the graph shows {shown}, but class_token = {cls} "
                                   f"was stated; drop class_token")
        cls = vit.class_token
    return replace(pre, prefix_tokens=prefix, class_token=cls)
