"""Images out of a request: one raw ``image/*`` body, or several multipart file parts.

The body is read against the byte limit before anything is parsed, so an oversized upload
costs at most ``max_request_bytes`` of memory and gets 413; a malformed multipart body gets 400.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from featurebank.service.config import ServiceConfig, ServiceError

RAW_TYPES = ("image/", "application/octet-stream")
UPLOAD_HINT = ("send one image as the raw body (Content-Type: image/jpeg, image/png, ...) or "
               "several as multipart/form-data file parts named 'files'")

# The request body as OpenAPI sees it (the handler reads it itself, to enforce the limits).
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {"schema": {
                "type": "object",
                "properties": {"files": {"type": "array",
                                         "items": {"type": "string", "format": "binary"}}},
                "required": ["files"],
            }},
        },
    }
}


@dataclass(frozen=True)
class Upload:
    """One image of a request: the name errors use and its encoded bytes."""

    name: str
    data: bytes


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ServiceError(400, f"Content-Length {declared!r} is not a number")
        if int(declared) > limit:
            raise ServiceError(413, f"request body of {declared} bytes is over the limit of "
                                    f"{limit} bytes; send fewer or smaller images")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ServiceError(413, f"request body is over the limit of {limit} bytes; "
                                        "send fewer or smaller images")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ServiceError(400, "the client hung up before sending the whole body") from None
    return b"".join(chunks)


async def _multipart(request: Request, body: bytes, max_images: int) -> list[Upload]:
    async def stream():
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=max_images + 1,
                             max_fields=max_images + 16)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ServiceError(400, f"malformed multipart body ({exc.message}); {UPLOAD_HINT}") from None
    try:
        files = [(field, value) for field, value in form.multi_items() if not isinstance(value, str)]
        if len(files) > max_images:
            raise ServiceError(413, f"more than {max_images} images in one request; split it")
        if not files:
            raise ServiceError(422, f"the multipart body holds no file part; {UPLOAD_HINT}")
        uploads = []
        for i, (field, f) in enumerate(files):
            name = f.filename or f"{field}[{i}]"
            uploads.append(Upload(name, await f.read()))
        return uploads
    finally:
        await form.close()


async def read_uploads(request: Request, config: ServiceConfig) -> list[Upload]:
    """The request's images, in order; :class:`ServiceError` for anything unusable."""
    ctype = request.headers.get("content-type", "").strip().lower()
    if not (ctype.startswith("multipart/form-data") or ctype.startswith(RAW_TYPES)):
        raise ServiceError(415, f"Content-Type {ctype or '(none)'!r} is not accepted; {UPLOAD_HINT}")
    body = await read_body(request, config.max_request_bytes)
    if ctype.startswith("multipart/form-data"):
        return await _multipart(request, body, config.max_images_per_request)
    if not body:
        raise ServiceError(422, f"the request body is empty; {UPLOAD_HINT}", image="body",
                           reason="empty")
    return [Upload("body", body)]
