"""List files: CSV (``.csv``, ``.txt``, ``.lst``), JSON lines (``.jsonl``) and parquet, each row
naming an image by ``path`` with an optional ``label`` and ``split``.

A CSV list whose first row holds a ``path`` cell has a header row (columns by name, in any
order, others ignored); otherwise rows are ``path[,label]`` as always. Relative paths are
resolved against the list file's folder (or URL prefix). A row may name an image file, a URL,
or a member of a container (``shard.tar#000123.jpg``, ``file.parquet#row=17``); a whole
container named by a row is refused: give containers as inputs.
"""

from __future__ import annotations

import csv
import io
import json

from featurebank.errors import FeaturebankError
from featurebank.extractor.sources._forms import (
    ImageItem,
    container_kind,
    join,
    parent_of,
    parse_source,
)
from featurebank.extractor.sources._options import DEFAULT_SOURCES, SourceOptions
from featurebank.extractor.sources._remote import open_binary

TEXT_LIST_EXTENSIONS = (".txt", ".csv", ".lst")
LIST_EXTENSIONS = (*TEXT_LIST_EXTENSIONS, ".jsonl")


def is_list_name(name: str) -> bool:
    return str(name).lower().endswith(LIST_EXTENSIONS)


def read_list(path: str, options: SourceOptions = DEFAULT_SOURCES) -> list[ImageItem]:
    """The items a CSV or JSON-lines list file names (see the module docstring)."""
    with open_binary(path) as f:
        text = io.TextIOWrapper(f, encoding="utf-8", errors="surrogateescape", newline="")
        rows = (_jsonl_rows(path, text, options) if path.lower().endswith(".jsonl")
                else _csv_rows(path, text, options))
        return [_item(path, p, label, n) for n, p, label in rows]


def list_rows_of_parquet(path: str, pf, options: SourceOptions) -> list[ImageItem]:
    """The items a parquet list file (a ``path`` column, no image bytes) names."""
    from featurebank.extractor.sources._parquet import read_columns

    labels, rows, extra = read_columns(pf, path, options, required=("path",))
    paths = extra["path"]
    return [_item(path, paths[i], labels[i], i + 1) for i in rows if paths[i]]


def _item(list_path: str, raw: str, label: str, row: int) -> ImageItem:
    target = join(parent_of(list_path), str(raw).strip())
    try:
        parse_source(target)  # a malformed member form is refused now, not mid-run
    except FeaturebankError as exc:
        raise FeaturebankError(f"list {list_path} row {row}: {exc}") from None
    if container_kind(target):
        raise FeaturebankError(f"list {list_path} row {row} names a whole container "
                               f"({raw}); give containers as inputs, or name a member "
                               "(shard.tar#KEY.jpg, file.parquet#row=N)")
    return ImageItem(target, label)


def _csv_rows(path: str, text, options: SourceOptions):
    header: dict[str, int] | None = None
    for n, row in enumerate(csv.reader(text), start=1):
        if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
            continue
        cells = [c.strip() for c in row]
        if header is None and is_header(cells):
            header = {c.lower(): i for i, c in enumerate(cells)}
            continue
        if header is None:
            if options.split is not None:
                raise options.no_split_column(f"list {path} (no header row; start it with "
                                              "'path,label,split')")
            header = {"path": 0, options.label_column.lower(): 1}
        get = {name: (cells[i] if i < len(cells) else "") for name, i in header.items()}
        if not options.keeps(get.get("split"), f"list {path} (columns: {sorted(header)})"):
            continue
        if get["path"]:
            yield n, get["path"], get.get(options.label_column.lower(), "")


def is_header(cells: list[str]) -> bool:
    """Whether a list's first row is a header: one of its cells is the column name ``path``."""
    return "path" in (c.lower() for c in cells)


def _jsonl_rows(path: str, text, options: SourceOptions):
    for n, line in enumerate(text, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise FeaturebankError(f"list {path} line {n} is not JSON ({exc})") from None
        if not isinstance(row, dict) or not row.get("path"):
            raise FeaturebankError(f"list {path} line {n} has no 'path' field")
        if not options.keeps(row.get("split"), f"list {path} line {n}"):
            continue
        label = row.get(options.label_column)
        yield n, str(row["path"]), "" if label is None else str(label)
