"""Registry models exported on first use into a cache directory."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from featurebank.export._metadata import featurebank_version
from featurebank.export._registry import get_model_entry
from filelock import FileLock

from featurebank.errors import FeaturebankError
from featurebank.spec import sha256_file


def resolve_cache_dir(path: str | Path | None = None) -> Path:
    """``path``, else ``$FEATUREBANK_CACHE``, else ``~/.cache/featurebank``."""
    chosen = path or os.environ.get("FEATUREBANK_CACHE") or Path.home() / ".cache" / "featurebank"
    return Path(chosen)


cache_dir = resolve_cache_dir  # the name other modules import
log = logging.getLogger(__name__)


def cached_path(model: str, cache_dir: str | Path | None = None,
                input_size: int | None = None) -> Path:
    """Where the cached export of ``model`` lives (it may not exist yet).

    The name holds a digest of model, weights digest, input size and featurebank version, so a
    new release or other weights never reuse a stale export.
    """
    entry = get_model_entry(model)
    weights = entry.default_weights() if entry.source == "featurebank" else "library"
    size = input_size or entry.preprocessing.input_size[0]  # None and the native size share a file
    key = f"{model}|{_weights_digest(weights)}|{size}|{featurebank_version()}"
    safe = model.replace(":", "-").replace("/", "-")
    return resolve_cache_dir(cache_dir) / f"{safe}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.onnx"


def ensure_exported(model: str, cache_dir: str | Path | None = None,
                    input_size: int | None = None) -> Path:
    """The cached ONNX export of a registry model, exported now if absent.

    Parameters
    ----------
    model : str
        Registry name, e.g. ``efficientnet_lite0``.
    cache_dir : path, optional
        Cache folder; default ``$FEATUREBANK_CACHE``, else ``~/.cache/featurebank``.
    input_size : int, optional
        Square input side; default: the model's pretrained size.

    Returns
    -------
    Path
        The ONNX file (see :func:`cached_path` for its key). Concurrent callers are safe: each
        export is written to a temporary name and renamed into place, so a reader never sees a
        partial file and the last writer's identical file wins.
    """
    out = cached_path(model, cache_dir, input_size)
    if out.exists():
        return out
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
            export_onnx(model, out, input_size=input_size)
    return out


_DIGESTS: dict[str, str] = {}


def _weights_digest(path: str) -> str:
    if path == "library":
        return path
    if path not in _DIGESTS:  # hashing 20 MB each call would dominate cache hits
        _DIGESTS[path] = sha256_file(path)
    return _DIGESTS[path]
