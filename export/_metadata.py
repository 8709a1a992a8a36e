"""Read what an ONNX file says about itself, without torch.

A featurebank export carries its spec and layer catalogue. Any other ONNX file is accepted too:
its candidate cut points are the 4-D tensors found by shape inference, and the user states the
preprocessing (command-line flags or a small JSON/TOML file).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import onnx
from onnx import shape_inference

from featurebank.errors import FeaturebankError
from featurebank.spec import (
    META_INPUT,
    META_LAYERS,
    META_SPEC,
    META_VERSION,
    ModelSpec,
    Preprocessing,
    sha256_file,
)

# Ops whose outputs are sensible cut points in a foreign graph (activations, merges, convs).
_CUT_OPS = {"Conv", "Relu", "Clip", "Add", "Mul", "Sigmoid", "HardSwish", "Concat", "MaxPool",
            "AveragePool", "BatchNormalization", "LeakyRelu", "Gelu", "GlobalAveragePool"}


def featurebank_version() -> str:
    try:
        return version("featurebank")
    except PackageNotFoundError:
        return "0.0.0+unknown"


@dataclass(frozen=True)
class LayerInfo:
    """A cut point: friendly name, ONNX tensor, shape without batch, FLOPs share up to it."""

    name: str
    tensor: str
    shape: tuple[int, ...]
    flops_share: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "tensor": self.tensor, "shape": list(self.shape),
                "flops_share": self.flops_share}


@dataclass
class OnnxInfo:
    """What an ONNX file offers: spec (None for foreign files), cut points and its input."""

    path: Path
    spec: ModelSpec | None
    layers: list[LayerInfo]
    input_name: str
    input_shape: tuple
    version: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def is_featurebank(self) -> bool:
        return self.spec is not None

    def layer(self, name_or_tensor: str) -> LayerInfo | None:
        for la in self.layers:
            if name_or_tensor in (la.name, la.tensor):
                return la
        return None


def load_onnx(path: str | Path, load_weights: bool = True) -> onnx.ModelProto:
    """Load an ONNX file, turning every failure into an error that names the file."""
    path = Path(path)
    if not path.is_file():
        raise FeaturebankError(f"ONNX file {path} does not exist")
    hint = "export one with 'featurebank export MODEL -o FILE.onnx'"
    try:
        proto = onnx.load(str(path), load_external_data=load_weights)
    except Exception as exc:
        raise FeaturebankError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}); {hint}"
        ) from exc
    # protobuf parses some non-ONNX bytes (an empty file, for one) into an empty message.
    if proto.ir_version == 0 or not proto.graph.node or not proto.graph.input:
        raise FeaturebankError(f"{path} is not an ONNX model (no graph inside); {hint}")
    return proto


def read_onnx_metadata(path: str | Path) -> OnnxInfo:
    """The spec and cut points of an ONNX file (featurebank's own or foreign)."""
    proto = load_onnx(path)
    meta = {p.key: p.value for p in proto.metadata_props}
    weights = {t.name for t in proto.graph.initializer}
    graph_input = next((i for i in proto.graph.input if i.name not in weights), None)
    if graph_input is None:
        raise FeaturebankError(f"{path}: the ONNX graph has no data input to feed images to")
    in_shape = tuple(d.dim_value or d.dim_param or "N" for d in graph_input.type.tensor_type.shape.dim)
    if META_SPEC in meta:
        try:
            layers = [LayerInfo(d["name"], d["tensor"], tuple(d["shape"]), d.get("flops_share"))
                      for d in json.loads(meta[META_LAYERS])]
            spec = ModelSpec.from_dict(json.loads(meta[META_SPEC]))
            extra = json.loads(meta.get(META_INPUT, "{}"))
        except (KeyError, TypeError, ValueError) as exc:
            raise FeaturebankError(
                f"{path}: damaged featurebank metadata ({type(exc).__name__}: {exc}); "
                f"export the model again with 'featurebank export'"
            ) from exc
        return OnnxInfo(Path(path), spec, layers, graph_input.name, in_shape,
                        meta.get(META_VERSION), extra)
    return OnnxInfo(Path(path), None, candidate_tensors(proto), graph_input.name, in_shape)


def candidate_tensors(proto: onnx.ModelProto) -> list[LayerInfo]:
    """4-D outputs of activation/conv-like nodes in a foreign graph, shapes from inference.

    ``flops_share`` is estimated from the inferred shapes (Conv, Gemm and MatMul multiply-adds,
    in graph order); it is None when shapes are unknown.
    """
    try:
        inferred = shape_inference.infer_shapes(proto)
    except Exception:  # inference is best effort: shapes then stay unknown
        inferred = proto
    shapes = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = tuple(d.dim_value if d.dim_value else -1 for d in dims)
    done, spent = 0, {}  # multiply-adds up to and including each node's outputs
    for node in proto.graph.node:  # ONNX graphs are topologically sorted
        done += _node_macs(node, shapes)
        spent.update(dict.fromkeys(node.output, done))
    total = done

    def share(tensor: str) -> float | None:
        return round(spent[tensor] / total, 6) if total and tensor in spent else None

    layers = []
    for node in proto.graph.node:
        if node.op_type not in _CUT_OPS:
            continue
        for out in node.output:
            shape = shapes.get(out)
            if shape is not None and len(shape) == 4:
                layers.append(LayerInfo(out, out, shape[1:], share(out)))
    for out in proto.graph.output:
        if out.name not in {la.tensor for la in layers}:
            layers.append(LayerInfo(out.name, out.name, shapes.get(out.name, ())[1:], share(out.name)))
    return layers


def _node_macs(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int:
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


def load_preprocessing(path: str | Path | None = None, **overrides: Any) -> Preprocessing:
    """Preprocessing for a foreign ONNX file from a JSON/TOML file and/or explicit fields.

    Fields: ``input_size`` ([H, W] or an int), ``resize_size``, ``interpolation``, ``mean``,
    ``std`` (RGB, in [0, 1] units), ``background``. Fields given as keyword arguments win.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text()
            data = _read_toml(text) if path.suffix == ".toml" else json.loads(text)
        except (OSError, ValueError) as exc:  # TOMLDecodeError is a ValueError
            raise FeaturebankError(f"preprocessing file {path}: {exc}") from exc
        if isinstance(data, dict):
            data = data.get("preprocessing", data)
        if not isinstance(data, dict):
            raise FeaturebankError(
                f"preprocessing file {path}: expected a table of fields such as input_size, "
                f"mean, std, got {type(data).__name__}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    if isinstance(data.get("input_size"), int):
        data["input_size"] = (data["input_size"],) * 2
    if "input_size" in data and "resize_size" not in data:
        data["resize_size"] = min(data["input_size"])
    try:
        return Preprocessing.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise FeaturebankError(f"preprocessing{f' in {path}' if path else ''}: {exc}") from exc


def _read_toml(text: str) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli backport
        try:
            import tomli as tomllib
        except ModuleNotFoundError as exc:
            raise ValueError("TOML needs Python >= 3.11 or 'pip install tomli'; use JSON") from exc
    return tomllib.loads(text)


def foreign_model_spec(onnx_path: str | Path, preprocessing: Preprocessing) -> ModelSpec:
    """The spec of an ONNX file not made by featurebank (its digest is the file's)."""
    onnx_path = Path(onnx_path)
    return ModelSpec(model=onnx_path.stem, weights_sha256=sha256_file(str(onnx_path)),
                     preprocessing=preprocessing, source="onnx")
