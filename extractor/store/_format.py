"""The store's on-disk vocabulary (layout in docs/STORE_FORMAT.md): dtypes, the committed-row
counters, appends to resizable datasets, path/label encodings, and the read results.

Shared by the store, its repair (``featurebank.extractor.store._lock``) and the sharded Ray store; imports nothing
of theirs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import h5py
import numpy as np

from featurebank.spec import FeatureSpec

FORMAT_VERSION = 1
KEY_DTYPE = "S64"
BYTES_DTYPE = h5py.vlen_dtype(bytes)  # paths as bytes: file names need not be UTF-8
STR_DTYPE = h5py.string_dtype("utf-8")
CHUNK_ROWS = 1024


@dataclass(frozen=True)
class FeatureSetInfo:
    fingerprint: str
    spec: FeatureSpec
    rows: int
    dim: int
    dtype: str


@dataclass
class Features:
    """Rows of one feature set with their labels and paths, aligned by content key."""

    X: np.ndarray
    y: np.ndarray
    keys: np.ndarray
    paths: np.ndarray
    spec: FeatureSpec


def encode_path(path: str) -> bytes:
    return os.fsencode(path)


def decode_path(raw) -> str:
    return os.fsdecode(bytes(raw))


def decode_texts(values) -> list[str]:
    return [v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else str(v) for v in values]


def encode_label(text: str) -> bytes:
    """Labels are stored as UTF-8 bytes; a folder name that is not valid UTF-8 (surrogate-escaped
    by os.fsdecode) keeps its raw bytes, and reads back as the same str."""
    return text.encode("utf-8", "surrogateescape")


def committed_rows(obj) -> int:
    return int(obj.attrs.get("committed", 0))


def append_rows(group: h5py.Group, name: str, values: np.ndarray, start: int, dtype=None) -> None:
    values = np.asarray(values) if dtype is None else np.asarray(values, dtype=dtype)
    if name not in group:
        shape = (0, *values.shape[1:])
        group.create_dataset(name, shape=shape, maxshape=(None, *values.shape[1:]),
                             dtype=dtype or values.dtype, chunks=(CHUNK_ROWS, *values.shape[1:]))
    ds = group[name]
    if ds.shape[0] < start + len(values):
        ds.resize(start + len(values), axis=0)
    if len(values):
        ds[start:start + len(values)] = values
