"""Webdataset tar shards: members ``KEY.jpg`` (any image extension) with their label in
``KEY.cls`` (a class index or name as text) or ``KEY.json`` (its ``label`` field).

Shards are read streaming (``tarfile`` stream mode over a local file or an fsspec file object),
never unpacked to disk. A shard is read twice: once when the inputs are collected (member names
and labels: the whole shard streams by, labels are read, images skipped) and once to embed.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from collections.abc import Iterator

from featurebank.extractor.sources._forms import (
    DecodeError,
    ImageItem,
    is_image_name,
    is_url,
    member_path,
)
from featurebank.extractor.sources._remote import open_binary, why

log = logging.getLogger(__name__)
STREAM_BLOCK = 8 << 20  # fsspec read size for a remote shard: few requests, bounded memory


def _key(name: str) -> tuple[str, str]:
    """Webdataset's (key, extension): the extension starts at the basename's first dot."""
    folder, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _open(container: str, f) -> tarfile.TarFile:
    # a local shard is opened seekable: listing skips image data instead of reading it
    if not is_url(container) or container.lower().startswith("file://"):
        return tarfile.open(fileobj=f, mode="r:*")
    return tarfile.open(fileobj=f, mode="r|*")


def _label(ext: str, data: bytes) -> str | None:
    text = data.decode("utf-8", "replace").strip()
    if ext == "cls":
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, dict):
        for field in ("label", "cls"):
            if field in value and value[field] is not None:
                return str(value[field])
    return None


def list_tar(container: str) -> list[ImageItem]:
    """The image members of a shard as items (``CONTAINER#MEMBER``) with their labels.

    A shard that breaks part-way gives the members before the break and one item carrying the
    error, so the run records it and goes on; a shard that cannot be opened at all raises."""
    images: list[str] = []
    labels: dict[str, str] = {}
    error = ""
    with open_binary(container, STREAM_BLOCK) as f:
        try:
            with _open(container, f) as tf:
                for m in tf:
                    key, ext = _key(m.name)
                    member = tf.extractfile(m) if ext in ("cls", "json") else None
                    if member is not None:
                        label = _label(ext, member.read())
                        if label is not None and (ext == "cls" or key not in labels):
                            labels[key] = label
                    elif is_image_name(m.name):
                        images.append(m.name)
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            if not images:
                raise DecodeError(f"not a readable tar shard ({why(exc)})", container) from None
            error = f"shard broken after {len(images)} image members ({why(exc)})"
            log.warning("%s: %s", container, error)
    items = [ImageItem(member_path(container, name), labels.get(_key(name)[0], ""))
             for name in images]
    if error:
        items.append(ImageItem(member_path(container, "(rest of shard)"), "", error))
    return items


def iter_tar(container: str, members: list[str]) -> Iterator[tuple[str, bytes | DecodeError]]:
    """``(member, bytes)`` for each wanted member, streaming the shard once, in shard order;
    members not found, or past a break in the shard, come as ``(member, DecodeError)``."""
    wanted = set(members)
    where = container
    try:
        with open_binary(container, STREAM_BLOCK) as f, tarfile.open(fileobj=f, mode="r|*") as tf:
            for m in tf:
                if m.name not in wanted:
                    continue
                where = member_path(container, m.name)
                data = tf.extractfile(m) if m.isfile() else None
                payload = (data.read() if data is not None else
                           DecodeError("not a regular file in the shard", where))
                wanted.discard(m.name)  # after the read: a member cut short is reported below
                yield m.name, payload
                if not wanted:
                    return
        reason = "not in the shard"
    except Exception as exc:  # gone mid-run, cut short, unreadable: the rest is recorded
        reason = f"shard unreadable ({why(exc)})"
    for name in members:
        if name in wanted:
            wanted.discard(name)
            yield name, DecodeError(reason, member_path(container, name))
