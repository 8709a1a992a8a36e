"""The GPU path: float16 feature graphs and IOBinding runs.

* :func:`to_fp16` turns a feature graph (``featurebank.extractor.graphs._cut.build_feature_graph``) into one with
  float16 weights and compute. The uint8 ``pixels`` input and the float32 outputs stay as they
  are, so callers see no difference. The normalisation in front (uint8 -> float, scale, shift)
  and the pooling tail behind each cut stay float32: a sum of squares (L2 normalisation) or a
  flattened feature map (``pool='none'``) overflows float16's 65504 easily, and both cost nothing
  next to the convolutions.
* :class:`BoundRunner` runs a session through an IOBinding: on CUDA the pixels are copied to
  the device once, into a buffer reused while the batch shape stays the same, and the outputs
  are allocated on the device and copied out once. The uint8 -> float normalisation is part of
  the graph, so on CUDA it runs on the GPU: only uint8 bytes cross the bus.

The conversion uses ``onnxruntime.transformers.float16``, onnxruntime's own version of
onnxconverter-common's converter, shipped in both ``onnxruntime`` and ``onnxruntime-gpu``: the
GPU path needs no package beyond the ``gpu`` extra.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from featurebank.errors import FeaturebankError
from featurebank.extractor.graphs._cut import PIXELS

# Ops the pooling tail of featurebank.extractor.graphs._cut is built from (see graph._append_pooling).
_POOL_OPS = {"GlobalAveragePool", "GlobalMaxPool", "Clip", "Pow", "Flatten", "ReduceSumSquare",
             "Sqrt", "Max", "Div"}


def _split(graph: onnx.GraphProto) -> tuple[list, list, list]:
    """(head, core, tail) nodes of a feature graph; head and tail stay float32.

    The head reads the uint8 pixels or one of graph.py's ``fb.`` tensors (the normalisation).
    The tail is the pooling behind the cuts: nodes of pooling ops all of whose outputs feed only
    the tail or the graph outputs, found walking back from the outputs.
    """
    nodes = list(graph.node)
    head = [n for n in nodes if any(i == PIXELS or i.startswith("fb.") for i in n.input)]
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for name in n.input:
            consumers.setdefault(name, []).append(i)
    outputs = {o.name for o in graph.output}
    tail: set[int] = set()
    for i in reversed(range(len(nodes))):  # consumers come later in a sorted graph
        n = nodes[i]
        if n.op_type in _POOL_OPS and all(
                o in outputs or (consumers.get(o) and set(consumers[o]) <= tail) for o in n.output):
            tail.add(i)
    held = {id(n) for n in head} | {id(nodes[i]) for i in tail}
    core = [n for n in nodes if id(n) not in held]
    return head, core, [nodes[i] for i in sorted(tail)]


def _sorted(nodes: list, available: set[str]) -> list:
    """``nodes`` in topological order, stable (the converter appends its input casts last)."""
    available = set(available) | {""}
    pending, ordered = list(nodes), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise FeaturebankError(f"fp16 conversion left a cycle or a dangling input near "
                                   f"{pending[0].op_type} node {pending[0].name!r}")
        for n in ready:
            available.update(n.output)
        ordered += ready
        taken = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in taken]
    return ordered


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of a feature graph with the same uint8 input and float32 outputs.

    Parameters
    ----------
    model : onnx.ModelProto
        A feature graph (input ``pixels`` uint8 NHWC, float32 outputs); not modified.

    Returns
    -------
    onnx.ModelProto
        Weights and backbone compute in float16; normalisation and pooling in float32.

    Raises
    ------
    FeaturebankError
        When the model has no ``pixels`` input or the converter is not installed.
    """
    if [i.name for i in model.graph.input] != [PIXELS]:
        raise FeaturebankError(
            f"to_fp16 expects a feature graph with one input {PIXELS!r} (from "
            f"featurebank.extractor.graphs._cut.build_feature_graph), got inputs {[i.name for i in model.graph.input]}")
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:  # a trimmed onnxruntime build without its python tools
        raise FeaturebankError(
            "precision 'fp16' needs onnxruntime's float16 converter (onnxruntime.transformers."
            f"float16), which this onnxruntime install lacks ({exc}); reinstall onnxruntime or "
            "onnxruntime-gpu, or use precision 'fp32'") from exc
    # Convert the backbone alone, as a model with float32 inputs and outputs (the converter
    # casts at its borders), then put the float32 head and tail back around it. Blocking the
    # head and tail inside one conversion instead leaves casts out of topological order.
    g = model.graph
    head, core, tail = _split(g)
    inits = {t.name: t for t in g.initializer}
    made = {o for n in core for o in n.output}
    read = {i for n in core for i in n.input}
    outer = [_copy(n) for n in head + tail]  # copies: their inputs may be renamed below
    outside = {i for n in outer for i in n.input} | {o.name for o in g.output}
    core_graph = helper.make_graph(
        core, "backbone",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
         for n in sorted(read - made - set(inits) - {""})],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in sorted(made & outside)],
        initializer=[inits[n] for n in sorted(read & set(inits))])
    core_model = helper.make_model(core_graph, opset_imports=model.opset_import)
    core_model.ir_version = model.ir_version
    half = convert_float_to_float16(core_model, keep_io_types=True).graph
    # A constant read by both sides (a ReLU6 bound) becomes float16 in the backbone; the
    # float32 side gets its own copy.
    shared = outside & read & set(inits)
    for n in outer:
        n.input[:] = [f"{i}.fp32" if i in shared else i for i in n.input]
    initializers = [t for name, t in inits.items() if name not in read] + list(half.initializer)
    for name in sorted(shared):
        initializers.append(_copy(inits[name]))
        initializers[-1].name = f"{name}.fp32"
    nodes = _sorted(outer[:len(head)] + list(half.node) + outer[len(head):],
                    {PIXELS} | {t.name for t in initializers})
    out = helper.make_model(
        helper.make_graph(nodes, g.name, list(g.input), list(g.output), initializer=initializers),
        opset_imports=model.opset_import, producer_name=model.producer_name)
    out.ir_version = model.ir_version
    out.metadata_props.extend(model.metadata_props)
    onnx.checker.check_model(out)
    return out


def _copy(message):
    copy = type(message)()
    copy.CopyFrom(message)
    return copy


def session_device(session: ort.InferenceSession) -> tuple[str, int]:
    """``('cuda', device_id)`` when the session runs on CUDA (or TensorRT), else ``('cpu', 0)``."""
    providers = session.get_providers()
    for name in ("TensorrtExecutionProvider", "CUDAExecutionProvider"):
        if name in providers:
            options = session.get_provider_options().get(name, {})
            return "cuda", int(options.get("device_id", 0) or 0)
    return "cpu", 0


class BoundRunner:
    """Run a session through an IOBinding: input copied once, outputs kept on the device.

    Parameters
    ----------
    session : onnxruntime.InferenceSession
        A feature-graph session (input ``pixels``), on CUDA or CPU.
    output_names : sequence of str
        The outputs to return, in order.

    Notes
    -----
    Results equal ``session.run(output_names, {"pixels": pixels})``. Each thread keeps its own
    device input buffer, reused while the batch shape stays the same, so concurrent callers
    never overwrite each other's pixels.
    """

    def __init__(self, session: ort.InferenceSession, output_names: Sequence[str]):
        self.session = session
        self.output_names = list(output_names)
        self.device, self.device_id = session_device(session)
        self._local = threading.local()

    def _device_input(self, pixels: np.ndarray) -> ort.OrtValue:
        value = getattr(self._local, "value", None)
        if value is not None and tuple(value.shape()) == pixels.shape:
            value.update_inplace(pixels)  # same device memory: no new allocation per batch
        else:
            value = ort.OrtValue.ortvalue_from_numpy(pixels, self.device, self.device_id)
            self._local.value = value
        return value

    def run(self, pixels: np.ndarray) -> list[np.ndarray]:
        """One float32 array per output for uint8 ``[N, H, W, 3]`` ``pixels``."""
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        binding = self.session.io_binding()
        if self.device == "cpu":
            binding.bind_cpu_input(PIXELS, pixels)
        else:
            binding.bind_ortvalue_input(PIXELS, self._device_input(pixels))
        for name in self.output_names:
            binding.bind_output(name, self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return binding.copy_outputs_to_cpu()
