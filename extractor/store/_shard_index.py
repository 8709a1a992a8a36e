"""Per-shard key index: what a manifest rebuild needs from a shard, without opening its HDF5.

Rebuilding the manifest and the virtual file reads every shard's identity columns (content
keys, paths, ...), dataset shapes and dtypes. Opening each shard with HDF5 costs milliseconds
(``benchmarks/manifest_cost.py``); a sidecar ``SHARD.h5.index.json``, written when the shard is
committed, holds the same facts as a small JSON document read in microseconds. The index is
written before the shard is renamed into place, so a committed shard always has one; it also
records the shard's size, and an index whose size disagrees with the file (or a shard from a
release without indexes) is rebuilt from the HDF5 file and rewritten -- the shard stays the
truth.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from featurebank.extractor.store._format import read_roots

INDEX_SUFFIX = ".index.json"
# The columns that make a row "the same row" for de-duplication, per group.
IDENT: dict[str, tuple[str, ...]] = {
    "images": ("keys",), "paths": ("paths", "keys"), "failures": ("paths", "reasons"),
    "commits": ("times", "pids", "rows_offered"),
}
FEATURE_IDENT = ("keys",)
FEATURE_ATTRS = ("spec", "dim", "row_shape", "layer")


def index_path(shard: str | Path) -> Path:
    shard = Path(shard)
    return shard.with_name(shard.name + INDEX_SUFFIX)


def index_of(f: h5py.File, size: int) -> dict:
    """The index of an open shard file of ``size`` bytes."""
    groups = {g: _group_index(f[g], IDENT[g]) for g in IDENT}
    groups.update({f"features/{fp}": _group_index(g, FEATURE_IDENT, FEATURE_ATTRS)
                   for fp, g in f["features"].items()})
    return {"format_version": int(f.attrs.get("format_version", 1)), "size": size,
            "roots": read_roots(f), "groups": groups}


def write_index(shard: str | Path, index_file: str | Path | None = None) -> dict:
    """Index the shard file ``shard`` into ``index_file`` (default: beside it), atomically."""
    shard = Path(shard)
    with h5py.File(shard, "r", locking=False) as f:
        doc = index_of(f, shard.stat().st_size)
    target = Path(index_file) if index_file else index_path(shard)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, separators=(",", ":")))
    os.replace(tmp, target)
    return doc


def read_index(shard: Path, size: int) -> dict:
    """The index of the committed shard ``shard`` (``size`` bytes): the sidecar when it matches
    the file, else rebuilt from the HDF5 file and rewritten."""
    try:
        doc = json.loads(index_path(shard).read_bytes())
        if doc.get("size") == size:
            return doc
    except (OSError, ValueError):
        pass
    return write_index(shard)


def dtype_of(code: str) -> np.dtype:
    """The dtype an index names: ``vlen:ENCODING`` for variable-length strings, else numpy's."""
    if code.startswith("vlen:"):
        return h5py.string_dtype(code[5:])
    return np.dtype(code)


def _dtype_code(dt: np.dtype) -> str:
    info = h5py.check_string_dtype(dt)
    return f"vlen:{info.encoding}" if info is not None and info.length is None else dt.str


def _group_index(g: h5py.Group, ident: tuple[str, ...], attrs: tuple[str, ...] = ()) -> dict:
    n = int(g.attrs.get("committed", 0))
    datasets = {c: {"dtype": _dtype_code(ds.dtype), "shape": list(ds.shape)}
                for c, ds in g.items() if isinstance(ds, h5py.Dataset)}
    return {"committed": n, "datasets": datasets,
            "ident": {c: [_plain(v) for v in g[c][:n]] for c in ident if c in datasets},
            "attrs": {a: _plain(g.attrs[a]) for a in attrs if a in g.attrs}}


def _plain(v: object) -> object:
    """A JSON value for an HDF5 value; bytes become text (undecodable bytes kept as escapes)."""
    if isinstance(v, (bytes, np.bytes_)):
        return bytes(v).decode("utf-8", "surrogateescape")
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v.item() if isinstance(v, np.generic) else v
