"""Cut an ONNX graph at one or more layers and append pooling, all inside the graph.

The feature graph takes ``pixels``: uint8 RGB NHWC ``[N, H, W, 3]`` as decoded, and folds the
model's input conventions in front (``_pixels``): channel order (a ``Gather`` for BGR), pixel range and
normalisation ((x * range / 255 - mean) / std as one Mul and one Add) and layout (the
NHWC->NCHW transpose for channel-first graphs), so the Python side never touches float pixels
and onnxruntime fuses the scale into the first convolution. Several layers come out of one
pass; each output is float32 ``[N, D]``, pooled over the spatial axes of that tensor's own
layout (NCHW or NHWC); a cut whose layout is unknown or odd is refused, never guessed.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from featurebank.errors import FeaturebankError
from featurebank.export import (
    LayerInfo,
    OnnxInfo,
    describe_tensor,
    foreign_model_spec,
    input_layout_from_shape,
    load_onnx,
    prepare_foreign,
    read_onnx_metadata,
)
from featurebank.extractor.graphs import _tokens
from featurebank.extractor.graphs._chunks import run_in_chunks
from featurebank.extractor.graphs._pixels import PIXELS, prepend_normalisation
from featurebank.spec import FeatureSpec, ModelSpec, Preprocessing

_EPS = 1e-6


@dataclass
class FeatureGraph:
    """A truncated, pooled graph and the spec of each of its outputs."""

    model: onnx.ModelProto
    specs: list[FeatureSpec]
    dims: list[int]
    output_names: list[str]
    model_spec: ModelSpec
    #: None when the model takes any batch; else the only batch it runs at (the feature graph
    #: then feeds it chunks of that size, see ``_chunks``).
    batch: int | None = None


def resolve_layer(layers: list[LayerInfo], wanted: str, path: Path,
                  proto: onnx.ModelProto | None = None, pre: Preprocessing | None = None,
                  shown: str | None = None) -> LayerInfo:
    """The catalogue entry for a catalogue or tensor name; closest names in the error, which
    names the model as ``shown`` (the user's name for it: a registry model's export is a cache
    file whose name means nothing to them), else by its file name."""
    for la in layers:
        if wanted in (la.name, la.tensor):
            return la
    token = _tokens.token_layer(proto, wanted, pre) if proto is not None else None
    if token is not None:  # a transformer's [N, T, C] tensor named by the user
        return token
    why = describe_tensor(proto, wanted, pre and pre.input_size, pre and pre.layout) if proto else None
    if why:
        raise FeaturebankError(f"layer {wanted!r} of {shown or path.name}: {why}")
    names = list(dict.fromkeys(la.name for la in layers))
    candidates = list(dict.fromkeys(names + [la.tensor for la in layers]))  # no name twice
    close = difflib.get_close_matches(wanted, candidates, n=5, cutoff=0.4)
    hint = f"closest: {', '.join(close)}" if close else f"valid: {', '.join(names[:12])} ..."
    raise FeaturebankError(f"layer {wanted!r} is not in {shown or path.name}; {hint}")


def resolve_layers(layers: list[LayerInfo], wanted: Sequence[str], path: Path,
                   proto: onnx.ModelProto, pre: Preprocessing, shown: str) -> list[LayerInfo]:
    """:func:`resolve_layer` for each name; every bad name is reported in one error, with the
    command that lists the layers of ``shown`` (the model as the user named it)."""
    chosen, problems = [], []
    for name in dict.fromkeys(wanted):
        try:
            la = resolve_layer(layers, name, path, proto, pre, shown)
        except FeaturebankError as exc:
            problems.append(str(exc))
            continue
        # a friendly name and its tensor's name resolve to one catalogue entry: one feature
        # set, named as the catalogue names it (two would be one fingerprint twice). Two
        # friendly names of one tensor (``stage.3`` and ``head``) stay two sets, as asked.
        if all(la.name != c.name for c in chosen):
            chosen.append(la)
    if problems:
        raise FeaturebankError(f"{'; '.join(problems)} (see 'featurebank layers {shown}')")
    return chosen


def cut_layout(la: LayerInfo, model_spec: ModelSpec, path: Path) -> str:
    """The layout to pool ``la`` in (``NCHW``, ``NHWC`` or ``NC``), or a refusal that says why."""
    rank = len(la.shape) + 1
    if min(la.shape, default=-1) < 1:
        raise FeaturebankError(
            f"layer {la.name!r} of {path.name} has a size shape inference cannot follow "
            f"({list(la.shape)}); adopt the model ('featurebank adopt' runs it once and "
            f"measures the sizes)")
    if rank == 2:
        return "NC"
    if rank == 3:
        return _tokens.token_layout(la, model_spec, path)
    if rank != 4:
        raise FeaturebankError(
            f"layer {la.name!r} of {path.name} has shape {list(la.shape)} after the batch "
            f"({rank}-D): featurebank cuts only 4-D activations (NCHW or NHWC) and 2-D vectors")
    layout = la.layout or model_spec.preprocessing.layout_of(la.tensor)
    if layout is None and model_spec.source != "onnx":
        layout = "NCHW"  # featurebank's own exports: every activation is channel-first
    layout = layout.upper() if layout else None
    if layout is None:
        raise FeaturebankError(
            f"the layout of layer {la.name!r} (tensor {la.tensor!r}, shape "
            f"{'x'.join(map(str, la.shape))}) cannot be followed through the graph of "
            f"{path.name}; state it: 'featurebank adopt {path.name} --tensor-layout "
            f"{la.tensor}=nchw|nhwc' (or tensor_layout in the preprocessing file)")
    if layout not in ("NCHW", "NHWC"):
        raise FeaturebankError(
            f"layer {la.name!r} (tensor {la.tensor!r}) of {path.name} has axes {layout} "
            f"after following the graph's transposes; featurebank pools only NCHW or NHWC "
            f"activations, so it is refused rather than pooled over the wrong axes")
    return layout


def _foreign_spec(path: Path, info: OnnxInfo, pre: Preprocessing | None) -> ModelSpec:
    if pre is None:
        raise FeaturebankError(
            f"{path.name} was not exported by featurebank, so its preprocessing is unknown; "
            f"adopt it once ('featurebank adopt {path.name} -o ADOPTED.onnx --pixel-range ... "
            f"--channel-order ...') or state it (preprocessing=FILE, or a Preprocessing(...))")
    shown = input_layout_from_shape(tuple(d if isinstance(d, int) else -1 for d in info.input_shape))
    if shown and shown.lower() != pre.layout:
        raise FeaturebankError(
            f"{path.name} takes {shown} input (shape {list(info.input_shape)}) but the stated "
            f"layout is {pre.layout}; state layout = {shown.lower()}")
    ax = (2, 3) if pre.layout == "nchw" else (1, 2)
    fixed = [info.input_shape[a] for a in ax] if len(info.input_shape) == 4 else []
    if all(isinstance(d, int) for d in fixed) and fixed and tuple(fixed) != pre.input_size:
        raise FeaturebankError(
            f"{path.name} takes {fixed[0]}x{fixed[1]} images but the stated input size is "
            f"{pre.input_size[0]}x{pre.input_size[1]}")
    return foreign_model_spec(path, pre)


def build_feature_graph(
    onnx_path: str | Path,
    layers: list[str] | tuple[str, ...] = ("head",),
    pool: str = "avg",
    gem_p: float = 3.0,
    normalize: bool = False,
    preprocessing: Preprocessing | None = None,
    name: str | None = None,
) -> FeatureGraph:
    """Truncate ``onnx_path`` at ``layers`` and pool each cut.

    Parameters
    ----------
    onnx_path : path
        A featurebank export or adopted file, or any ONNX file with a float image input (then
        ``preprocessing`` must state its conventions).
    layers : sequence of str
        Catalogue names (``blocks.10``, ``head``, ``pool``) or ONNX tensor names.
    pool : {'avg', 'max', 'gem', 'none', 'cls', 'mean', 'cls+mean'}
        Pooling over the spatial axes of each 4-D cut (in its own layout); ``none`` flattens
        it channel-first. Transformer token cuts take ``cls``, ``mean`` (patch tokens),
        ``cls+mean`` or ``none`` (see :mod:`._tokens`).
    gem_p : float
        Exponent of generalised-mean pooling.
    normalize : bool
        L2-normalise each output vector.
    preprocessing : Preprocessing, optional
        The conventions of a foreign file (ignored for files that describe themselves).
    name : str, optional
        The model as the user named it (a registry name for a cached export), for messages;
        default: ``onnx_path``.
    """
    path = Path(onnx_path)
    info = read_onnx_metadata(path)
    if not layers:
        raise FeaturebankError("no layer given; name at least one (see 'featurebank layers')")
    proto = load_onnx(path)
    model_spec, proto, batch, info = _model_to_cut(path, info, proto, preprocessing)
    chosen = resolve_layers(info.layers, layers, path, proto, model_spec.preprocessing,
                            name or str(path))
    layouts = [cut_layout(la, model_spec, path) for la in chosen]
    for la, layout in zip(chosen, layouts, strict=True):
        _tokens.check_pool(pool, layout, la, model_spec, path)
    specs = [FeatureSpec(model_spec, la.name, pool, gem_p, normalize) for la in chosen]
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 18)
    head, kept, weights, inits, where = _trunk(proto, info.input_name, chosen, model_spec,
                                               batch, opset)
    nodes: list = []
    outputs, dims, prefixes = [], [], set()
    for la, layout in zip(chosen, layouts, strict=True):
        # two catalogue names of one tensor (stage.3 and head) need their own pooling nodes
        prefix = la.tensor.replace("/", "_")
        prefix = prefix if prefix not in prefixes else f"{prefix}.{la.name}"
        prefixes.add(prefix)
        dims.append(_append_cut(nodes, inits, la, layout, where[la.tensor], prefix, specs[0],
                                opset))
        outputs.append(helper.make_tensor_value_info(f"feat.{la.name}", TensorProto.FLOAT,
                                                     ["N", None]))
    h, w = model_spec.preprocessing.input_size
    new_graph = helper.make_graph(
        head + kept + nodes, f"{proto.graph.name or 'model'}_features",
        [helper.make_tensor_value_info(PIXELS, TensorProto.UINT8, ["N", h, w, 3])],
        outputs, initializer=weights + inits,
    )
    model = helper.make_model(new_graph, opset_imports=proto.opset_import, producer_name="featurebank")
    model.ir_version = feature_ir_version(proto)
    for spec in specs:
        model.metadata_props.add(key=f"featurebank.feature.{spec.layer}", value=spec.to_json())
    onnx.checker.check_model(model)
    return FeatureGraph(model, specs, dims, [o.name for o in outputs], model_spec,
                        int(batch) if batch else None)


def _model_to_cut(path: Path, info: OnnxInfo, proto: onnx.ModelProto,
                  preprocessing: Preprocessing | None):
    """(model spec, graph to cut, its fixed batch or None, info with the catalogue): a file
    that describes itself as it says; a foreign file as ``adopt`` would record it (the batch
    plan and the catalogue on measured shapes)."""
    if info.spec is not None:
        return info.spec, proto, info.extra.get("batch"), info  # an adopted graph's own batch
    model_spec = _foreign_spec(path, info, preprocessing)
    plan, catalogue, pre, naming = prepare_foreign(proto, model_spec.preprocessing, path.name)
    # with the prefix tokens it shows, and the naming rule its catalogue needs
    model_spec = replace(model_spec, preprocessing=pre, naming=naming)
    return model_spec, plan.model, plan.batch, replace(info, layers=catalogue)


def _trunk(proto: onnx.ModelProto, input_name: str, chosen: list[LayerInfo],
           model_spec: ModelSpec, batch, opset: int):
    """The nodes that compute the cuts from the pixels: (input conventions, the model's
    nodes they need, the weights those read, new constants, cut tensor -> its name). A model
    that runs only at its own batch runs inside a Scan on chunks of it."""
    graph = proto.graph
    targets = list(dict.fromkeys(la.tensor for la in chosen))
    kept = _needed_nodes(list(graph.node), targets)
    used = {i for n in kept for i in n.input}
    weights = [t for t in graph.initializer if t.name in used]
    input_type = next(i.type.tensor_type.elem_type for i in graph.input if i.name == input_name)
    head: list = []
    inits: list = []
    if not batch:
        prepend_normalisation(head, inits, input_name, model_spec.preprocessing, input_type)
        return head, kept, weights, inits, {t: t for t in targets}
    prepend_normalisation(head, inits, "fb.input", model_spec.preprocessing, input_type)
    ranks = {la.tensor: (len(la.shape) + 1, _elem_type(la)) for la in chosen}
    kept, weights, where = run_in_chunks(kept, weights, (input_name, input_type), "fb.input",
                                         ranks, int(batch), opset)
    return head, kept, weights, inits, where


def _append_cut(nodes: list, inits: list, la: LayerInfo, layout: str, source: str, prefix: str,
                spec: FeatureSpec, opset: int) -> int:
    """Pool the cut ``la`` (tensor ``source``) into ``feat.<name>`` as ``spec`` says (its pool,
    GeM exponent, normalisation); returns the vector's width."""
    out, pool = f"feat.{la.name}", spec.pool
    if la.dtype is not None:  # a float16 or double activation: pooled in float32
        nodes.append(helper.make_node("Cast", [source], [f"{prefix}.f32"], to=TensorProto.FLOAT))
        source = f"{prefix}.f32"
    if layout == _tokens.TOKENS:  # pooled to [N, D], then flattened/normalised as a vector
        pooled = _tokens.append_token_pool(nodes, inits, source, pool,
                                           spec.model.preprocessing.prefix_tokens, opset, prefix)
        _append_pooling(nodes, inits, pooled, out, "NC", "none", spec.gem_p, spec.normalize,
                        opset, prefix)
        return _tokens.pooled_dim(la, pool)
    _append_pooling(nodes, inits, source, out, layout, pool, spec.gem_p, spec.normalize, opset,
                    prefix)
    channels = la.shape[0] if layout == "NCHW" else la.shape[-1]
    return int(np.prod(la.shape)) if pool == "none" or layout == "NC" else channels


#: The first IR version whose initializers need not be graph inputs (IR 3 lists every weight
#: as an input too; the feature graph and its Scan body declare only their data inputs).
_IR_FREE_INITIALIZERS = 4


def feature_ir_version(proto: onnx.ModelProto) -> int:
    """The IR version of a feature graph cut from ``proto``: its own, raised to 4 where it is
    older. IR 4 changed only that rule (initializers no longer have to be listed as graph
    inputs), so the ops and their opset stay as they were."""
    return max(int(proto.ir_version), _IR_FREE_INITIALIZERS)


def _elem_type(la: LayerInfo) -> int:
    """The ONNX element type of a cut (float32 unless its catalogue entry says otherwise)."""
    return getattr(TensorProto, la.dtype.upper()) if la.dtype else TensorProto.FLOAT


def _const(inits: list, name: str, value) -> str:
    inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
    return name


def _append_pooling(nodes, inits, src, out, layout, pool, gem_p, normalize, opset=18,
                    p=None) -> None:
    p = p or src.replace("/", "_")
    x = src
    if layout == "NHWC":  # channel-first, so the global pools below reduce H and W
        nodes.append(helper.make_node("Transpose", [x], [f"{p}.nchw"], perm=[0, 3, 1, 2]))
        x = f"{p}.nchw"
    if layout != "NC" and pool != "none":
        if pool == "avg":
            nodes.append(helper.make_node("GlobalAveragePool", [x], [f"{p}.pool"]))
        elif pool == "max":
            nodes.append(helper.make_node("GlobalMaxPool", [x], [f"{p}.pool"]))
        else:  # GeM: (mean(clip(x, eps)^p))^(1/p)
            lo = _const(inits, f"{p}.eps", _EPS)
            nodes += [
                helper.make_node("Clip", [x, lo], [f"{p}.clip"]),
                helper.make_node("Pow", [f"{p}.clip", _const(inits, f"{p}.p", gem_p)], [f"{p}.powp"]),
                helper.make_node("GlobalAveragePool", [f"{p}.powp"], [f"{p}.mean"]),
                helper.make_node("Pow", [f"{p}.mean", _const(inits, f"{p}.invp", 1.0 / gem_p)],
                                 [f"{p}.pool"]),
            ]
        x = f"{p}.pool"
    target = f"{p}.flat" if normalize else out
    nodes.append(helper.make_node("Flatten", [x], [target], axis=1))
    if normalize:
        if opset >= 18:  # axes became an input in opset 18; foreign graphs may be older
            axes = f"{p}.axes"
            inits.append(numpy_helper.from_array(np.array([1], np.int64), axes))
            nodes.append(helper.make_node("ReduceSumSquare", [target, axes], [f"{p}.ss"], keepdims=1))
        else:
            nodes.append(helper.make_node("ReduceSumSquare", [target], [f"{p}.ss"], axes=[1],
                                          keepdims=1))
        nodes += [
            helper.make_node("Sqrt", [f"{p}.ss"], [f"{p}.norm"]),
            helper.make_node("Max", [f"{p}.norm", _const(inits, f"{p}.neps", 1e-12)], [f"{p}.nclip"]),
            helper.make_node("Div", [target, f"{p}.nclip"], [out]),
        ]


def _needed_nodes(nodes: list, targets: list[str]) -> list:
    """The nodes that the target tensors depend on, in their original (topological) order."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    needed, stack = set(), list(targets)
    while stack:
        tensor = stack.pop()
        i = producer.get(tensor)
        if i is None or i in needed:
            continue
        needed.add(i)
        stack.extend(nodes[i].input)
        for attr in nodes[i].attribute:  # subgraphs (If/Loop) read outer tensors too
            for g in [attr.g, *attr.graphs]:
                stack.extend(x for n in g.node for x in n.input)
    return [n for i, n in enumerate(nodes) if i in needed]
