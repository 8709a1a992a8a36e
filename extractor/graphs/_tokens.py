"""Transformer token cuts: ``[N, T, C]`` activations (layout ``tokens``) pooled in the graph.

A vision transformer's blocks output ``T = prefix + patches`` tokens of ``C`` channels; the
prefix is the class token (first) and any register tokens. Pools:

- ``cls``: the class token, ``x[:, 0]``; refused where the model has none;
- ``mean``: the mean over the patch tokens only, ``x[:, prefix:].mean(1)`` (class and register
  tokens left out);
- ``cls+mean``: both, concatenated (``2C``);
- ``none``: every token, flattened (``T * C``).

How many prefix tokens a model has is part of its preprocessing spec (``prefix_tokens``): the
export of a timm/torchvision ViT writes it; a ViT adopted from ONNX gets it from its graph
where the graph shows it (:mod:`featurebank.export._friendly_tokens`), else must state it, or
its token cuts are refused (a wrong count would average class tokens into the patch mean
silently).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from featurebank.errors import FeaturebankError
from featurebank.export import LayerInfo, infer_shapes
from featurebank.spec import SPATIAL_POOLS, TOKEN_POOLS, ModelSpec, Preprocessing

TOKENS = "tokens"


def token_layer(proto: onnx.ModelProto, tensor: str, pre: Preprocessing | None) -> LayerInfo | None:
    """A catalogue entry for a 3-D tensor of a foreign graph named by the user, else None."""
    if pre is None or tensor not in {o for n in proto.graph.node for o in n.output}:
        return None
    dims = None
    if pre.layout == "nchw":
        dims = [1, 3, *pre.input_size]
    elif pre.layout == "nhwc":
        dims = [1, *pre.input_size, 3]
    shape = infer_shapes(proto, dims).get(tensor, ())
    if len(shape) != 3:
        return None
    if pre.prefix_tokens is None:  # [N, C, L] is 3-D too: tokens only where the user says so
        raise FeaturebankError(
            f"tensor {tensor!r} has 3 dimensions (shape {shape[1]}x{shape[2]} after the batch); "
            f"featurebank cuts 4-D maps, 2-D vectors and a vision transformer's [N, tokens, "
            f"channels] outputs, the latter once the model states how many tokens come before "
            f"the patch tokens: 'featurebank adopt FILE.onnx ... --prefix-tokens N' (or "
            f"'featurebank adopt FILE.onnx ... --prefix-tokens N --no-class-token' if the first "
            f"is not a class token; prefix_tokens and class_token in a preprocessing file)")
    return LayerInfo(tensor, tensor, tuple(shape[1:]), None, TOKENS)


def token_layout(la: LayerInfo, model_spec: ModelSpec, path: Path) -> str:
    """``tokens`` for a 3-D cut whose prefix tokens are known; a refusal that says why else."""
    pre = model_spec.preprocessing
    if la.layout != TOKENS:
        raise FeaturebankError(
            f"layer {la.name!r} of {path.name} has shape {list(la.shape)} after the batch "
            f"(3-D) and is not a transformer token output; featurebank cuts 4-D maps, "
            f"[N, tokens, channels] token outputs and 2-D vectors")
    if pre.prefix_tokens is None:
        raise FeaturebankError(
            f"layer {la.name!r} of {path.name} holds transformer tokens, but the model does not "
            f"say how many of them come before the patch tokens (class and register tokens); "
            f"state it: 'featurebank adopt {path.name} ... --prefix-tokens N' (or "
            f"'featurebank adopt {path.name} ... --prefix-tokens N --no-class-token' if the "
            f"first is not a class token; prefix_tokens = N in a preprocessing file), then "
            f"adopt or embed again")
    if pre.prefix_tokens >= la.shape[0]:
        raise FeaturebankError(
            f"layer {la.name!r} of {path.name} has {la.shape[0]} tokens, not more than its "
            f"stated {pre.prefix_tokens} prefix tokens; is prefix_tokens right?")
    return TOKENS


def check_pool(pool: str, layout: str, la: LayerInfo, model_spec: ModelSpec, path: Path) -> None:
    """Refuse a pool that does not apply to the cut's layout (spatial pools on tokens, ...)."""
    if layout == TOKENS and pool in SPATIAL_POOLS:
        raise FeaturebankError(
            f"pool {pool!r} pools spatial maps, but layer {la.name!r} of {path.name} holds "
            f"transformer tokens; use pool 'cls' (class token), 'mean' (patch tokens), "
            f"'cls+mean' or 'none'")
    if layout != TOKENS and pool in TOKEN_POOLS and layout != "NC":
        raise FeaturebankError(
            f"pool {pool!r} pools transformer tokens, but layer {la.name!r} of {path.name} is a "
            f"{layout} map; use pool 'avg', 'max', 'gem' or 'none'")
    if layout == TOKENS and "cls" in pool and model_spec.preprocessing.class_token is None:
        raise FeaturebankError(
            f"pool {pool!r} takes the class token, but the graph of {path.name} does not show "
            f"whether its first prefix token is one (its head pools the patch tokens); adopt "
            f"it again stating it: 'featurebank adopt SOURCE.onnx ... --class-token' "
            f"('featurebank adopt SOURCE.onnx ... --no-class-token' for register tokens; "
            f"class_token = true in a preprocessing "
            f"file), or use pool 'mean'")
    if layout == TOKENS and "cls" in pool and not model_spec.preprocessing.class_token:
        raise FeaturebankError(
            f"pool {pool!r} takes the class token, but {path.name} has none (its "
            f"{model_spec.preprocessing.prefix_tokens} prefix token(s) are registers); use "
            f"pool 'mean'")


def pooled_dim(la: LayerInfo, pool: str) -> int:
    tokens, channels = la.shape
    return {"cls": channels, "mean": channels, "cls+mean": 2 * channels}.get(pool, tokens * channels)


def append_token_pool(nodes: list, inits: list, src: str, pool: str, prefix_tokens: int,
                      opset: int, p: str) -> str:
    """Nodes pooling ``src`` ``[N, T, C]`` to ``[N, D]``; returns the pooled tensor's name."""
    if pool == "none":
        return src  # the Flatten after it gives [N, T * C]
    parts = []
    if "cls" in pool:
        zero = numpy_helper.from_array(np.array(0, np.int64), f"{p}.cls_index")
        inits.append(zero)
        nodes.append(helper.make_node("Gather", [src, zero.name], [f"{p}.cls"], axis=1))
        parts.append(f"{p}.cls")
    if "mean" in pool:
        for name, value in (("start", prefix_tokens), ("end", np.iinfo(np.int64).max),
                            ("axis", 1)):
            inits.append(numpy_helper.from_array(np.array([value], np.int64), f"{p}.{name}"))
        nodes.append(helper.make_node("Slice", [src, f"{p}.start", f"{p}.end", f"{p}.axis"],
                                      [f"{p}.patches"]))
        if opset >= 18:  # axes became an input in opset 18; foreign graphs may be older
            nodes.append(helper.make_node("ReduceMean", [f"{p}.patches", f"{p}.axis"],
                                          [f"{p}.mean"], keepdims=0))
        else:
            nodes.append(helper.make_node("ReduceMean", [f"{p}.patches"], [f"{p}.mean"],
                                          axes=[1], keepdims=0))
        parts.append(f"{p}.mean")
    if len(parts) == 1:
        return parts[0]
    nodes.append(helper.make_node("Concat", parts, [f"{p}.tokpool"], axis=1))
    return f"{p}.tokpool"
