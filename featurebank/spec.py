"""The one spec that travels through export, extraction, the store and classifiers.

A :class:`ModelSpec` says what network an ONNX file holds (model name, weights digest, how
images must be prepared). A :class:`FeatureSpec` adds where it is cut and how the cut is
pooled. ``FeatureSpec.fingerprint()`` keys feature sets in the store and is saved with every
trained classifier, so features of one spec are never mixed with another's.

Everything here is plain data, JSON round-trippable, and imports nothing heavy.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import KW_ONLY, MISSING, asdict, dataclass, field, replace
from typing import Any

from featurebank.errors import OptionError
from featurebank.options import (
    Interval,
    Items,
    Options,
    Pair,
    Text,
    check_names,
    check_options,
    option,
)

#: Keys under which an exported ONNX file describes itself (``ModelProto.metadata_props``).
META_SPEC = "featurebank.spec"
META_LAYERS = "featurebank.layers"
META_VERSION = "featurebank.version"
META_INPUT = "featurebank.input"

#: The largest image (width x height) decoded anywhere (the decoder, the Extractor, every
#: engine and the service); larger ones are refused before decoding: 100 MP is above any
#: camera and far below a decompression bomb's 2.5 GP.
MAX_PIXELS = 100_000_000

#: The registry model used when none is named (``featurebank.export.list_models()``).
DEFAULT_MODEL = "efficientnet_lite0"
POOLS = ("avg", "max", "gem", "none", "cls", "mean", "cls+mean")
#: Pools of spatial maps (4-D cuts) and of transformer tokens (``[N, T, C]`` cuts); ``none``
#: (flatten) applies to both.
SPATIAL_POOLS = ("avg", "max", "gem")
TOKEN_POOLS = ("cls", "mean", "cls+mean")
#: How vectors are computed: float32 graph, float16 graph (GPU), statically quantized int8.
PRECISIONS = ("fp32", "fp16", "int8")
#: How vectors are stored in the feature store.
DTYPES = ("float16", "float32")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "area")
#: How the resized size and the crop offset are rounded: featurebank's own rule (round the
#: longer side, floor the crop offset) or torchvision's ``Resize``/``CenterCrop`` (truncate the
#: longer side, round the offset half to even), which timm's eval transforms use too.
RESIZE_RULES = ("featurebank", "torchvision")
#: Conventions of a network's input: memory layout, channel order and pixel range.
LAYOUTS = ("nchw", "nhwc")
CHANNEL_ORDERS = ("rgb", "bgr")
PIXEL_RANGES = (1, 255)
#: Today's behaviour: these values stay out of ``to_dict`` so existing fingerprints never change.
_CONVENTION_DEFAULTS = {"layout": "nchw", "channel_order": "rgb", "pixel_range": 1,
                        "tensor_layouts": (), "resize_rule": "featurebank",
                        "prefix_tokens": None, "class_token": True}
#: What ``adopt`` takes for a convention that a foreign graph, its preprocessing file and the
#: flags all leave unstated, with the words ``adopt --help`` shows for it: the one source of
#: both. (Not :class:`Preprocessing`'s own defaults, which describe featurebank's exports.)
#: ``resize_size`` None: the input size, so no crop; ``class_token`` None: what the graph shows.
ADOPT_UNSTATED: dict[str, tuple[Any, str]] = {
    "mean": ((0.0, 0.0, 0.0), "0"),
    "std": ((1.0, 1.0, 1.0), "1"),
    "interpolation": ("bilinear", "bilinear"),
    "resize_size": (None, "the input size, no crop"),
    "class_token": (None, "what the graph shows"),
}


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the network's input.

    Decode (EXIF orientation applied, converted to RGB, alpha composited on ``background``),
    resize so the shorter side is ``resize_size`` with ``interpolation``, center-crop to
    ``input_size`` (height, width), reorder the channels to ``channel_order``, scale to
    [0, ``pixel_range``], subtract ``mean`` and divide by ``std`` (per channel, in the model's
    channel order and pixel range), and feed the graph in its ``layout``.

    ``tensor_layouts`` maps ONNX tensor names to ``nchw``/``nhwc`` for activations whose
    layout the graph cannot show (stated by the user; it decides which axes are pooled).
    ``layout``, ``channel_order``, ``pixel_range`` and ``tensor_layouts`` enter
    :meth:`to_dict` (and so every fingerprint) only when they differ from the defaults
    (NCHW, RGB, 0-1, none), so specs written before these fields existed keep their identity;
    so do ``resize_rule`` (see :data:`RESIZE_RULES`), ``prefix_tokens`` (a transformer's tokens
    before its patch tokens: class and register tokens; None where unknown, which refuses token
    cuts) and ``class_token`` (whether the first prefix token is a class token; None where
    unknown, which refuses the ``cls`` pool).
    """

    input_size: tuple[int, int] = option((224, 224), Items(Interval(int, 1, None), 2))
    resize_size: int = option(256, Interval(int, 1, None))
    interpolation: str = option("bicubic", Options(INTERPOLATIONS))
    mean: tuple[float, float, float] = option((0.5, 0.5, 0.5), Items(float, 3))
    std: tuple[float, float, float] = option((0.5, 0.5, 0.5),
                                             Items(Interval(float, 0, None, "neither"), 3))
    background: tuple[int, int, int] = option((255, 255, 255), Items(Interval(int, 0, 255), 3))
    layout: str = option("nchw", Options(LAYOUTS))
    channel_order: str = option("rgb", Options(CHANNEL_ORDERS))
    pixel_range: int = option(1, Options(PIXEL_RANGES))
    tensor_layouts: tuple[tuple[str, str], ...] = option(
        (), Items(Pair(Text(), Options(LAYOUTS))))
    resize_rule: str = option("featurebank", Options(RESIZE_RULES))
    prefix_tokens: int | None = option(None, Interval(int, 0, None), None)
    class_token: bool | None = option(True, bool, None)

    def __post_init__(self) -> None:
        # Normalise lists (from JSON) to tuples so equal specs hash and compare equal.
        for name, kind in (("input_size", int), ("mean", float), ("std", float),
                           ("background", int)):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, tuple(_number(kind, v) for v in value))
        for name in ("layout", "channel_order", "interpolation"):
            if isinstance(getattr(self, name), str):
                object.__setattr__(self, name, getattr(self, name).lower())
        object.__setattr__(self, "tensor_layouts", _tensor_layouts(self.tensor_layouts))
        check_options(self, prefix="preprocessing.")
        if self.resize_size < min(self.input_size):
            raise OptionError("preprocessing.resize_size", f"({self.resize_size}) must be >= the "
                              f"crop {self.input_size}", related=("preprocessing.input_size",))
        if not all(0.0 <= m <= self.pixel_range for m in self.mean):
            raise OptionError("preprocessing.mean", f"{list(self.mean)} is outside the pixel "
                              f"range 0..{self.pixel_range}; give it in the model's pixel range",
                              related=("preprocessing.pixel_range",))

    @property
    def crop_pct(self) -> float:
        return min(self.input_size) / self.resize_size

    def layout_of(self, tensor: str) -> str | None:
        """The stated layout (``nchw``/``nhwc``) of an activation tensor, or None."""
        return dict(self.tensor_layouts).get(tensor)

    def to_dict(self) -> dict[str, Any]:
        data = _jsonable(asdict(self))
        for key, default in _CONVENTION_DEFAULTS.items():
            if getattr(self, key) == default:  # today's behaviour: absent, fingerprints unchanged
                del data[key]
        if self.tensor_layouts:
            data["tensor_layouts"] = dict(self.tensor_layouts)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        check_names("Preprocessing", data, cls, parameter="preprocessing")
        return cls(**data)


def _number(kind: type, value: Any) -> Any:
    """``value`` as ``kind`` when it is a number (numpy's and JSON's included); anything else is
    left for the checks to refuse with a message naming the field."""
    try:
        return kind(value) if not isinstance(value, (bool, str)) else value
    except (TypeError, ValueError):
        return value


def _tensor_layouts(value: Any) -> Any:
    """``{tensor: layout}`` or pairs as sorted ``(tensor, layout)`` pairs, layouts lower case;
    anything else is left for the check to refuse."""
    if value is None:
        return ()
    if not isinstance(value, (dict, list, tuple)):
        return value
    pairs: list[Any] = list(value.items() if isinstance(value, dict) else value)
    if not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
        return tuple(pairs)
    out = {tensor: layout.lower() if isinstance(layout, str) else layout
           for tensor, layout in pairs}
    return tuple(sorted(out.items(), key=lambda kv: str(kv[0])))


#: Versions of the rule that gives a foreign graph's tensors friendly names (``stage.K``,
#: ``head``, ``pool``, ``logits``): 1 is the first rule (absent from ``to_dict``); 2 follows
#: layouts through constants and Cast/Transpose chains, never names a classifier conv a stage;
#: 3 makes the last stage the normalised map the pool reads when only a norm and activations
#: follow the last block (DenseNet's ``norm5``: rule 2 named the concatenation before it);
#: 4 counts a linear bottleneck (a conv and its norm, no activation) as a block output
#: (EfficientNet's last block), makes the pool's input the last stage when a weighted layer
#: follows the pool (MobileNetV3), and ends the last stage at the norm when the exporter
#: recorded the activation after it outside the norm's module (torchvision's DenseNet), and names a vision transformer's graph: ``blocks.K``
#: (token outputs), ``head`` (the final norm's tokens), ``pool``, ``logits`` (rule 3 named
#: its patch embedding ``stage.1``/``head``); 5 names ``pool`` as the input of the last
#: classifier layer: an AveragePool/MaxPool with a 1x1 output followed by a Flatten/Reshape is
#: a global pool (``head`` its input, ``pool`` its output), and a fully connected head's
#: ``pool`` is fc7 after its activation (VGG, AlexNet). A catalogue that rule 5 names as rule
#: 4 did keeps rule 4, so only what it renamed gets new fingerprints.
#: A name may mean another tensor under another rule, so the rule enters the fingerprint.
NAMING_RULES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class ModelSpec:
    """What network an ONNX file holds: name, weights digest and preprocessing.

    ``naming`` is the version of the friendly-name rule a foreign graph's catalogue was made
    with (see :data:`NAMING_RULES`), and 5 for a torchvision export whose ``pool`` rule 5
    moved (VGG, AlexNet: fc7, was the flattened map); it enters :meth:`to_dict` only when it
    is not 1, so every spec written before the field existed keeps its fingerprint.
    """

    model: str
    weights_sha256: str
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    source: str = "featurebank"  # featurebank | torchvision | timm | onnx (foreign file)
    naming: int = option(1, Options(NAMING_RULES))

    def __post_init__(self) -> None:
        check_options(self, prefix="model.")  # a rule this version does not know: a newer spec

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preprocessing"] = self.preprocessing.to_dict()
        if self.naming == 1:  # the first rule: absent, so older fingerprints never change
            del d["naming"]
        return _jsonable(d)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        data = dict(data)
        data["preprocessing"] = Preprocessing.from_dict(data.get("preprocessing", {}))
        return cls(**data)


@dataclass(frozen=True)
class FeatureSpec:
    """A model cut at one layer and pooled: the identity of a feature set."""

    model: ModelSpec = option(MISSING, ModelSpec)
    layer: str = option(MISSING, str)
    pool: str = option("avg", Options(POOLS))
    gem_p: float = option(3.0, float)
    normalize: bool = option(False, bool)
    # None for the exported float graph; "int8-<digest>" for a graph statically quantized on
    # one calibration set (extractor/graphs/_int8.py): its vectors differ, so must its
    # fingerprint.
    quantization: str | None = option(None, None, str)

    def __post_init__(self) -> None:
        check_options(self)
        _check_gem_p(self.pool, self.gem_p, type(self).__name__)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "model": self.model.to_dict(),
            "layer": self.layer,
            "pool": self.pool,
            # gem_p only matters for gem; keeping it out otherwise keeps fingerprints stable.
            "gem_p": float(self.gem_p) if self.pool == "gem" else None,
            "normalize": bool(self.normalize),
        }
        if self.quantization is not None:  # absent for float: older fingerprints stay valid
            data["quantization"] = self.quantization
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        return cls(
            model=ModelSpec.from_dict(data["model"]),
            layer=data["layer"],
            pool=data.get("pool", "avg"),
            gem_p=data.get("gem_p") or 3.0,
            normalize=bool(data.get("normalize", False)),
            quantization=data.get("quantization"),
        )

    def to_json(self) -> str:
        return canonical_json(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        return cls.from_dict(json.loads(text))

    def fingerprint(self) -> str:
        """16 hex digits of SHA-256 over the canonical JSON of the spec."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def describe(self) -> str:
        pool = f"gem(p={self.gem_p:g})" if self.pool == "gem" else self.pool
        norm = "+l2" if self.normalize else ""
        quant = f" [{self.quantization}]" if self.quantization else ""
        return f"{self.model.model}@{self.model.weights_sha256[:8]}:{self.layer}/{pool}{norm}{quant}"


def _check_gem_p(pool: str, gem_p: float, owner: str) -> None:
    """gem_p matters only for GeM pooling (and enters no fingerprint otherwise)."""
    if pool == "gem" and not gem_p > 0:
        raise OptionError("gem_p", f"must be > 0 with pool 'gem', got {gem_p!r}",
                          related=("pool",), owner=owner)


def canonical_json(data: Any) -> str:
    return json.dumps(_jsonable(data), sort_keys=True, separators=(",", ":"))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class FeatureOptions:
    """What a feature is made of: the one options object of the extractor, engines and service.

    It is what a user chooses; :meth:`featurebank.extractor.Extractor.specs` resolves it against
    the model's ONNX file into one :class:`FeatureSpec` per layer (the identity that keys the
    store). Validation here needs no model, so bad options fail before any file is touched.

    Parameters
    ----------
    model : str
        Registry name (``featurebank.export.list_models()``) or a path to an ``.onnx`` file.
    layers : tuple of str
        Catalogue names (``stem``, ``blocks.N``, ``head``, ``pool``, ``logits``) or ONNX tensor
        names; one feature set each.
    pool : {'avg', 'max', 'gem', 'none'}
        Pooling over the spatial axes of each cut.
    gem_p : float
        Exponent of ``gem`` pooling.
    normalize : bool
        L2-normalise each vector.
    precision : {'fp32', 'fp16', 'int8'}
        ``fp16`` runs float16 weights (meant for CUDA); ``int8`` a static int8 graph calibrated
        on ``calibration`` (its vectors get specs and fingerprints of their own).
    calibration : sequence of images, or str, optional
        With ``precision='int8'``: 50-200 of the user's images, or the ``int8-<digest>`` tag of
        a graph quantized before.
    preprocessing : Preprocessing, optional
        Overrides the preprocessing an ONNX file describes (or states it for a foreign file).
    input_size : int, optional
        Export a registry model at this square input size instead of its native one.
    """

    model: str = option(DEFAULT_MODEL, str)
    _: KW_ONLY  # everything after the model is named
    layers: tuple[str, ...] = option(("head",), Items(str))
    pool: str = option("avg", Options(POOLS))
    gem_p: float = option(3.0, float)
    normalize: bool = option(False, bool)
    precision: str = option("fp32", Options(PRECISIONS))
    calibration: Any = option(None, "any")
    preprocessing: Preprocessing | None = option(None, None, Preprocessing)
    input_size: int | None = option(None, None, Interval(int, 8, None))

    def __post_init__(self) -> None:
        layers = self.layers
        if isinstance(layers, str):
            layers = (layers,)
        elif isinstance(layers, (list, tuple)) or layers is None:  # anything else: the check
            layers = tuple(layers or ()) or ("head",)
        object.__setattr__(self, "layers", layers)
        if isinstance(self.model, os.PathLike):
            object.__setattr__(self, "model", os.fspath(self.model))
        if isinstance(self.calibration, list):  # hashable, so options can key caches
            object.__setattr__(self, "calibration", tuple(self.calibration))
        check_options(self)
        _check_gem_p(self.pool, self.gem_p, type(self).__name__)
        if len(set(self.layers)) != len(self.layers):
            raise OptionError("layers", f"name a layer twice: {list(self.layers)}",
                              owner="FeatureOptions")

    def replace(self, **changes: Any) -> FeatureOptions:
        """A copy with ``changes`` applied (and validated)."""
        return replace(self, **changes)


#: Field names of :class:`FeatureOptions`, for code that forwards keyword arguments to it.
FEATURE_OPTION_NAMES = tuple(FeatureOptions.__dataclass_fields__)


def feature_options(features: FeatureOptions | str | os.PathLike[str] | None = None,
                    **options: Any) -> FeatureOptions:
    """``features`` as :class:`FeatureOptions`: an options object (``options`` then replace its
    fields), a model name or ONNX path, or None (the default model)."""
    check_names("feature_options", options, FeatureOptions)
    if isinstance(features, FeatureOptions):
        return features.replace(**options) if options else features
    if features is not None:
        options["model"] = str(features)
    return FeatureOptions(**options)
