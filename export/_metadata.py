"""Read what an ONNX file says about itself, without torch.

A featurebank export carries its spec and layer catalogue. Any other ONNX file is accepted too:
its candidate cut points are the 4-D tensors found by shape inference, and the user states the
preprocessing (command-line flags or a small JSON/TOML file).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import onnx

from featurebank.errors import FeaturebankError
from featurebank.export._batch import prepare_foreign
from featurebank.export._catalogue import foreign_catalogue
from featurebank.export._friendly import NAMING_RULE as _RULE
from featurebank.export._layers import LayerInfo
from featurebank.export._runs import probe_shapes
from featurebank.spec import (
    META_INPUT,
    META_LAYERS,
    META_SPEC,
    META_VERSION,
    ModelSpec,
    Preprocessing,
    sha256_file,
)

#: The friendly-name rule of the catalogues this version builds (see ``spec.NAMING_RULES``):
#: part of every foreign spec whose names it changed, so a name that now means another tensor
#: gets a new fingerprint (a catalogue rule 5 names as rule 4 did keeps rule 4).
NAMING_RULE = _RULE

#: Metadata key of the class names of an adopted model's ``logits`` (JSON list).
META_CLASSES = "featurebank.classes"
#: Metadata key of where an export's eval transform came from (JSON: kind, entry, how; see
#: :class:`featurebank.export._published.TransformOrigin`); not part of the spec.
META_TRANSFORM = "featurebank.transform"


def describe(proto: onnx.ModelProto, spec: ModelSpec, layers: list[LayerInfo],
             input_info: dict[str, Any], extra: dict[str, str] | None = None,
             keep_others: bool = False) -> None:
    """Write featurebank's self-description into ``proto.metadata_props``, in place.

    The one writer of the keys :func:`read_onnx_metadata` reads: spec, layer catalogue, input
    description and version, plus ``extra`` keys (class names, lineage). ``keep_others`` keeps
    keys the file already had (an adopted model's own metadata)."""
    meta = {
        META_SPEC: json.dumps(spec.to_dict()),
        META_LAYERS: json.dumps([la.to_dict() for la in layers]),
        META_INPUT: json.dumps(input_info),
        META_VERSION: featurebank_version(),
        **(extra or {}),
    }
    kept = [(p.key, p.value) for p in proto.metadata_props if keep_others and p.key not in meta]
    del proto.metadata_props[:]
    for key, value in [*kept, *meta.items()]:
        proto.metadata_props.add(key=key, value=value)


def featurebank_version() -> str:
    try:
        return version("featurebank")
    except PackageNotFoundError:
        return "0.0.0+unknown"


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
    classes: list[str] | None = None
    #: where an export's eval transform came from (kind, entry, how), None when not recorded
    transform: dict | None = None

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


def read_onnx_metadata(path: str | Path, preprocessing: Preprocessing | None = None, *,
                       probe: bool = False) -> OnnxInfo:
    """The spec and cut points of an ONNX file (featurebank's own, adopted or foreign).

    Parameters
    ----------
    path : path
        The ONNX file. Metadata keys featurebank does not know are ignored.
    preprocessing : Preprocessing, optional
        For a foreign file: its stated conventions (input layout and size, tensor layouts),
        which make the catalogue's shapes and layouts exact.
    probe : bool
        For a foreign file without ``preprocessing`` whose input shape is known: run it once on
        a probe image, so shapes static inference loses come from the run (what
        ``featurebank layers`` shows; off by default, as it costs a run of the network).
    """
    proto = load_onnx(path)
    meta = {p.key: p.value for p in proto.metadata_props}
    weights = {t.name for t in proto.graph.initializer}
    graph_input = next((i for i in proto.graph.input if i.name not in weights), None)
    if graph_input is None:
        raise FeaturebankError(f"{path}: the ONNX graph has no data input to feed images to")
    in_shape = tuple(d.dim_value or d.dim_param or "N" for d in graph_input.type.tensor_type.shape.dim)
    if META_SPEC in meta:
        try:
            layers = [LayerInfo(d["name"], d["tensor"], tuple(d["shape"]), d.get("flops_share"),
                                d.get("layout"), d.get("dtype"), bool(d.get("measured")))
                      for d in json.loads(meta[META_LAYERS])]
            spec = ModelSpec.from_dict(json.loads(meta[META_SPEC]))
            extra = json.loads(meta.get(META_INPUT, "{}"))
            classes = json.loads(meta[META_CLASSES]) if META_CLASSES in meta else None
            transform = json.loads(meta[META_TRANSFORM]) if META_TRANSFORM in meta else None
        except (KeyError, TypeError, ValueError) as exc:
            raise FeaturebankError(
                f"{path}: damaged featurebank metadata ({type(exc).__name__}: {exc}); "
                f"export the model again with 'featurebank export' (or 'featurebank adopt')"
            ) from exc
        return OnnxInfo(Path(path), spec, layers, graph_input.name, in_shape,
                        meta.get(META_VERSION), extra, classes, transform)
    return OnnxInfo(Path(path), None, candidate_tensors(proto, preprocessing, probe=probe),
                    graph_input.name, in_shape)


def candidate_tensors(proto: onnx.ModelProto, preprocessing: Preprocessing | None = None, *,
                      probe: bool = False) -> list[LayerInfo]:
    """The catalogue of a foreign graph (see :func:`featurebank.export._catalogue.foreign_catalogue`).

    With ``preprocessing``, the graph is run once (as ``adopt`` does) so shapes are measured.
    Without it, with ``probe``, a graph whose input shape is known runs once on a probe image,
    so the tensors static shape inference leaves without a shape get theirs from that run
    (``LayerInfo.measured``). ``flops_share`` is estimated from the shapes (Conv, Gemm and
    MatMul multiply-adds, in graph order); it is None when shapes are unknown.
    """
    if preprocessing is None:
        return foreign_catalogue(proto, None, None, None,
                                 *(probe_shapes(proto) if probe else ({}, {})))
    return prepare_foreign(proto, preprocessing)[1]  # runs it once: exact shapes, as adopt


#: Names a preprocessing file may use for a field (the command-line flag's name, underscores).
_ALIASES = {"resize": "resize_size", "tensor_layout": "tensor_layouts"}


def read_conventions(path: str | Path | None = None, **overrides: Any) -> dict[str, Any]:
    """The raw fields of a JSON/TOML preprocessing file merged with ``overrides`` (which win).

    Flag names are accepted with underscores (``resize``, ``pixel_range``, ``channel_order``,
    ``layout``, ``tensor_layout``, ``classes``); a ``[preprocessing]`` table may hold them.
    ``input_size`` may be an int (square), ``[H, W]`` or ``"H,W"``; ``tensor_layout`` a table
    or a list of ``"TENSOR=nhwc"`` strings.
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
    data = {_ALIASES.get(k, k): v for k, v in data.items()}
    data.update({_ALIASES.get(k, k): v for k, v in overrides.items() if v is not None})
    where = f" in {path}" if path else ""
    try:
        size = data.get("input_size")
        if isinstance(size, str):
            size = [int(v) for v in size.split(",")]
        if isinstance(size, int) or (isinstance(size, (list, tuple)) and len(size) == 1):
            size = (int(size if isinstance(size, int) else size[0]),) * 2
        if size is not None:
            data["input_size"] = tuple(size)
        layouts = data.get("tensor_layouts")
        if isinstance(layouts, (list, tuple)):
            data["tensor_layouts"] = dict(str(v).split("=", 1) for v in layouts)
        for key in ("mean", "std"):
            if isinstance(data.get(key), str):
                data[key] = [float(v) for v in data[key].split(",")]
        if "pixel_range" in data:
            data["pixel_range"] = int(float(data["pixel_range"]))
    except (TypeError, ValueError) as exc:
        raise FeaturebankError(f"preprocessing{where}: {exc}") from exc
    return data


def load_preprocessing(path: str | Path | None = None, **overrides: Any) -> Preprocessing:
    """Preprocessing from a JSON/TOML file and/or explicit fields (see :func:`read_conventions`).

    Fields: ``input_size`` ([H, W] or an int), ``resize_size`` (or ``resize``),
    ``interpolation``, ``mean``, ``std``, ``background``, ``layout``, ``channel_order``,
    ``pixel_range``, ``tensor_layouts`` (or ``tensor_layout``). Fields given as keyword
    arguments win. Unstated fields take :class:`Preprocessing`'s defaults; ``featurebank
    adopt`` applies stricter rules (see :func:`featurebank.export.resolve_conventions`).
    """
    data = read_conventions(path, **overrides)
    data.pop("classes", None)  # names of the logits: only 'adopt' records them
    if "input_size" in data and "resize_size" not in data:
        data["resize_size"] = min(data["input_size"])
    try:
        return Preprocessing.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise FeaturebankError(f"preprocessing{f' in {path}' if path else ''}: {exc}") from exc


def _read_toml(text: str) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(text)


def foreign_model_spec(onnx_path: str | Path, preprocessing: Preprocessing,
                       naming: int = NAMING_RULE) -> ModelSpec:
    """The spec of an ONNX file not made by featurebank, named by its content.

    The name is ``onnx-`` and 16 hex digits of the file's SHA-256 (the full digest is
    ``weights_sha256``): renaming or moving the file keeps its features' identity, and a saved
    classifier finds the file again by that digest. ``naming`` is the rule the catalogue gives
    friendly names by (:func:`featurebank.export.prepare_foreign` says which); default
    :data:`NAMING_RULE`.
    """
    digest = sha256_file(str(onnx_path))
    return ModelSpec(model=f"onnx-{digest[:16]}", weights_sha256=digest,
                     preprocessing=preprocessing, source="onnx", naming=naming)
