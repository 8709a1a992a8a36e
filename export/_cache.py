"""Registry models exported on first use into a cache directory."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from importlib import metadata
from pathlib import Path

from filelock import FileLock

from featurebank import spec as spec_module
from featurebank.errors import FeaturebankError
from featurebank.export._metadata import featurebank_version
from featurebank.export._registry import get_model_entry, require_torch
from featurebank.spec import sha256_file


def resolve_cache_dir(path: str | Path | None = None) -> Path:
    """``path``, else ``$FEATUREBANK_CACHE``, else ``~/.cache/featurebank``."""
    chosen = path or os.environ.get("FEATUREBANK_CACHE") or Path.home() / ".cache" / "featurebank"
    return Path(chosen)


cache_dir = resolve_cache_dir  # the name other modules import
log = logging.getLogger(__name__)


def cached_path(model: str, cache_dir: str | Path | None = None,
                input_size: int | None = None, weights: str | Path | None = None) -> Path:
    """Where the cached export of ``model`` lives (it may not exist yet).

    The name holds a digest of model, weights digest, input size, featurebank version and
    :func:`exporter_digest` (the exporter's own code and the torch / onnx versions), so a new
    release, other weights or a local change to the exporter never reuse a stale export.
    """
    entry = get_model_entry(model)
    if weights is None:
        weights = entry.default_weights() if entry.source == "featurebank" else "library"
    size = input_size or entry.preprocessing.input_size[0]  # None and the native size share a file
    key = f"{model}|{_weights_digest(weights)}|{size}|{featurebank_version()}|{exporter_digest()}"
    safe = model.replace(":", "-").replace("/", "-")
    return resolve_cache_dir(cache_dir) / f"{safe}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.onnx"


def ensure_exported(model: str, cache_dir: str | Path | None = None,
                    input_size: int | None = None, weights: str | Path | None = None) -> Path:
    """The cached ONNX export of a registry model, exported now if absent.

    Parameters
    ----------
    model : str
        Registry name, e.g. ``efficientnet_lite0``.
    cache_dir : path, optional
        Cache folder; default ``$FEATUREBANK_CACHE``, else ``~/.cache/featurebank``.
    input_size : int, optional
        Square input side; default: the model's pretrained size.
    weights : path, optional
        A local state dict of the architecture (keyed by its content); default: the model's
        pretrained weights.

    Returns
    -------
    Path
        The ONNX file (see :func:`cached_path` for its key). Concurrent callers are safe: each
        export is written to a temporary name and renamed into place, so a reader never sees a
        partial file and the last writer's identical file wins.
    """
    purpose = f"exporting model {model!r} to ONNX (done once, on first use)"
    try:
        out = cached_path(model, cache_dir, input_size, weights)
    except FeaturebankError:
        require_torch(purpose)  # a torch-free install lacks the weights packages too: say why
        raise
    if out.exists():
        return out  # a cached export is used without torch
    require_torch(purpose)
    from featurebank.export._onnx_export import (
        export_onnx,  # torch only when an export is really needed
    )

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FeaturebankError(
            f"cannot create the model cache {out.parent}: {exc.strerror or exc}; pass another "
            f"cache_dir or set FEATUREBANK_CACHE to a writable folder"
        ) from exc
    # One exporter per file: concurrent first uses (parallel test runs, workers) wait for it
    # instead of all burning CPU on the same export; the rename keeps readers safe regardless.
    with FileLock(str(out) + ".lock"):
        if not out.exists():
            log.info("exporting %s into the cache %s (first use)", model, out.parent)
            export_onnx(model, out, weights=weights, input_size=input_size)
    return out


# The source files whose content decides the exported graph and its metadata: the torch
# architectures, the export itself, the metadata and layer catalogue written into the file,
# the registry (preprocessing, layer names), and
# featurebank/spec.py, whose spec is written into the file. Editing any of them gives exports a new cache key.
EXPORTER_SOURCES = ("_onnx_export.py", "_efficientnet_lite.py", "_torch_models.py",
                    "_metadata.py", "_catalogue.py", "_registry.py", "_zoo.py", "_weights.py")
# The libraries that write the graph; read from the installed metadata (no torch import).
EXPORTER_LIBRARIES = ("torch", "onnx", "onnxscript", "timm", "torchvision")  # the last two: their
# architectures, pretrained weights and eval configs (timm:NAME, torchvision:NAME)


@functools.cache
def exporter_digest() -> str:
    """sha256 (16 hex) of the exporter's source files and the torch / onnx versions."""
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in [*(here / name for name in EXPORTER_SOURCES), Path(spec_module.__file__)]:
        data = path.read_bytes() if path.is_file() else b"absent"  # a module renamed away
        h.update(path.name.encode() + b"\0" + data + b"\0")
    for lib in EXPORTER_LIBRARIES:
        try:
            h.update(f"{lib}={metadata.version(lib)};".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{lib}=absent;".encode())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=32)  # hashing 20 MB on every cache hit would dominate it
def _weights_digest(path: str | Path) -> str:
    return "library" if path == "library" else sha256_file(str(path))
