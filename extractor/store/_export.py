"""``featurebank store export``: one feature set to parquet, npz or npy, streamed by row chunks.

The format follows the output's extension:

- ``.parquet``: columns ``key``, ``path``, ``label`` (strings) and ``vector`` (a fixed-size
  list of float32, ``dim`` long), the spec and the set's row shape in the file's metadata
  (``featurebank.spec``, ``featurebank.fingerprint``, ``featurebank.row_shape``); needs the
  ``io`` extra (pyarrow);
- ``.npz``: ``features`` (float32 ``[rows, dim]``), ``keys``, ``paths``, ``labels`` and ``spec``
  (JSON), as ``numpy.load`` reads them;
- ``.npy``: the vectors alone (float32 ``[rows, dim]``), in the same row order as the keys of
  the other two formats.

Vectors are read, converted and written ``chunk_rows`` at a time, so memory holds one chunk of
vectors (64 MiB by default) however large the store; keys, paths and labels of every row are
held (about a hundred bytes a row). The file is written under a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from featurebank.errors import FeaturebankError
from featurebank.extractor.store._format import FeatureSet, committed_rows
from featurebank.paths import check_writable

if TYPE_CHECKING:
    from featurebank.extractor.store._store import FeatureStore

EXPORT_FORMATS = (".parquet", ".npz", ".npy")
CHUNK_BYTES = 64 << 20


def export_format(out: str | Path) -> str:
    """The format an output path asks for, or a FeaturebankError naming those there are."""
    suffix = Path(out).suffix.lower()
    if suffix not in EXPORT_FORMATS:
        raise FeaturebankError(f"cannot export to {out}: the format follows the extension, one "
                               f"of {', '.join(EXPORT_FORMATS)}")
    return suffix


def export_features(store: FeatureStore, out: str | Path, layer_or_fingerprint: str | None = None,
                    chunk_rows: int | None = None, fmt: str | None = None) -> Path:
    """Write one feature set of ``store`` (a :class:`FeatureStore`) to ``out`` in ``fmt``
    (default: by ``out``'s extension; see the module docstring). Returns ``out``."""
    out = Path(out)
    fmt = fmt or export_format(out)  # refused before anything is read or written
    check_writable(out, what="export", suffix=fmt)
    if fmt == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as exc:
            raise FeaturebankError("parquet export needs pyarrow: pip install "
                                   "'featurebank[io]'") from exc
    info = store.resolve(layer_or_fingerprint)
    chunk = chunk_rows or max(1, CHUNK_BYTES // (4 * info.dim))
    tmp = out.with_name(f".{out.name}.tmp{fmt}")
    try:
        {".parquet": _parquet, ".npz": _npz, ".npy": _npy}[fmt](store, info, tmp, chunk)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _chunks(store: FeatureStore, info: FeatureSet, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(keys, float32 vectors) of the committed rows, ``rows`` at a time."""
    with store._open("r") as f:
        g = f["features"][info.fingerprint]
        n = min(info.rows, committed_rows(g))
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            yield g["keys"][start:stop].astype(str), np.asarray(g["X"][start:stop], np.float32)


def _rows_meta(store: FeatureStore, keys: list[str]) -> tuple[list[str], list[str]]:
    table = store.image_table()
    meta = [table.get(k, ("", "")) for k in keys]
    return [m[0] for m in meta], [m[1] for m in meta]


def _parquet(store: FeatureStore, info: FeatureSet, tmp: Path, chunk: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = store.image_table()
    schema = pa.schema([("key", pa.string()), ("path", pa.string()), ("label", pa.string()),
                        ("vector", pa.list_(pa.float32(), info.dim))],
                       metadata={"featurebank.spec": info.spec.to_json(),
                                 "featurebank.fingerprint": info.fingerprint,
                                 "featurebank.row_shape": json.dumps(list(info.row_shape))})
    with pq.ParquetWriter(tmp, schema) as writer:
        for keys, X in _chunks(store, info, chunk):
            meta = [table.get(k, ("", "")) for k in keys]
            vectors = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), info.dim)
            writer.write_table(pa.Table.from_arrays(
                [pa.array(keys.tolist(), pa.string()),
                 pa.array([_text(m[0]) for m in meta], pa.string()),
                 pa.array([_text(m[1]) for m in meta], pa.string()), vectors], schema=schema))


def _text(value: str) -> str:
    # file names need not be UTF-8 (stored surrogate-escaped); parquet strings must be
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _npy(store: FeatureStore, info: FeatureSet, tmp: Path, chunk: int) -> None:
    X = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(info.rows, info.dim))
    start = 0
    for _, part in _chunks(store, info, chunk):
        X[start:start + len(part)] = part
        start += len(part)
    X.flush()
    del X


def _npz(store: FeatureStore, info: FeatureSet, tmp: Path, chunk: int) -> None:
    # np.savez needs every array whole: the features are written into the zip member by chunks
    # after an npy header, the way np.savez lays them out (stored, not compressed)
    keys: list[str] = []
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("features.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_2_0(
                member, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                         "fortran_order": False, "shape": (info.rows, info.dim)})
            for part_keys, part in _chunks(store, info, chunk):
                keys += part_keys.tolist()
                member.write(np.ascontiguousarray(part).tobytes())
        paths, labels = _rows_meta(store, keys)
        for name, values in (("keys", np.array(keys, dtype=str)),
                             ("paths", np.array(paths, dtype=str)),
                             ("labels", np.array(labels, dtype=str)),
                             ("spec", np.array(info.spec.to_json()))):
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, values, allow_pickle=False)
