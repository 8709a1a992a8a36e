"""Registry models exported on first use into a cache directory."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from export.errors import FeaturebankError
from export.metadata import featurebank_version
from export.registry import get_model_entry
from export.spec import sha256_file


def cache_dir(path: str | Path | None = None) -> Path:
    """``path``, else ``$FEATUREBANK_CACHE``, else ``~/.cache/featurebank``."""
    chosen = path or os.environ.get("FEATUREBANK_CACHE") or Path.home() / ".cache" / "featurebank"
    return Path(chosen)


def ensure_exported(model: str, cache_dir: str | Path | None = None,
                    input_size: int | None = None) -> Path:
    """The cached ONNX export of a registry model, exported now if absent.

    The file name holds a digest of model, weights, input size and featurebank version, so a new
    release or other weights never reuse a stale export. Concurrent callers are safe: each
    export is written to a temporary name and renamed into place.
    """
    from export.onnx_export import export_onnx  # torch only when an export is really needed

    entry = get_model_entry(model)
    weights = entry.default_weights() if entry.source == "featurebank" else "library"
    key = f"{model}|{_weights_digest(weights)}|{input_size}|{featurebank_version()}"
    folder = globals()["cache_dir"](cache_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FeaturebankError(
            f"cannot create the model cache {folder}: {exc.strerror or exc}; pass another "
            f"cache_dir or set FEATUREBANK_CACHE to a writable folder"
        ) from exc
    safe = model.replace(":", "-").replace("/", "-")
    out = folder / f"{safe}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.onnx"
    if not out.exists():
        export_onnx(model, out, input_size=input_size)
    return out


_DIGESTS: dict[str, str] = {}


def _weights_digest(path: str) -> str:
    if path == "library":
        return path
    if path not in _DIGESTS:  # hashing 20 MB each call would dominate cache hits
        _DIGESTS[path] = sha256_file(path)
    return _DIGESTS[path]
