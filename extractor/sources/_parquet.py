"""Parquet files holding images: a binary column, or the Hugging Face ``image`` struct
``{bytes, path}``, with an optional label column (Hugging Face ``ClassLabel`` integers are
given their names from the file's ``huggingface`` metadata).

Rows are read by row group, only the image column: memory stays within one row group.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

from featurebank.errors import FeaturebankError
from featurebank.extractor.sources._forms import DecodeError, ImageItem, row_path
from featurebank.extractor.sources._options import SourceOptions
from featurebank.extractor.sources._remote import EXTRA, open_binary, why


@contextmanager
def parquet_file(container: str):
    """A ``pyarrow.parquet.ParquetFile`` over a local path or URL."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise FeaturebankError(f"reading {container} needs pyarrow: {EXTRA}") from exc
    with open_binary(container) as f:
        yield pq.ParquetFile(f)


def _is_binary(t) -> bool:
    import pyarrow as pa

    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _is_image_type(t) -> bool:
    import pyarrow as pa

    return _is_binary(t) or (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0
                             and _is_binary(t.field("bytes").type))


def image_column(schema, wanted: str | None = None) -> str | None:
    """The column holding image bytes: ``wanted``, else ``image``, else the only binary one;
    None when the file has none (it may be a list file)."""
    names = schema.names
    if wanted is not None:
        if wanted not in names or not _is_image_type(schema.field(wanted).type):
            return None
        return wanted
    if "image" in names and _is_image_type(schema.field("image").type):
        return "image"
    binary = [n for n in names if _is_image_type(schema.field(n).type)]
    return binary[0] if len(binary) == 1 else None


def class_names(schema, column: str) -> list[str] | None:
    """Hugging Face ``ClassLabel`` names of a column, from the file's metadata."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return None
    try:
        feature = json.loads(raw)["info"]["features"][column]
    except (ValueError, KeyError, TypeError):
        return None
    names = feature.get("names") if isinstance(feature, dict) else None
    return list(names) if isinstance(names, list) else None


def read_columns(pf, container: str, options: SourceOptions, required: tuple[str, ...] = ()):
    """The label strings (or '') and the row numbers kept by ``options.split``, for a table's
    rows; plus its other columns named in ``required`` (lists: ``path``)."""
    schema = pf.schema_arrow
    names = schema.names
    missing = [c for c in required if c not in names]
    if missing:
        raise FeaturebankError(f"{container}: no column {missing[0]!r} (columns: {names})")
    if options.split is not None and "split" not in names:
        raise options.no_split_column(f"{container} (columns: {names})")
    label = options.label_column if options.label_column in names else None
    columns = [*required, *([label] if label else []),
               *(["split"] if options.split is not None else [])]
    table = pf.read(columns=columns)
    n = pf.metadata.num_rows
    labels = [""] * n
    if label:
        values = table.column(label).to_pylist()
        names_of = class_names(schema, label)
        labels = [("" if v is None else
                   names_of[v] if names_of and isinstance(v, int) and 0 <= v < len(names_of)
                   else str(v)) for v in values]
    rows = list(range(n))
    if options.split is not None:
        splits = table.column("split").to_pylist()
        rows = [i for i in rows if splits[i] == options.split]
    extra = {c: table.column(c).to_pylist() for c in required}
    return labels, rows, extra


def list_parquet_images(container: str, pf, column: str, options: SourceOptions) -> list[ImageItem]:
    """One item per row (``CONTAINER#row=N``) of a parquet file with image bytes."""
    labels, rows, _ = read_columns(pf, container, options)
    default = image_column(pf.schema_arrow)
    recorded = None if column == default else column
    return [ImageItem(row_path(container, i, recorded), labels[i]) for i in rows]


def iter_parquet(container: str, rows: list[int], column: str | None = None
                 ) -> Iterator[tuple[int, bytes | DecodeError]]:
    """``(row, bytes)`` for each wanted row, reading only the row groups holding them, in file
    order; a row without bytes, or a file that cannot be read, gives ``(row, DecodeError)``."""
    wanted = sorted(set(rows))
    done: set[int] = set()
    try:
        with parquet_file(container) as pf:
            col = image_column(pf.schema_arrow, column)
            if col is None:
                raise ValueError(f"no image column {column or 'image'!r} "
                                 f"(columns: {pf.schema_arrow.names})")
            start = 0
            for g in range(pf.metadata.num_row_groups):
                size = pf.metadata.row_group(g).num_rows
                here = [r for r in wanted if start <= r < start + size]
                if here:
                    values = pf.read_row_group(g, columns=[col]).column(0).to_pylist()
                    for r in here:
                        done.add(r)
                        yield r, _bytes_of(values[r - start], row_path(container, r, column))
                start += size
        reason = "row not in the file"
    except Exception as exc:  # gone mid-run, cut short, unreadable: the rest is recorded
        reason = f"parquet file unreadable ({why(exc)})"
    for r in wanted:
        if r not in done:
            yield r, DecodeError(reason, row_path(container, r, column))


def _bytes_of(value, where: str) -> bytes | DecodeError:
    if isinstance(value, dict):  # the Hugging Face image struct
        data = value.get("bytes")
        if data is None:
            path = value.get("path")
            return DecodeError("row holds no image bytes" + (f" (only a path: {path})"
                                                             if path else ""), where)
        return data
    return DecodeError("row holds no image bytes", where) if value is None else value
