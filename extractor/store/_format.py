"""The store's on-disk vocabulary (layout in docs/STORE_FORMAT.md): dtypes, the committed-row
counters, appends to resizable datasets, path/label encodings, and the read results.

Shared by the store, its repair (``featurebank.extractor.store._repair``) and the sharded Ray store;
imports nothing of theirs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass

import h5py
import numpy as np
import numpy.typing as npt
from numpy.typing import ArrayLike

from featurebank.extractor.sources import local_form
from featurebank.spec import FeatureSpec

# 2: absolute paths, the collection roots, per-set row shapes and the /commits log.
# 3: a path may also be a URL, a tar shard member (``shard.tar#KEY.jpg``) or a parquet row
#    (``file.parquet#row=N``); every version-2 store is a valid version-3 store.
FORMAT_VERSION = 3
KEY_DTYPE = "S64"
BYTES_DTYPE = h5py.vlen_dtype(bytes)  # paths as bytes: file names need not be UTF-8
STR_DTYPE = h5py.string_dtype("utf-8")
CHUNK_ROWS = 1024
CHUNK_BYTES = 1 << 20  # the most one chunk of a feature set's X holds
TABLES = ("images", "paths", "features", "failures", "commits")
ROOTS_ATTR = "collection_roots"


@dataclass(frozen=True)
class FeatureSetInfo:
    fingerprint: str
    spec: FeatureSpec
    rows: int
    dim: int
    dtype: str
    row_shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.row_shape:
            object.__setattr__(self, "row_shape", (self.dim,))


@dataclass
class Features:
    """Rows of one feature set with their labels and paths, aligned by content key.

    ``X`` is always ``[rows, dim]``; a set whose rows are maps (``row_shape`` like
    ``(C, H, W)``) gives them back shaped with :meth:`maps`.
    """

    X: np.ndarray
    y: np.ndarray
    keys: np.ndarray
    paths: np.ndarray
    spec: FeatureSpec
    row_shape: tuple[int, ...] = ()

    def maps(self) -> np.ndarray:
        """``X`` as ``[rows, *row_shape]`` (a view)."""
        return self.X.reshape(len(self.X), *(self.row_shape or self.X.shape[1:]))


def chunk_rows(dim: int, itemsize: int) -> int:
    """Rows per chunk of X: at most CHUNK_BYTES per chunk, at most CHUNK_ROWS rows."""
    return max(1, min(CHUNK_ROWS, CHUNK_BYTES // max(1, dim * itemsize)))


def encode_path(path: str) -> bytes:
    return os.fsencode(path)


def decode_path(raw: bytes | np.bytes_) -> str:
    return os.fsdecode(bytes(raw))


def absolute(path: str | os.PathLike[str]) -> str:
    """The absolute form of a path as the user gave it (against the current folder); symlinks
    are kept, since the link's name is what the user chose. URLs stay as they are (``file://``
    ones become local paths)."""
    return local_form(os.fspath(path))


def decode_texts(values: Iterable[bytes | str]) -> list[str]:
    return [v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else str(v) for v in values]


def encode_label(text: str) -> bytes:
    """Labels are stored as UTF-8 bytes; a folder name that is not valid UTF-8 (surrogate-escaped
    by os.fsdecode) keeps its raw bytes, and reads back as the same str."""
    return text.encode("utf-8", "surrogateescape")


def read_roots(f: h5py.File) -> list[str]:
    raw = f.attrs.get(ROOTS_ATTR)
    if raw is None:
        return []
    return list(json.loads(raw.decode() if isinstance(raw, bytes) else str(raw)))


def write_roots(f: h5py.File, roots: Iterable[str]) -> None:
    merged = read_roots(f)
    merged += [r for r in roots if r not in merged]
    f.attrs[ROOTS_ATTR] = json.dumps(merged)


def row_shape_of(g: h5py.Group) -> tuple[int, ...]:
    raw = g.attrs.get("row_shape")
    return tuple(int(x) for x in np.atleast_1d(raw)) if raw is not None else (int(g.attrs["dim"]),)


def committed_rows(obj: h5py.HLObject | None) -> int:
    if obj is None:
        return 0
    return int(obj.attrs.get("committed", 0))


def append_rows(group: h5py.Group, name: str, rows: ArrayLike, start: int,
                dtype: npt.DTypeLike | None = None) -> None:
    values = np.asarray(rows) if dtype is None else np.asarray(rows, dtype=dtype)
    if name not in group:
        shape = (0, *values.shape[1:])
        group.create_dataset(name, shape=shape, maxshape=(None, *values.shape[1:]),
                             dtype=dtype or values.dtype, chunks=(CHUNK_ROWS, *values.shape[1:]))
    ds = group[name]
    if ds.shape[0] < start + len(values):
        ds.resize(start + len(values), axis=0)
    if len(values):
        ds[start:start + len(values)] = values


#: Root attribute marking the virtual file of a sharded store (written by the Ray engine).
SHARDED_ATTR = "featurebank_sharded"


def is_sharded(store: str | os.PathLike[str] | h5py.File) -> bool:
    """Whether a store file (a path, or an h5py file open on it) is the virtual file of a
    sharded store. A path that is no readable HDF5 file is not."""
    if isinstance(store, h5py.File):
        return bool(store.attrs.get(SHARDED_ATTR, False))
    if not os.path.isfile(store):
        return False
    try:
        with h5py.File(store, "r", locking=False) as f:
            return is_sharded(f)
    except OSError:
        return False
