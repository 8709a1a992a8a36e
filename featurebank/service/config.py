"""Limits and batching knobs of the HTTP service, with the defaults ``featurebank serve`` uses."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from featurebank.errors import FeaturebankError


@dataclass(frozen=True)
class ServiceConfig:
    """How the service batches and what it accepts.

    Parameters
    ----------
    max_batch_size : int
        Most images in one inference call; images of concurrent requests are coalesced up to it.
    max_wait_ms : float
        How long the first image of a batch waits for company before the batch runs anyway.
    max_queue_images : int
        Images accepted and not yet answered (decoding, waiting or in inference); a request
        that would go past it gets 503 + Retry-After at once.
    max_request_bytes : int
        Largest request body (413 above it).
    max_images_per_request : int
        Most images in one multipart request (413 above it).
    max_pixels : int
        Largest decoded image (width x height); larger images get 422 (decompression bombs).
    request_timeout_s : float
        A request not answered by then gets 504 and its queued images are dropped.
    decode_workers : int, optional
        Threads decoding images off the event loop (default: CPU cores).
    retry_after_s : int
        The Retry-After value sent with 503.
    """

    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue_images: int = 256
    max_request_bytes: int = 32 * 2**20
    max_images_per_request: int = 64
    max_pixels: int = 50_000_000
    request_timeout_s: float = 30.0
    decode_workers: int | None = None
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        positive = ("max_batch_size", "max_queue_images", "max_request_bytes",
                    "max_images_per_request", "max_pixels", "request_timeout_s", "retry_after_s")
        for name in positive:
            if not getattr(self, name) > 0:
                raise FeaturebankError(f"service setting {name} must be > 0, got {getattr(self, name)!r}")
        if self.max_wait_ms < 0:
            raise FeaturebankError(f"service setting max_wait_ms must be >= 0, got {self.max_wait_ms!r}")
        if self.max_queue_images < self.max_batch_size:
            raise FeaturebankError(
                f"max_queue_images ({self.max_queue_images}) must be >= max_batch_size "
                f"({self.max_batch_size}): a full batch must fit in the queue")

    def to_dict(self) -> dict:
        return asdict(self)


class ServiceError(Exception):
    """An HTTP error answer: status, a message saying what to do, optional JSON fields."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None,
                 **fields):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.fields = fields
