"""Running a foreign graph with every tensor it computes from the image kept as an output: the
runs the batch plan compares and the probe run that measures shapes static inference loses."""

from __future__ import annotations

import numpy as np
import onnx

from featurebank.export._graph_ops import static_tensors


def graph_input(proto: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The graph's data input (the first input that is not a weight)."""
    weights = {t.name for t in proto.graph.initializer}
    return next(i for i in proto.graph.input if i.name not in weights)


def probe_shapes(proto: onnx.ModelProto) -> tuple[dict[str, tuple], dict[str, int]]:
    """Shapes (batch axis first) and element types of the float tensors computed from the
    image, from one run on a probe image; empty where the input shape is not fully known or
    the graph does not run (then the catalogue keeps what static inference gives)."""
    tensor_type = graph_input(proto).type.tensor_type
    dims = [d.dim_value for d in tensor_type.shape.dim]
    dims[:1] = [max(1, dims[0])] if dims else []  # a dynamic batch: one image
    if not dims or min(dims) < 1 or tensor_type.elem_type in (0, onnx.TensorProto.STRING):
        return {}, {}
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
    probe = np.random.default_rng(0).uniform(0, 1, dims).astype(dtype)
    try:
        ran = run(with_every_output(proto), probe)
    except Exception:  # noqa: BLE001 - onnxruntime raises many types; inference stays the source
        return {}, {}
    floats = {t: v for t, v in ran.items() if floating(v) and v.ndim >= 1 and len(v) == dims[0]}
    return ({t: tuple(v.shape) for t, v in floats.items()},
            {t: int(onnx.helper.np_dtype_to_tensor_dtype(v.dtype)) for t, v in floats.items()})


def plain(proto: onnx.ModelProto) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    del model.graph.value_info[:]
    return model


def with_every_output(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every image-dependent node output also a graph output."""
    model = plain(model)
    have = {o.name for o in model.graph.output}
    static = static_tensors(model)
    for node in model.graph.node:
        for out in node.output:
            if out and out not in have and out not in static:
                model.graph.output.append(onnx.helper.make_empty_tensor_value_info(out))
                have.add(out)
    return model


def ort_session(model: onnx.ModelProto):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # failures are reported in the user's terms
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort_session(model)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {session.get_inputs()[0].name: x}), strict=True))


def run_in_chunks(model: onnx.ModelProto, images: np.ndarray,
                   batch: int) -> dict[str, list[np.ndarray]]:
    """Every output for ``images`` fed ``batch`` at a time (padded with the last image): one
    array per chunk."""
    session = ort_session(model)
    names = [o.name for o in session.get_outputs()]
    feed = session.get_inputs()[0].name
    chunks = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        pad = np.repeat(chunk[-1:], batch - len(chunk), axis=0)
        chunks.append(session.run(None, {feed: np.concatenate([chunk, pad])}))
    return {name: [c[k] for c in chunks] for k, name in enumerate(names)}


def floating(value: np.ndarray) -> bool:
    return value.dtype in (np.float16, np.float32, np.float64)
