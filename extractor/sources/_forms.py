"""Where an item comes from, as one string: the path the store records (format version 3).

- ``/abs/photo.jpg``: a local file (``file://`` URLs are stored in this form);
- ``s3://bucket/photo.jpg`` (any fsspec URL: ``gs://``, ``az://``, ``https://``): a remote file;
- ``CONTAINER#MEMBER``: member ``MEMBER`` of the tar shard ``CONTAINER`` (``.tar``, ``.tgz``,
  ``.tar.gz``), e.g. ``s3://b/shard-0001.tar#000123.jpg``;
- ``CONTAINER#row=N``: row ``N`` (0-based, over the whole file) of the parquet file
  ``CONTAINER``, e.g. ``/data/train-00000.parquet#row=17``; ``#row=N&column=NAME`` when the
  image bytes are in column ``NAME`` rather than the one found by default (``image``, or the
  file's only binary column).

``CONTAINER`` itself is a local absolute path or a URL. A local file whose own name holds
``.tar#`` (it exists) is that file, not a member.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass

from featurebank.errors import FeaturebankError

TAR_EXTENSIONS = (".tar", ".tgz", ".tar.gz")
PARQUET_EXTENSIONS = (".parquet", ".pq")
CONTAINER_EXTENSIONS = TAR_EXTENSIONS + PARQUET_EXTENSIONS
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+://")
# non-greedy: the first container extension followed by '#' ends the container part
_MEMBER = re.compile(r"^(.+?(?:\.tar|\.tgz|\.tar\.gz|\.parquet|\.pq))#(.+)$", re.IGNORECASE)
_ROW = re.compile(r"^row=(\d+)(?:&column=(.+))?$")


IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class ImageItem:
    """One image to embed: where it comes from (a path in one of the forms above), its label,
    and ``error`` when its source is known to be broken already (a tar shard cut short)."""

    path: str
    label: str = ""
    error: str = ""


class DecodeError(FeaturebankError):
    """An image that cannot be embedded; ``reason`` is short and stable (stored in the store)."""

    def __init__(self, reason: str, source: str = "image"):
        super().__init__(f"{source}: {reason}")
        self.reason = reason
        self.source = source


@dataclass(frozen=True)
class SourceRef:
    """A stored path, parsed: ``container`` with a tar ``member`` or parquet ``row``, or a plain
    file (``container`` only, ``kind == 'file'``)."""

    container: str
    member: str | None = None
    row: int | None = None
    column: str | None = None  # a parquet image column other than the one found by default

    @property
    def kind(self) -> str:
        if self.row is not None:
            return "parquet"
        return "tar" if self.member is not None else "file"

    def __str__(self) -> str:
        if self.row is not None:
            column = f"&column={self.column}" if self.column else ""
            return f"{self.container}#row={self.row}{column}"
        return f"{self.container}#{self.member}" if self.member is not None else self.container


def is_url(text: str) -> bool:
    """``scheme://...`` (``file://`` included)."""
    return bool(_URL.match(str(text)))


def is_remote(text: str) -> bool:
    """A URL that is not a local ``file://`` one."""
    return is_url(text) and not str(text).lower().startswith("file://")


def local_form(text: str) -> str:
    """``file:///x`` -> ``/x``; a local path made absolute; a remote URL unchanged."""
    text = str(text)
    if text.lower().startswith("file://"):
        return os.path.abspath(text[len("file://"):])
    return text if is_url(text) else os.path.abspath(text)


def container_kind(text: str) -> str | None:
    """``'tar'``, ``'parquet'`` or None, from the name's extension."""
    low = str(text).lower()
    if low.endswith(TAR_EXTENSIONS):
        return "tar"
    if low.endswith(PARQUET_EXTENSIONS):
        return "parquet"
    return None


def parse_source(path: str) -> SourceRef:
    """The parts of a stored path (see the module docstring)."""
    path = str(path)
    found = _MEMBER.match(path)
    if found is None or (not is_url(path) and os.path.lexists(path)):
        return SourceRef(path)
    container, rest = found.groups()
    if container_kind(container) == "parquet":
        row = _ROW.match(rest)
        if row is None:
            raise FeaturebankError(f"{path}: a parquet row is named '{container}#row=N'")
        return SourceRef(container, row=int(row.group(1)), column=row.group(2))
    return SourceRef(container, member=rest)


def member_path(container: str, member: str) -> str:
    return str(SourceRef(container, member=member))


def row_path(container: str, row: int, column: str | None = None) -> str:
    return str(SourceRef(container, row=row, column=column))


def parent_of(text: str) -> str:
    """The folder (or URL prefix) holding a file or container."""
    text = str(text)
    if is_url(text):
        return text.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(text))


def join(base: str, relative: str) -> str:
    """``relative`` (a list file's entry) against ``base`` (the list file's folder or prefix);
    absolute paths and URLs stay as they are."""
    if is_url(relative):
        return local_form(relative)
    if os.path.isabs(relative):
        return os.path.abspath(relative)
    if is_url(base):  # ../x against s3://b/lists -> s3://b/x
        scheme, _, rest = base.partition("://")
        return f"{scheme}://" + posixpath.normpath(rest.rstrip("/") + "/" + relative)
    return os.path.abspath(os.path.join(base, relative))
