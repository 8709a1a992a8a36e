"""Cut an ONNX graph at one or more layers and append pooling, all inside the graph.

The feature graph takes ``pixels``: uint8 NHWC ``[N, H, W, 3]`` as decoded, and folds the
normalisation ((x / 255 - mean) / std) and the NHWC->NCHW transpose in front, so the Python side
never touches float pixels and onnxruntime fuses the scale into the first convolution. Several
layers come out of one pass; each output is float32 ``[N, D]``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from featurebank.export._metadata import (
    LayerInfo,
    foreign_model_spec,
    load_onnx,
    read_onnx_metadata,
)
from onnx import TensorProto, helper, numpy_helper

from featurebank.errors import FeaturebankError
from featurebank.spec import FeatureSpec, ModelSpec, Preprocessing

PIXELS = "pixels"
_EPS = 1e-6


@dataclass
class FeatureGraph:
    """A truncated, pooled graph and the spec of each of its outputs."""

    model: onnx.ModelProto
    specs: list[FeatureSpec]
    dims: list[int]
    output_names: list[str]
    model_spec: ModelSpec


def resolve_layer(layers: list[LayerInfo], wanted: str, path: Path) -> LayerInfo:
    """The catalogue entry for a catalogue or tensor name; closest names in the error."""
    for la in layers:
        if wanted in (la.name, la.tensor):
            return la
    names = [la.name for la in layers]
    close = difflib.get_close_matches(wanted, names + [la.tensor for la in layers], n=5, cutoff=0.4)
    hint = f"closest: {', '.join(close)}" if close else f"valid: {', '.join(names[:12])} ..."
    raise FeaturebankError(f"layer {wanted!r} is not in {path.name}; {hint} "
                           f"(see 'featurebank layers {path}')")


def build_feature_graph(
    onnx_path: str | Path,
    layers: list[str] | tuple[str, ...] = ("head",),
    pool: str = "avg",
    gem_p: float = 3.0,
    normalize: bool = False,
    preprocessing: Preprocessing | None = None,
) -> FeatureGraph:
    """Truncate ``onnx_path`` at ``layers`` and pool each cut.

    Parameters
    ----------
    onnx_path : path
        A featurebank export, or any ONNX file with a float NCHW image input (then
        ``preprocessing`` must be given).
    layers : sequence of str
        Catalogue names (``blocks.10``, ``head``) or ONNX tensor names.
    pool : {'avg', 'max', 'gem', 'none'}
        Spatial pooling of 4-D cuts; ``none`` flattens.
    gem_p : float
        Exponent of generalised-mean pooling.
    normalize : bool
        L2-normalise each output vector.
    """
    path = Path(onnx_path)
    info = read_onnx_metadata(path)
    if info.spec is not None:
        model_spec = info.spec
    elif preprocessing is not None:
        model_spec = foreign_model_spec(path, preprocessing)
    else:
        raise FeaturebankError(
            f"{path.name} was not exported by featurebank, so its preprocessing is unknown; "
            "state it (--input-size, --mean, --std or --preprocessing FILE)")
    if not layers:
        raise FeaturebankError("no layer given; name at least one (see 'featurebank layers')")
    chosen = [resolve_layer(info.layers, name, path) for name in dict.fromkeys(layers)]
    specs = [FeatureSpec(model_spec, la.name, pool, gem_p, normalize) for la in chosen]
    proto = load_onnx(path)
    graph = proto.graph
    nodes, inits, outputs, dims = [], [], [], []
    _prepend_normalisation(nodes, inits, info.input_name, model_spec.preprocessing)
    for la in chosen:
        out = f"feat.{la.name}"
        _append_pooling(nodes, inits, la.tensor, out, len(la.shape) + 1, pool, gem_p, normalize)
        outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", None]))
        flat = int(np.prod(la.shape)) if pool == "none" or len(la.shape) != 3 else la.shape[0]
        dims.append(flat)
    kept = _needed_nodes(list(graph.node), [la.tensor for la in chosen])
    used = {i for n in kept for i in n.input}
    h, w = model_spec.preprocessing.input_size
    new_graph = helper.make_graph(
        nodes[:4] + kept + nodes[4:], f"{graph.name or 'model'}_features",
        [helper.make_tensor_value_info(PIXELS, TensorProto.UINT8, ["N", h, w, 3])],
        outputs, initializer=[t for t in graph.initializer if t.name in used] + inits,
    )
    model = helper.make_model(new_graph, opset_imports=proto.opset_import, producer_name="featurebank")
    model.ir_version = proto.ir_version
    for spec in specs:
        model.metadata_props.add(key=f"featurebank.feature.{spec.layer}", value=spec.to_json())
    onnx.checker.check_model(model)
    return FeatureGraph(model, specs, dims, [o.name for o in outputs], model_spec)


def _const(inits: list, name: str, value) -> str:
    inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
    return name


def _prepend_normalisation(nodes: list, inits: list, input_name: str, pre: Preprocessing) -> None:
    # (x / 255 - mean) / std == x * scale + bias, one Mul and one Add on the NCHW tensor.
    std = np.array(pre.std, np.float32)
    mean = np.array(pre.mean, np.float32)
    scale = _const(inits, "fb.scale", (1.0 / (255.0 * std)).reshape(1, 3, 1, 1))
    bias = _const(inits, "fb.bias", (-mean / std).reshape(1, 3, 1, 1))
    nodes += [
        helper.make_node("Cast", [PIXELS], ["fb.pixels_f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["fb.pixels_f"], ["fb.nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Mul", ["fb.nchw", scale], ["fb.scaled"]),
        helper.make_node("Add", ["fb.scaled", bias], [input_name]),
    ]


def _append_pooling(nodes, inits, src, out, rank, pool, gem_p, normalize) -> None:
    p = src.replace("/", "_")
    x = src
    if rank == 4 and pool != "none":
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
        axes = f"{p}.axes"
        inits.append(numpy_helper.from_array(np.array([1], np.int64), axes))
        nodes += [
            helper.make_node("ReduceSumSquare", [target, axes], [f"{p}.ss"], keepdims=1),
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
