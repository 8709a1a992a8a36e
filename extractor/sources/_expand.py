"""Inputs into items: list files and containers (local or remote), and remote folders and
globs. Every failure here is a :class:`FeaturebankError` naming the input, raised before any
store is created."""

from __future__ import annotations

import logging

from featurebank.errors import FeaturebankError
from featurebank.extractor.sources._forms import (
    ImageItem,
    container_kind,
    is_image_name,
)
from featurebank.extractor.sources._lists import is_list_name, list_rows_of_parquet, read_list
from featurebank.extractor.sources._options import DEFAULT_SOURCES, SourceOptions
from featurebank.extractor.sources._parquet import image_column, list_parquet_images, parquet_file
from featurebank.extractor.sources._remote import find, info, input_error
from featurebank.extractor.sources._tar import list_tar

log = logging.getLogger(__name__)


def is_tabular(path: str) -> bool:
    """A list file or a parquet file: the inputs ``--split`` applies to."""
    return is_list_name(path) or container_kind(path) == "parquet"


def expand_file(path: str, options: SourceOptions = DEFAULT_SOURCES) -> list[ImageItem] | None:
    """The items of a list file, tar shard or parquet file; None for any other file (an image
    file: it is its own item)."""
    kind = container_kind(path)
    if kind is None and not is_list_name(path):
        return None
    if options.split is not None and not is_tabular(path):
        raise options.not_tabular(path, "a tar shard")
    try:
        if kind == "tar":
            return list_tar(path)
        if kind == "parquet":
            return _parquet_items(path, options)
        return read_list(path, options)
    except FeaturebankError:
        raise
    except Exception as exc:  # fsspec, pyarrow and tarfile errors, named by their input
        if kind == "parquet" and type(exc).__module__.startswith("pyarrow"):
            raise FeaturebankError(f"input {path} is not a readable parquet file ({exc})") \
                from exc
        raise input_error(path, exc) from exc


def _parquet_items(path: str, options: SourceOptions) -> list[ImageItem]:
    with parquet_file(path) as pf:
        schema = pf.schema_arrow
        column = image_column(schema, options.image_column)
        if column is not None:
            return list_parquet_images(path, pf, column, options)
        if options.image_column is not None:
            raise FeaturebankError(f"{path}: no image column {options.image_column!r} (binary, "
                                   f"or a struct with 'bytes'); columns: {schema.names}")
        if "path" in schema.names:
            return list_rows_of_parquet(path, pf, options)
        raise FeaturebankError(
            f"{path} has neither image bytes (an 'image' column, or name a binary column: "
            f"image_column='NAME') nor a 'path' column of a list; columns: {schema.names}")


def collect_remote(url: str, options: SourceOptions = DEFAULT_SOURCES) -> list[ImageItem]:
    """Items of a URL input: a file (image, list or container), a glob, or a prefix ("folder":
    images below it, labelled by their first sub-folder as in a local folder)."""
    if any(ch in url for ch in "*?["):
        matches = find(url, pattern=True)
        if not matches:
            raise FeaturebankError(f"input pattern {url!r} matches no object")
        items: list[ImageItem] = []
        containers = sum(1 for m in matches if container_kind(m))
        done = 0
        for m in matches:
            found = expand_file(m, options)
            if container_kind(m):  # a remote shard is read whole to list it: say how far
                done += 1
                log.info("listed %s (%d of %d): %d images", m, done, containers,
                         len(found or []))
            items.extend(found if found is not None else
                         [ImageItem(m)] if is_image_name(m) else [])
        return items
    described = info(url)
    if described.get("type") == "directory":
        if options.split is not None:
            raise options.not_tabular(url, "a folder")
        base = url.rstrip("/")
        items = []
        for m in find(base, pattern=False):
            rel = m[len(base):].lstrip("/")
            if is_image_name(m):
                label = rel.split("/", 1)[0] if "/" in rel else ""
                items.append(ImageItem(m, label))
        return items
    found = expand_file(url, options)
    if found is None and options.split is not None:
        raise options.not_tabular(url, "an image file")
    return found if found is not None else [ImageItem(url)]
