"""``featurebank adopt``: any ONNX image CNN becomes a self-describing, first-class model.

The user states the conventions the graph cannot show (pixel range, channel order, and where
the graph input is dynamic, its layout and size); everything else is read from the graph and
checked against it. The adopted copy carries the same metadata a featurebank export has (spec
named by the source file's SHA-256, preprocessing, layer catalogue with layouts), and a copy
is kept in the model cache under that digest so a saved classifier finds its model again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import onnx

from featurebank.errors import FeaturebankError
from featurebank.export._batch import prepare_foreign
from featurebank.export._catalogue import input_layout_from_shape
from featurebank.export._metadata import (
    META_CLASSES,
    describe,
    foreign_model_spec,
    load_onnx,
    read_conventions,
    read_onnx_metadata,
)
from featurebank.export._runs import graph_input as _graph_input
from featurebank.paths import check_writable
from featurebank.spec import ADOPT_UNSTATED, META_SPEC, ModelSpec, Preprocessing, sha256_file

log = logging.getLogger(__name__)
#: Element types of a graph input featurebank can feed: floats (normalised in float32, then
#: cast) and uint8 pixels as decoded (range 255, never normalised by featurebank).
INPUT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
               onnx.TensorProto.UINT8)
#: Paths given on the command line (``--model``) searched first for a classifier's model.
_REMEMBERED: list[Path] = []


def resolve_conventions(model: str | Path | onnx.ModelProto, path: str | Path | None = None, *,
                        name: str | None = None,
                        **flags: Any) -> tuple[Preprocessing, list[str] | None]:
    """The preprocessing of a foreign ONNX file from its graph and what the user states.

    Parameters
    ----------
    model : path or onnx.ModelProto
        The foreign graph.
    path : path, optional
        JSON/TOML file with the flag names in underscores (see
        :func:`featurebank.export.read_conventions`).
    name : str, optional
        How errors name the model (default: its file name).
    **flags
        ``input_size``, ``resize``, ``interpolation``, ``pixel_range``, ``mean``, ``std``,
        ``channel_order``, ``layout``, ``tensor_layout``, ``classes``; they win over the file.

    Returns
    -------
    (Preprocessing, list of str or None)
        The conventions and the class names read from ``classes`` (one a line).

    Raises
    ------
    FeaturebankError
        A missing required field (``pixel_range``, ``channel_order``; ``layout`` and
        ``input_size`` where the graph input is dynamic), a value the graph contradicts, or a
        value out of range (a mean outside the pixel range).
    """
    proto = model if isinstance(model, onnx.ModelProto) else load_onnx(model, load_weights=False)
    name = name or ("the model" if isinstance(model, onnx.ModelProto) else Path(model).name)
    data = read_conventions(path, **flags)
    where = f" (in {path})" if path else ""
    dims, elem_type = _image_input(proto, name)
    if elem_type == onnx.TensorProto.UINT8:
        _raw_pixels(data, name, where)
    _require_stated(data, name, where)
    layout = _settle_layout(data, dims, name, where)
    channels, hw = (dims[1], dims[2:]) if layout == "nchw" else (dims[3], dims[1:3])
    if channels not in (3, -1):
        raise FeaturebankError(f"{name}: the input has {channels} channels in layout {layout}; "
                               f"featurebank feeds 3-channel images")
    size = _settle_size(data.get("input_size"), hw, dims, name, where)
    data.update(input_size=tuple(size), layout=layout)
    for key, (default, _) in ADOPT_UNSTATED.items():  # class_token: settle_tokens decides
        data.setdefault(key, min(size) if key == "resize_size" and default is None else default)
    classes = _read_classes(data.pop("classes", None))
    try:
        pre = Preprocessing.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise FeaturebankError(f"{name}: preprocessing{where}: {exc}") from exc
    return pre, classes


def _image_input(proto: onnx.ModelProto, name: str) -> tuple[tuple[int, ...], int]:
    """The graph input's dims (-1 where dynamic) and element type; refused unless it is a 4-D
    image batch of a type featurebank feeds."""
    graph_input = _graph_input(proto)
    tensor_type = graph_input.type.tensor_type
    dims = tuple(d.dim_value if d.dim_value else -1 for d in tensor_type.shape.dim)
    if len(dims) != 4 or tensor_type.elem_type not in INPUT_TYPES:
        raise FeaturebankError(
            f"{name}: input {graph_input.name!r} is {len(dims)}-D "
            f"{onnx.TensorProto.DataType.Name(tensor_type.elem_type).lower()}; featurebank "
            f"feeds a 4-D image batch (NCHW or NHWC; float32, float16, double or uint8 pixels)")
    return dims, tensor_type.elem_type


def _raw_pixels(data: dict, name: str, where: str) -> None:
    """A uint8 input takes the pixels as decoded: range 255, no mean or std (the graph
    normalises them itself); a statement that says otherwise cannot be fed."""
    if data.setdefault("pixel_range", 255) != 255:
        raise FeaturebankError(f"{name}: the input is uint8, so it takes 0-255 pixels; drop "
                               f"pixel_range={data['pixel_range']}{where} (or state "
                               "pixel_range=255)")
    for key, plain in (("mean", 0.0), ("std", 1.0)):
        if key in data and any(float(v) != plain for v in data[key]):
            raise FeaturebankError(
                f"{name}: the input is uint8 (raw pixels, normalised inside the graph), so "
                f"featurebank cannot feed it normalised values; drop "
                f"{key}=({', '.join(str(v) for v in data[key])}){where}")


def _require_stated(data: dict, name: str, where: str) -> None:
    missing = [k for k in ("pixel_range", "channel_order") if k not in data]
    if missing:
        flag = {"pixel_range": "pixel_range=1 or pixel_range=255 (the range mean and std "
                               "apply to)",
                "channel_order": "channel_order='rgb' or channel_order='bgr'"}
        raise FeaturebankError(
            f"{name}: state {' and '.join(flag[m] for m in missing)}{where}; no graph shows them "
            f"(see docs/your-own-model.md)")


def _settle_layout(data: dict, dims: tuple[int, ...], name: str, where: str) -> str:
    """The input layout: what the shape shows, else the stated one; never both disagreeing."""
    shown = input_layout_from_shape(dims)
    layout = str(data.get("layout") or (shown or "")).lower()
    if not layout:
        raise FeaturebankError(f"{name}: the input shape {list(dims)} does not show which axis "
                               f"holds the 3 channels; state layout='nchw' or layout='nhwc'{where}")
    if shown and layout != shown.lower():
        raise FeaturebankError(f"{name}: the graph input {list(dims)} is {shown}, but the stated "
                               f"layout is {layout}; drop layout={layout!r} or state "
                               f"layout={shown.lower()!r}")
    return layout


def _settle_size(size, hw: tuple[int, ...], dims: tuple[int, ...], name: str,
                 where: str) -> tuple[int, ...]:
    """The input size: the graph's, or the stated one where the graph's is dynamic."""
    if size is None:
        if min(hw) < 1:
            raise FeaturebankError(f"{name}: the input size is dynamic ({list(dims)}); state "
                                   f"input_size=N or input_size=(H, W){where}")
        return tuple(hw)
    if min(hw) > 0 and tuple(size) != tuple(hw):
        raise FeaturebankError(f"{name}: the graph takes {hw[0]}x{hw[1]} images, but the stated "
                               f"input size is {size[0]}x{size[1]}")
    return tuple(size)


def _read_classes(path: str | Path | None) -> list[str] | None:
    if path is None:
        return None
    try:
        names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise FeaturebankError(f"classes file {path}: {exc.strerror or exc}") from exc
    if not names:
        raise FeaturebankError(f"classes file {path} holds no class name (one a line expected)")
    return names


def adopt(source: str | Path, out: str | Path, preprocessing: str | Path | None = None,
          **flags: Any) -> ModelSpec:
    """Write a self-describing copy of a foreign ONNX image model.

    Parameters
    ----------
    source : path
        The ONNX file (not modified).
    out : path
        Where the adopted copy goes; written atomically, only after every check passed.
    preprocessing : path, optional
        JSON/TOML file of conventions (flag names with underscores).
    **flags
        Conventions (see :func:`resolve_conventions`); they win over the file.

    Returns
    -------
    ModelSpec
        The spec written into the copy (named ``onnx-`` + the source's SHA-256).
    """
    source, out = Path(source), Path(out)
    proto = load_onnx(source)
    if any(p.key == META_SPEC for p in proto.metadata_props):
        raise FeaturebankError(f"{source} already describes itself (made by featurebank); use it "
                               f"as it is")
    _check_output(source, out)
    pre, classes = resolve_conventions(proto, preprocessing, name=source.name, **flags)
    plan, layers, pre, naming = prepare_foreign(proto, pre, source.name)
    logits = next((la for la in layers if la.name == "logits"), None)
    if classes is not None and logits is not None and logits.shape[0] != len(classes):
        raise FeaturebankError(f"the classes file names {len(classes)} classes but the model's "
                               f"logits have {logits.shape[0]}")
    adopted = plan.model
    spec = foreign_model_spec(source, pre, naming)
    graph_input = _graph_input(adopted)
    raw = graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    describe(adopted, spec, layers,
             {"name": graph_input.name, "layout": pre.layout.upper(),
              "dtype": "uint8" if raw else "float32", "normalized": not raw,
              "adopted_from": source.name,
              **({"batch": plan.batch, "batch_reason": plan.reason} if plan.batch else {}),
              **({"batch_rewrite": list(plan.changes), "batch_parity": plan.worst}
                 if plan.changes else {})},
             {META_CLASSES: json.dumps(classes)} if classes is not None else None,
             keep_others=True)
    _atomic_save(adopted, out)
    _keep_in_cache(out, spec.weights_sha256)
    return spec


def _check_output(source: Path, out: Path) -> None:
    check_writable(out, suffix=".onnx")
    if out.exists() and out.resolve() == source.resolve():
        raise FeaturebankError(f"the adopted copy must not overwrite its source {source}")


def _atomic_save(proto: onnx.ModelProto, out: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        onnx.save(proto, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise FeaturebankError(f"cannot write {out}: {exc.strerror or exc}") from exc
        raise


def adopted_cache_path(digest: str) -> Path:
    """Where the cache keeps the adopted copy of the model with this SHA-256."""
    from featurebank.export._cache import cache_dir

    return cache_dir() / "adopted" / f"{digest}.onnx"


def _keep_in_cache(out: Path, digest: str) -> None:
    target = adopted_cache_path(digest)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            os.link(out, tmp)  # same file system: no second copy of the weights
        except OSError:
            shutil.copyfile(out, tmp)
        os.replace(tmp, target)
    except OSError as exc:  # a read-only cache: the classifier then needs --model
        log.warning("could not keep a copy of %s in the cache %s: %s", out, target.parent, exc)


def remember_model(path: str | Path) -> None:
    """Search ``path`` first when a classifier looks for its model by digest."""
    _REMEMBERED.insert(0, Path(path))


def remembered_models() -> list[Path]:
    """Paths passed to :func:`remember_model`, most recent first."""
    return list(_REMEMBERED)


def find_model_by_digest(digest: str, candidates=()) -> tuple[Path, bool]:
    """An ONNX file holding the model with SHA-256 ``digest``.

    Looks at ``candidates`` (paths given by the user), then paths passed to
    :func:`remember_model`, then the cache's adopted copies. A candidate matches when it is an
    adopted copy whose spec names the digest (returns ``(path, True)``) or the original file
    itself (``(path, False)``: its preprocessing then comes from the classifier's spec).
    """
    seen = []
    for path in [*(Path(c) for c in candidates if c), *_REMEMBERED, adopted_cache_path(digest)]:
        if path in seen or not path.is_file():
            continue
        seen.append(path)
        try:
            info = read_onnx_metadata(path)
        except FeaturebankError:
            continue
        if info.spec is not None and info.spec.weights_sha256 == digest:
            return path, True
        if info.spec is None and sha256_file(str(path)) == digest:
            return path, False
    looked = ", ".join(str(p) for p in seen) or "nothing"
    raise FeaturebankError(
        f"the ONNX model with SHA-256 {digest[:16]}... is not in the cache "
        f"({adopted_cache_path(digest).parent}) nor among the given files (looked at {looked}); "
        f"pass model=FILE.onnx (the adopted copy or the original file) or adopt it again")
