"""Static int8 quantization of a feature graph (onnxruntime QDQ, per-channel weights).

Calibration feeds uint8 ``pixels`` batches decoded from the user's own images, so activation
ranges match the data the graph will see. The pooling tail stays float (cheap and sensitive);
where the input normalisation is an exact zero point and scale, the uint8 pixels feed the first
convolution as its quantized input (:func:`_pixels_as_quantized_input`).
:func:`int8_feature_graph` is what ``Extractor(precision="int8")`` uses: a cached int8 graph with
specs of its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from featurebank.errors import FeaturebankError
from featurebank.export import cache_dir

# The options `precision="int8"` uses: every convolution but the first and last int8, weights in
# a 7-bit range (reduce_range: AVX2 without VNNI saturates full-range u8s8 products; without it
# cosine to fp32 fell from 0.95 to 0.82). Chosen among the variants of benchmarks/int8.py.
INT8_OPTIONS: dict = {"keep_float_convs": 1, "reduce_range": True}
FLOAT_DIGEST_KEY = "featurebank.float_graph_sha256"  # metadata: the float graph it came from

_FLOAT_OPS = {"Cast", "Transpose", "Mul", "Add", "Sub", "Div", "ReduceMean", "GlobalAveragePool",
              "Pow", "ReduceL2", "Flatten", "Reshape", "Squeeze", "Clip", "Max", "Sqrt"}


def _excluded_nodes(model: onnx.ModelProto, keep_float_convs: int = 4,
                    exclude_depthwise: bool = False) -> list[str]:
    """Nodes kept in float: the input preprocessing, the pooling tail and the first and last
    ``keep_float_convs`` convolutions (see benchmarks/int8.py for what each choice measured)."""
    nodes = list(model.graph.node)
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    if not convs:
        raise FeaturebankError("quantize: the graph has no Conv node; nothing to quantize")
    edge = nodes[: convs[0]] + nodes[convs[-1] + 1:]
    k = min(keep_float_convs, len(convs) // 2)
    kept = [nodes[i] for i in convs[:k] + convs[len(convs) - k:]] if k else []
    if exclude_depthwise:
        kept += [nodes[i] for i in convs if _is_depthwise(nodes[i])]
    return [n.name for n in edge if n.name and n.op_type in _FLOAT_OPS] + [n.name for n in kept]


def _is_depthwise(node: onnx.NodeProto) -> bool:
    return any(a.name == "group" and a.i > 1 for a in node.attribute)


def int8_feature_graph(graph, calibration: np.ndarray | str, cache: str | Path | None = None,
                       options: dict | None = None):
    """The int8 twin of a :class:`featurebank.extractor.graphs._cut.FeatureGraph`, cached on disk.

    Parameters
    ----------
    graph : FeatureGraph
        The float feature graph.
    calibration : uint8 array [N, H, W, 3], or str
        Decoded calibration images (the user's own), or the ``int8-<digest>`` tag of a graph
        quantized before (``FeatureSpec.quantization``), to find it again in the cache.
    cache : path, optional
        Cache folder (default: featurebank's cache, ``$FEATUREBANK_CACHE``).
    options : dict, optional
        Keyword arguments of :func:`quantize_feature_graph` (default :data:`INT8_OPTIONS`);
        unused when ``calibration`` is a tag.

    Returns
    -------
    FeatureGraph
        The quantized model; each spec's ``quantization`` is ``int8-<digest>``, where the digest
        covers the float graph, the calibration pixels and the options: int8 vectors
        get fingerprints of their own and never mix with float ones in a store.
    """
    float_digest = hashlib.sha256(graph.model.SerializeToString()).hexdigest()
    if isinstance(calibration, str):
        path = int8_graph_path(calibration, cache)
        if not path.is_file():
            raise FeaturebankError(
                f"int8 graph {calibration} is not in the cache ({path}); it was calibrated "
                f"elsewhere: copy that file here, or re-embed with precision='int8' and retrain")
    else:
        pixels = np.ascontiguousarray(calibration, np.uint8)
        digest_of = hashlib.sha256(float_digest.encode())
        digest_of.update(pixels.tobytes())
        options = INT8_OPTIONS if options is None else options
        digest_of.update(json.dumps(options, sort_keys=True).encode())
        path = int8_graph_path(digest_of.hexdigest()[:16], cache)
        if not path.is_file():  # quantize once per (graph, calibration); atomic for racing runs
            tmp = path.with_name(f".{path.stem}.{os.getpid()}.onnx")
            quantize_feature_graph(graph.model, list(pixels), tmp,
                                   metadata={FLOAT_DIGEST_KEY: float_digest}, **options)
            os.replace(tmp, path)
    model = onnx.load(path)
    made_from = {p.key: p.value for p in model.metadata_props}.get(FLOAT_DIGEST_KEY)
    if made_from != float_digest:  # a tag reused with another model, layer set or pooling
        raise FeaturebankError(f"int8 graph {path.name} was quantized from another feature graph "
                               "(model, layers or pooling differ); use the spec it was made for")
    tag = f"int8-{path.stem}"
    return replace(graph, model=model, specs=[replace(s, quantization=tag) for s in graph.specs])


def int8_graph_path(tag: str, cache: str | Path | None = None) -> Path:
    """Where the int8 graph of ``tag`` (``int8-<digest>`` or the digest) is cached."""
    return cache_dir(cache) / "int8" / f"{tag.removeprefix('int8-')}.onnx"


def quantize_feature_graph(model_proto: onnx.ModelProto, calibration_images: Sequence[np.ndarray],
                           out_path: str | Path, batch_size: int = 16,
                           keep_float_convs: int = 4, per_channel: bool = True,
                           reduce_range: bool = False, calibrate_method: str = "MinMax",
                           weight_type: str = "QInt8", activation_type: str = "QUInt8",
                           quant_format: str = "QDQ", exclude_depthwise: bool = False,
                           metadata: dict[str, str] | None = None) -> Path:
    """Write an int8 (QDQ, per-channel) copy of a feature graph, calibrated on real images.

    Parameters
    ----------
    model_proto : onnx.ModelProto
        The float feature graph (``Extractor(...).graph.model``) with uint8 NHWC input ``pixels``.
    calibration_images : sequence of uint8 arrays, shape (H, W, 3)
        Decoded images (``Extractor.decode``) from the collection to embed; 50-200 is plenty.
    out_path : path
        Where the quantized ``.onnx`` goes.
    batch_size : int
        Images per calibration batch.
    keep_float_convs : int
        Convolutions kept in float at each end of the network.
    per_channel, reduce_range, calibrate_method, weight_type, activation_type, quant_format
        Passed to ``onnxruntime.quantization.quantize_static`` (enum members by name).
    exclude_depthwise : bool
        Keep every depthwise convolution in float too.
    metadata : dict, optional
        ``metadata_props`` entries added to the written model.

    Returns
    -------
    Path
        ``out_path``.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration_images) == 0:
        raise FeaturebankError("quantize: calibration_images is empty; pass decoded images")
    pixels = np.stack([np.asarray(a, np.uint8) for a in calibration_images])
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise FeaturebankError(f"quantize: calibration images must be HxWx3 uint8, got {pixels.shape[1:]}")
    input_name = model_proto.graph.input[0].name

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{input_name: pixels[i:i + batch_size]}
                             for i in range(0, len(pixels), batch_size)])

        def get_next(self):
            return next(self._it, None)

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src, pre = Path(tmp) / "float.onnx", Path(tmp) / "pre.onnx"
        onnx.save(model_proto, src)
        try:  # shape inference + folding makes the QDQ placement better; optional
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - fall back to the raw graph
            pre = src
        prepped = onnx.load(pre)
        # Exclusion works by node name: unnamed nodes (the exporter leaves the preprocessing
        # and pooling ops unnamed) would otherwise be quantized despite being listed as float.
        for i, node in enumerate(prepped.graph.node):
            node.name = node.name or f"fb_{node.op_type}_{i}"
        onnx.save(prepped, pre)
        quantize_static(str(pre), str(out_path), _Reader(), quant_format=QuantFormat[quant_format],
                        per_channel=per_channel, reduce_range=reduce_range,
                        calibrate_method=CalibrationMethod[calibrate_method],
                        activation_type=QuantType[activation_type], weight_type=QuantType[weight_type],
                        nodes_to_exclude=_excluded_nodes(prepped, keep_float_convs, exclude_depthwise))
    quantized = onnx.load(out_path)
    changed = _pixels_as_quantized_input(quantized)
    for key, value in (metadata or {}).items():
        quantized.metadata_props.add(key=key, value=value)
    if changed or metadata:
        onnx.save(quantized, out_path)
    return out_path


def _pixels_as_quantized_input(model: onnx.ModelProto) -> bool:
    """Feed the uint8 pixels to the first convolution as its quantized input, when exact.

    The float graph normalises with ``x * scale + bias`` and QDQ then re-quantizes the result.
    When one scale ``a`` and one bias ``b`` serve all channels and ``-b / a`` is an integer
    in 0..255 (EfficientNet-Lite: mean 127/255, std 128/255, so ``a = 1/128`` and zero point
    127), the pixel itself *is* that quantized value: ``DequantizeLinear(pixel, a, -b/a)`` is
    the normalised input exactly. This drops Cast/Mul/Add/QuantizeLinear, which onnxruntime
    runs as slow channels-last broadcasts once its int8 convolutions go NHWC (about 12 % of
    the int8 inference time), and removes the input's quantization error. Returns whether the
    graph was changed.
    """
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    users: dict[str, list] = {}
    for node in g.node:
        for name in node.input:
            users.setdefault(name, []).append(node)

    def only_user(tensor: str, op: str):
        found = users.get(tensor, [])
        return found[0] if len(found) == 1 and found[0].op_type == op else None

    def scalar(name: str) -> float | None:
        if name not in inits:
            return None
        value = numpy_helper.to_array(inits[name]).astype(np.float64)
        return float(value.flat[0]) if value.size and np.allclose(value, value.flat[0]) else None

    pixels = g.input[0].name
    cast = only_user(pixels, "Cast")
    transpose = cast and only_user(cast.output[0], "Transpose")
    mul = transpose and only_user(transpose.output[0], "Mul")
    add = mul and only_user(mul.output[0], "Add")
    quant = add and only_user(add.output[0], "QuantizeLinear")
    if quant is None or g.input[0].type.tensor_type.elem_type != onnx.TensorProto.UINT8:
        return False
    a, b = scalar(mul.input[1]), scalar(add.input[1])
    if a is None or b is None or a <= 0:
        return False
    zero = -b / a
    deq = users.get(quant.output[0], [])
    if abs(zero - round(zero)) > 1e-3 or not 0 <= round(zero) <= 255 or not deq or any(
            n.op_type != "DequantizeLinear" for n in deq):
        return False
    g.initializer.extend([numpy_helper.from_array(np.array(a, np.float32), "fb.pixel_scale"),
                          numpy_helper.from_array(np.array(round(zero), np.uint8), "fb.pixel_zero")])
    new_t = helper.make_node("Transpose", [pixels], ["fb.nchw_u8"], name="fb_Transpose_u8",
                             perm=list(helper.get_attribute_value(transpose.attribute[0])))
    for node in deq:
        node.ClearField("input")
        node.input.extend(["fb.nchw_u8", "fb.pixel_scale", "fb.pixel_zero"])
    dropped = {id(n) for n in (cast, transpose, mul, add, quant)}
    kept = [n for n in g.node if id(n) not in dropped]
    g.ClearField("node")
    g.node.extend([new_t] + kept)
    used = {name for n in g.node for name in n.input}
    unused = [t for t in g.initializer if t.name not in used]
    for t in unused:  # the old normalisation constants and input quantization parameters
        g.initializer.remove(t)
    onnx.checker.check_model(model)
    return True

