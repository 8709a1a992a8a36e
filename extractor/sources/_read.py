"""Reading stored paths back: :func:`open_source` for one, :func:`iter_payloads` for many
(each container streamed once, whatever the number of its items)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence

from featurebank.extractor.sources._forms import (
    DecodeError,
    ImageItem,
    SourceRef,
    is_remote,
    local_form,
    parse_source,
)
from featurebank.extractor.sources._parquet import iter_parquet
from featurebank.extractor.sources._remote import cat
from featurebank.extractor.sources._tar import iter_tar

Payload = bytes | DecodeError | None  # None: a plain file, to be read with open_source


def read_local(path: str | os.PathLike) -> bytes:
    """The bytes of a local file; unreadable paths become DecodeError with a reason."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise DecodeError("is a directory", str(path))
        if not stat.S_ISREG(mode):  # a FIFO or device would block or never end
            raise DecodeError("not a regular file", str(path))
        with open(path, "rb") as f:
            return f.read()
    except IsADirectoryError:
        raise DecodeError("is a directory", str(path)) from None
    except PermissionError:
        raise DecodeError("permission denied", str(path)) from None
    except OSError as exc:
        raise DecodeError(f"unreadable ({exc.strerror or exc})", str(path)) from None


def open_source(path: str | os.PathLike) -> bytes:
    """The bytes of the image a stored path names, in any of its forms: a local file, a URL
    (``s3://``, ``https://``, ...), a tar shard member (``shard.tar#KEY.jpg``) or a parquet row
    (``file.parquet#row=N``).

    A member or row is found by streaming its container up to it: reading many from one
    container is :func:`iter_payloads`' job. Failures raise :class:`DecodeError` with a reason.
    """
    text = os.fspath(path)
    ref = parse_source(text)
    if ref.kind == "file":
        return cat(text) if is_remote(text) else read_local(local_form(text))
    _, payload = next(_container_payloads(ref.container, [ref]))
    if isinstance(payload, DecodeError):
        raise payload
    return payload


def iter_payloads(items: Sequence[ImageItem]) -> Iterator[tuple[ImageItem, Payload]]:
    """Every item with its bytes (container members, streamed once per container), a
    :class:`DecodeError` (a broken source), or None (a plain file or URL: the caller reads it
    with :func:`open_source`, in parallel if it likes).

    Plain files come in input order; the items of one container come together, in the
    container's order, when its first item is reached."""
    by_container: dict[str, list[tuple[SourceRef, ImageItem]]] = {}
    refs = []
    for item in items:
        ref = parse_source(item.path)
        refs.append(ref)
        if ref.kind != "file" and not item.error:
            by_container.setdefault(ref.container, []).append((ref, item))
    for item, ref in zip(items, refs, strict=True):
        if item.error:
            yield item, DecodeError(item.error, item.path)
        elif ref.kind == "file":
            yield item, None
        elif ref.container in by_container:
            group = by_container.pop(ref.container)
            waiting: dict[str, list[ImageItem]] = {}
            for r, it in group:
                waiting.setdefault(str(r), []).append(it)
            for found, payload in _container_payloads(ref.container, [r for r, _ in group]):
                for it in waiting.pop(str(found), []):
                    yield it, payload


def read_all(paths: Sequence[str]) -> Iterator[tuple[int, bytes | DecodeError]]:
    """``(index, bytes or DecodeError)`` for every path (one pass per container)."""
    items = [ImageItem(str(p), str(i)) for i, p in enumerate(paths)]
    for item, payload in iter_payloads(items):
        if payload is None:
            try:
                payload = open_source(item.path)
            except DecodeError as exc:
                payload = exc
        yield int(item.label), payload


def _container_payloads(container: str, refs: list[SourceRef]
                        ) -> Iterator[tuple[SourceRef, bytes | DecodeError]]:
    if refs[0].kind == "tar":
        for member, payload in iter_tar(container, [str(r.member) for r in refs]):
            yield SourceRef(container, member=member), payload
        return
    by_column: dict[str | None, list[int]] = {}
    for r in refs:
        by_column.setdefault(r.column, []).append(int(r.row or 0))
    for column, rows in by_column.items():
        for row, payload in iter_parquet(container, rows, column):
            yield SourceRef(container, row=row, column=column), payload
