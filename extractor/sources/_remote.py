"""Files behind URLs, through fsspec (the ``io`` extra): one place that opens them and turns
their many error types into ours.

Credentials and endpoints follow fsspec's own conventions: for ``s3://`` the AWS environment
(``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``, ``~/.aws``) or fsspec's
configuration (``FSSPEC_S3_ENDPOINT_URL``, ``~/.config/fsspec/*.json``); ``gs://`` and ``az://``
likewise through gcsfs and adlfs (untested here).
"""

from __future__ import annotations

from typing import Any

from featurebank.errors import FeaturebankError
from featurebank.extractor.sources._forms import DecodeError, is_url, local_form

EXTRA = "pip install 'featurebank[io]'"


def filesystem(url: str) -> tuple[Any, str]:
    """``(fs, path)`` for a URL: fsspec's filesystem (cached by fsspec) and the path in it."""
    try:
        from fsspec.core import url_to_fs
    except ImportError as exc:
        raise FeaturebankError(f"reading {url} needs fsspec: {EXTRA}") from exc
    try:
        return url_to_fs(url)
    except ImportError as exc:  # the protocol's own package (s3fs, gcsfs, adlfs) is missing
        raise FeaturebankError(f"reading {url}: {exc} (s3:// comes with {EXTRA}; gs:// needs "
                               "gcsfs, az:// adlfs, installed by you)") from exc
    except ValueError as exc:
        raise FeaturebankError(f"{url}: {exc}") from exc


def why(exc: BaseException) -> str:
    """A short reason for a failed access: missing, refused (credentials), unreachable."""
    name = type(exc).__name__
    text = str(exc).strip()[:200] or name
    if isinstance(exc, FileNotFoundError):
        return f"not found ({text})"
    if isinstance(exc, PermissionError) or "Credential" in name or "AccessDenied" in text:
        return f"access refused: check the credentials ({name}: {text})"
    if "Connect" in name or "Endpoint" in name or isinstance(exc, (ConnectionError, TimeoutError)):
        return f"endpoint unreachable ({name}: {text})"
    return f"{name}: {text}"


def input_error(url: str, exc: BaseException) -> FeaturebankError:
    """The error for an input that cannot be listed or opened (raised before the store)."""
    if isinstance(exc, FeaturebankError):
        return exc
    if isinstance(exc, FileNotFoundError):
        if url.lower().startswith(("http://", "https://")):  # fsspec's HTTP says no more
            return FeaturebankError(f"input {url} does not exist or cannot be reached")
        bucket = _missing_bucket(url)
        if bucket:
            return FeaturebankError(f"input {url}: bucket {bucket!r} does not exist")
        return FeaturebankError(f"input {url} does not exist")
    return FeaturebankError(f"input {url}: {why(exc)}")


def _missing_bucket(url: str) -> str | None:
    try:
        fs, path = filesystem(url)
        bucket = path.split("/", 1)[0]
        if "/" in path and not fs.exists(bucket):
            return bucket
    except Exception:  # the question is only asked to word the message better
        return None
    return None


def info(url: str) -> dict:
    """fsspec's ``info`` of an input URL (``type``: file or directory), or a FeaturebankError."""
    fs, path = filesystem(url)
    try:
        return fs.info(path)
    except Exception as exc:
        raise input_error(url, exc) from exc


def find(url: str, pattern: bool) -> list[str]:
    """The files below a URL prefix (or matching a URL glob), as URLs, sorted."""
    fs, path = filesystem(url)
    try:
        found = fs.glob(path) if pattern else fs.find(path)
    except Exception as exc:
        raise input_error(url, exc) from exc
    return sorted(fs.unstrip_protocol(p) for p in found)


def cat(url: str) -> bytes:
    """The bytes of a remote file; any failure is a DecodeError with its reason."""
    fs, path = filesystem(url)
    try:
        return fs.cat_file(path)
    except Exception as exc:
        raise DecodeError(f"unreadable ({why(exc)})", url) from None


def open_binary(url: str, block_size: int | None = None):
    """A file object for streaming reads of a local path or a URL (a context manager)."""
    if not is_url(url) or url.lower().startswith("file://"):
        return open(local_form(url), "rb")
    fs, path = filesystem(url)
    kwargs = {"block_size": block_size} if block_size else {}
    return fs.open(path, "rb", **kwargs)
