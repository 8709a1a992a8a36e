"""Limits and batching knobs of the HTTP service: the one place their defaults live
(``featurebank serve`` builds its flags from :class:`ServiceConfig`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from featurebank.errors import OptionError
from featurebank.options import Interval, check_options, option
from featurebank.spec import MAX_PIXELS

_POSITIVE = Interval(int, 1, None)


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
        The default is the one of every decode, :data:`featurebank.spec.MAX_PIXELS`.
    request_timeout_s : float
        A request not answered by then gets 504 and its queued images are dropped.
    decode_workers : int, optional
        Threads decoding images off the event loop (default: CPU cores).
    retry_after_s : int
        The Retry-After value sent with 503.
    """

    max_batch_size: int = option(32, _POSITIVE)
    max_wait_ms: float = option(5.0, Interval(float, 0, None))
    max_queue_images: int = option(256, _POSITIVE,
                                   help="images waiting for an answer before 503")
    max_request_bytes: int = option(32 * 2**20, _POSITIVE)
    max_images_per_request: int = option(64, _POSITIVE)
    max_pixels: int = option(MAX_PIXELS, _POSITIVE)
    request_timeout_s: float = option(30.0, Interval(float, 0, None, "neither"),
                                      help="seconds per request before 504")
    decode_workers: int | None = option(None, None, _POSITIVE)
    retry_after_s: int = option(1, _POSITIVE)

    def __post_init__(self) -> None:
        check_options(self)
        if self.max_queue_images < self.max_batch_size:
            raise OptionError("max_queue_images", f"({self.max_queue_images}) must be >= "
                              f"max_batch_size ({self.max_batch_size}): a full batch must fit "
                              "in the queue", related=("max_batch_size",),
                              owner="ServiceConfig")

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
