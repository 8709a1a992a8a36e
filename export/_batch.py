"""A foreign graph's batch axis: made dynamic where the graph allows, kept where it does not.

Model-zoo graphs are often exported at a fixed batch of 1: the input is ``[1, 3, 224, 224]``
and a ``Reshape`` to ``[1, -1]`` (or a ``Flatten`` on axis 0) sits before the classifier; a
ViT's class token goes through an ``Expand`` to a batch of 1. :func:`rewrite_batch` declares
the input's batch axis symbolic and turns those batch constants into "copy the input's
batch" (``[0, -1]``; the input's batch for the ``Expand``). The rewrite is trusted only when
:func:`plan_batch` has run it: on a batch of images, every floating-point tensor it computes
from the image must equal what the untouched graph computes on the images one at a time
(within 1e-5, relative to ``max(1, max |reference|)``; a float16 tensor within 4 of its own
units in the last place). If not, the batch axis alone is tried; otherwise the graph keeps its
own batch and featurebank feeds it chunks of that batch (``featurebank.extractor.graphs``
wraps it in a ``Scan``; a graph older than opset 11 is converted for that, and checked): a
graph that runs on one image is never refused.

The same runs measure the shape of every float tensor, for the layer catalogue.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx
import onnx.version_converter
from onnx import numpy_helper

from featurebank.errors import FeaturebankError
from featurebank.export._catalogue import catalogue_and_rule
from featurebank.export._friendly_tokens import settle_tokens, transformer_graph
from featurebank.export._graph_ops import static_tensors
from featurebank.export._runs import (
    floating,
    graph_input,
    plain,
    run,
    run_in_chunks,
    with_every_output,
)

log = logging.getLogger(__name__)
#: Largest difference accepted between the rewritten graph on a batch and the original graph on
#: one image at a time: max |a - b| / max(1, max |b|), per tensor.
PARITY_TOLERANCE = 1e-5
#: The oldest opset whose ops feed a fixed-batch graph chunks (Pad and Slice with inputs).
CHUNK_OPSET = 11
#: Images in the parity check (a batch of 3: a batch axis of 2 can hide a transposed one).
CHECK_IMAGES = 3


@dataclass(frozen=True)
class BatchPlan:
    """How featurebank runs a foreign graph.

    Attributes
    ----------
    model : onnx.ModelProto
        The graph to run: rewritten for any batch, or the original (exporter shapes dropped).
    batch : int or None
        None: any batch size. Else the graph runs only at this batch size, and featurebank
        feeds it chunks of that many images.
    changes : tuple of str
        What the rewrite changed (empty when nothing needed changing or it was not kept).
    worst : float or None
        Largest relative difference of the rewritten graph on a batch from the original on one
        image at a time, over every float tensor (None when the rewrite was not run).
    measured : dict
        Shape (batch axis first, as run) of every floating-point tensor of the original graph
        computed from the image.
    dtypes : dict
        ONNX element type of each measured tensor.
    reason : str or None
        Why the batch stays fixed.
    """

    model: onnx.ModelProto
    batch: int | None
    changes: tuple[str, ...] = ()
    worst: float | None = None
    measured: dict[str, tuple] = field(default_factory=dict)
    reason: str | None = None
    dtypes: dict[str, int] = field(default_factory=dict)


def declared_batch(proto: onnx.ModelProto) -> int | None:
    """The batch size the graph input declares (None when its first axis is symbolic)."""
    dims = graph_input(proto).type.tensor_type.shape.dim
    return int(dims[0].dim_value) if dims and dims[0].dim_value > 0 else None


def rewrite_batch(proto: onnx.ModelProto, batch: int = 1,
                  rewrite_constants: bool = True) -> tuple[onnx.ModelProto, list[str]]:
    """A copy that takes any batch: symbolic batch axis on the input and outputs and, with
    ``rewrite_constants``, the batch constants of ``Reshape`` (a leading ``batch``) and
    ``Flatten(axis=0)`` of image data made batch-free, and learned tokens put through an
    ``Expand`` to a batch of 1 (a ViT's class token) expanded to the input's batch.

    Returns the copy and a description of each change. The copy is a candidate: only
    :func:`plan_batch` decides whether it computes what the original does.
    """
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    del model.graph.value_info[:]  # exporter shapes with a fixed batch would contradict runs
    for vi in [graph_input(model), *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "N"
    constants = {t.name: t for t in model.graph.initializer}
    constants.update({n.output[0]: a.t for n in model.graph.node if n.op_type == "Constant"
                      for a in n.attribute if a.name == "value"})
    changes: list[str] = []
    replaced: list[str] = []
    static = static_tensors(model)  # a Reshape of constants does not depend on the batch
    for k, node in enumerate(model.graph.node):
        if not rewrite_constants or not node.input or node.input[0] in static:
            continue
        if node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in constants:
            shape = numpy_helper.to_array(constants[node.input[1]]).astype(np.int64).ravel()
            if len(shape) < 2 or shape[0] != batch:
                continue
            allow_zero = any(a.name == "allowzero" and a.i for a in node.attribute)
            if allow_zero and -1 in shape[1:]:
                continue  # 0 would mean an empty axis and -1 is taken: leave it to the check
            shape[0] = -1 if allow_zero else 0  # 0: copy the input's batch axis
            shape_name, name = node.input[1], f"{node.input[1]}.fb_any_batch.{k}"
            model.graph.initializer.append(numpy_helper.from_array(shape, name))
            if model.ir_version < 4:  # then every initializer is also a graph input
                model.graph.input.append(onnx.helper.make_tensor_value_info(
                    name, onnx.TensorProto.INT64, list(shape.shape)))
            node.input[1] = name
            changes.append(f"Reshape {node.name or node.output[0]!r}: shape "
                           f"[{batch}, ...] -> [{shape[0]}, ...]")
            replaced.append(shape_name)
        elif node.op_type == "Flatten" and batch == 1:
            axis = next((a for a in node.attribute if a.name == "axis"), None)
            if axis is not None and axis.i == 0:
                axis.i = 1
                changes.append(f"Flatten {node.name or node.output[0]!r}: axis 0 -> 1")
    if rewrite_constants and batch == 1:
        _expand_to_any_batch(model, static, changes)
    for shape_name in replaced:  # after the loop: deleting a node inside it would skip one
        _drop_if_unused(model, shape_name)
    return model, changes


def _expand_to_any_batch(model: onnx.ModelProto, static: set[str], changes: list[str]) -> None:
    """Learned tokens expanded to a batch of 1 (a ViT's class token: ``cls.expand(B, -1, -1)``
    traced at batch 1 becomes a constant shape) are expanded to ``[N, 1, ..., 1]`` instead, N
    read from the input's shape; broadcasting keeps their other axes."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    weights = {t.name: t for t in model.graph.initializer}
    read = {i for n in model.graph.node if any(o not in static for o in n.output) for i in n.input}
    targets = [n for n in model.graph.node if n.op_type == "Expand" and n.output[0] in read
               and n.input[0] in weights and list(weights[n.input[0]].dims[:1]) == [1]]
    if not targets or opset < 10 or model.ir_version < 4:
        return
    make = onnx.helper.make_node
    for name, value in (("fb.zero", [0]), ("fb.one", [1])):
        model.graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), name))
    added = [make("Shape", [graph_input(model).name], ["fb.input_shape"]),
             make("Slice", ["fb.input_shape", "fb.zero", "fb.one"], ["fb.input_batch"])]
    for k, node in enumerate(targets):
        ones = f"fb.ones.{k}"
        rank = len(weights[node.input[0]].dims)
        model.graph.initializer.append(numpy_helper.from_array(np.ones(rank - 1, np.int64), ones))
        added.append(make("Concat", ["fb.input_batch", ones], [f"fb.expand_shape.{k}"], axis=0))
        node.input[1] = f"fb.expand_shape.{k}"
        changes.append(f"Expand {node.name or node.output[0]!r} of {node.input[0]!r}: batch 1 "
                       f"-> the input's batch")
    nodes = added + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _drop_if_unused(model: onnx.ModelProto, name: str) -> None:
    """Remove the constant ``name`` (an initializer or a Constant node) once nothing reads it."""
    g = model.graph
    if any(name in n.input for n in g.node) or name in {o.name for o in g.output}:
        return
    for k, t in enumerate(g.initializer):
        if t.name == name:
            del g.initializer[k]
            for j, i in enumerate(g.input):
                if i.name == name:
                    del g.input[j]
                    break
            return
    for k, n in enumerate(g.node):
        if n.op_type == "Constant" and list(n.output) == [name]:
            del g.node[k]
            return


def plan_batch(proto: onnx.ModelProto, input_shape: tuple[int, ...], pixel_range: float = 1.0,
               name: str = "the model") -> BatchPlan:
    """Decide how the graph runs batches, by running it.

    Parameters
    ----------
    proto : onnx.ModelProto
        The foreign graph (not modified).
    input_shape : tuple of int
        The shape of one image as the graph takes it, without the batch axis.
    pixel_range : float
        Inputs are drawn uniformly from ``[0, pixel_range]``.
    name : str
        How errors name the model.

    Raises
    ------
    FeaturebankError
        The graph does not run even on one image (at its own batch size).
    """
    own = declared_batch(proto) or 1
    rng = np.random.default_rng(0)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(graph_input(proto).type.tensor_type.elem_type)
    images = rng.uniform(0, pixel_range, (CHECK_IMAGES, *input_shape)).astype(dtype)
    original = with_every_output(proto)
    try:
        chunks = run_in_chunks(original, images, own)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types; all mean "cannot run"
        raise FeaturebankError(
            f"{name} cannot run on {'one image' if own == 1 else f'a batch of {own}'} of "
            f"{'x'.join(map(str, input_shape))}: {str(exc).splitlines()[0][:300]}; state the "
            f"input size and layout the model was made for") from None
    reference = _leading(chunks, own)
    per_image = {t: v for t, v in reference.items() if floating(v)}
    measured = {t: (own, *v.shape[1:]) for t, v in per_image.items()}
    dtypes = {t: int(onnx.helper.np_dtype_to_tensor_dtype(v.dtype)) for t, v in per_image.items()}
    why, rewritten = None, True
    for rewrite_constants in (True, False):  # the rewrite, then the batch axis alone
        candidate, changes = rewrite_batch(proto, own, rewrite_constants)
        if not rewrite_constants and not rewritten:
            break  # the rewrite changed no constant: the same graph failed already
        rewritten = bool(changes)
        try:
            batched = run(with_every_output(candidate), images)
        except Exception as exc:  # noqa: BLE001 - a graph that bakes in its batch in other ways
            why = why or (f"it does not run on a batch of {CHECK_IMAGES} after the rewrite "
                          f"({str(exc).splitlines()[0][:200]})")
            continue
        worst, failed = _compare(chunks, batched, own)
        if failed is None:
            if changes:
                log.info("%s: batch axis made dynamic (%s); parity %.1e", name,
                         "; ".join(changes), worst)
            return BatchPlan(candidate, None, tuple(changes), worst, measured, None, dtypes)
        why = why or failed
    return replace(_fixed(proto, own, measured, why, chunks, images, name), dtypes=dtypes)


def _fixed(proto, batch, measured, reason, reference, images, name) -> BatchPlan:
    log.warning("%s keeps its batch of %d (featurebank feeds it chunks of that size): %s",
                name, batch, reason)
    model = plain(proto)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < CHUNK_OPSET:  # feeding chunks needs newer ops: convert, and check the result
        try:
            model = onnx.version_converter.convert_version(model, CHUNK_OPSET)
            converted = run_in_chunks(with_every_output(model), images, batch)
            _, why = _compare(reference, _leading(converted, batch), batch)
        except Exception as exc:  # noqa: BLE001 - the converter and onnxruntime raise many types
            why = str(exc).splitlines()[0][:200]
        if why is not None:
            raise FeaturebankError(
                f"{name} runs only at a batch of {batch} ({reason}), and its ONNX opset {opset} "
                f"is too old to feed it chunks; converting it to opset {CHUNK_OPSET} failed "
                f"({why}). Export it with a dynamic batch axis or a newer opset") from None
    return BatchPlan(model, batch, (), None, measured, reason)


def _leading(chunks: dict[str, list[np.ndarray]], batch: int) -> dict[str, np.ndarray]:
    """The outputs whose leading axis is the batch (``batch`` long in every chunk), joined
    along it and cut to :data:`CHECK_IMAGES` images."""
    return {name: np.concatenate(parts)[:CHECK_IMAGES] for name, parts in chunks.items()
            if all(p.ndim >= 1 and len(p) == batch for p in parts)}


def _batch_axis(one: tuple, got: np.ndarray | None, batch: int) -> int | None:
    """The axis that is ``batch`` long in a chunk's output (shape ``one``) and
    :data:`CHECK_IMAGES` long in the batched run's (``got``), all others equal; axis 0 first
    (a ViT's stacked query, key and value ``[3, N, heads, T, d]`` carry it on axis 1)."""
    if got is None or got.ndim != len(one):
        return None
    for axis in range(len(one)):
        if one[axis] == batch and got.shape[axis] == CHECK_IMAGES and \
                all(a == b for k, (a, b) in enumerate(zip(one, got.shape, strict=True))
                    if k != axis):
            return axis
    return None


def _compare(chunks: dict[str, list[np.ndarray]], batched: dict,
             batch: int) -> tuple[float, str | None]:
    """Worst relative difference over the float tensors computed per image (the run in
    chunks of ``batch``, joined along each tensor's batch axis, against ``batched``), and why
    the rewrite is rejected (None when it is kept)."""
    worst = 0.0
    for tensor, parts in chunks.items():
        if not floating(parts[0]) or parts[0].ndim < 1:
            continue  # shapes, indices
        got = batched.get(tensor)
        axis = _batch_axis(parts[0].shape, got, batch)
        if axis is None or got is None:  # (got is None gives no axis: said for mypy)
            if not all(len(p) == batch for p in parts):
                continue  # not per image: constants
            shown = [len(parts) * batch, *parts[0].shape[1:]]
            return worst, (f"tensor {tensor!r} comes out as {None if got is None else list(got.shape)}"
                           f" for a batch of {CHECK_IMAGES}, {shown} one image at a time")
        ref = np.concatenate(parts, axis).take(range(CHECK_IMAGES), axis).astype(np.float64)
        got = got.astype(np.float64)
        diff = float(np.abs(got - ref).max(initial=0.0)) / max(1.0, float(np.abs(ref).max(initial=0.0)))
        # a float16 tensor is as exact as float16 is: a few of its units in the last place
        tolerance = max(PARITY_TOLERANCE, 4 * float(np.finfo(parts[0].dtype).eps))
        if not diff <= tolerance:  # also catches NaN
            return diff, (f"tensor {tensor!r} differs by {diff:.1e} on a batch from one image "
                          f"at a time (tolerance {tolerance:g})")
        worst = max(worst, diff)
    return worst, None


def prepare_foreign(proto: onnx.ModelProto, pre,
                    name: str = "the model") -> tuple[BatchPlan, list, Any, int]:
    """How a foreign graph runs batches (:func:`plan_batch`), its layer catalogue built on
    the measured shapes, and ``pre`` completed with what the graph shows (a vision
    transformer's prefix tokens, :func:`featurebank.export._friendly_tokens.settle_tokens`):
    what ``adopt`` records, and what a one-off ``--preprocessing`` run uses, so both give the
    same names, vectors and fingerprints; and the naming rule those names need (the spec's
    ``naming``, see :func:`featurebank.export._catalogue.catalogue_and_rule`).

    ``pre`` is the model's :class:`featurebank.spec.Preprocessing`.
    """
    h, w = pre.input_size
    plan = plan_batch(proto, (3, h, w) if pre.layout == "nchw" else (h, w, 3), pre.pixel_range,
                      name)
    layers, rule = catalogue_and_rule(proto, pre.layout.upper(), pre.input_size,
                                      dict(pre.tensor_layouts), plan.measured, plan.dtypes)
    return plan, layers, settle_tokens(pre, transformer_graph(proto, plan.measured), name), rule
