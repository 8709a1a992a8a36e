"""Dynamic batching: images of concurrent requests share one inference call.

Requests put their decoded pixels on a bounded queue and await a future. One inference thread
takes the queue's head, waits at most ``max_wait_ms`` (counted from when that head arrived) for
more images, runs up to ``max_batch_size`` images through the session at once, and hands each
request its rows back on its own event loop (``call_soon_threadsafe``). A single thread owns
the session, so batches never compete with each other for the cores; onnxruntime releases the
GIL, so the event loop and the decode threads keep running meanwhile.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from featurebank.service.config import ServiceConfig

_DEFAULTS = ServiceConfig()

log = logging.getLogger(__name__)


class QueueFullError(Exception):
    """The queue cannot take the request's images now (answered with 503 + Retry-After)."""


@dataclass(frozen=True)
class BatchInfo:
    """Which inference call computed some of a request's rows, and how many images it held."""

    id: int
    size: int


@dataclass
class _Job:
    pixels: np.ndarray
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: bool = False  # the request gave up (timeout, disconnect): skip its rows


def _resolve(future: asyncio.Future, value=None, error: BaseException | None = None) -> None:
    if future.done():  # the request was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class DynamicBatcher:
    """Coalesce images of concurrent requests into inference batches on one worker thread.

    Parameters
    ----------
    run : callable
        ``run(pixels uint8 [N, H, W, 3]) -> list of float32 [N, D]`` (one array per layer).
    max_batch_size, max_wait_ms, max_queue_images
        As in :class:`featurebank.service.ServiceConfig` (whose defaults they take).
    on_batch : callable, optional
        ``on_batch(size, seconds)`` after every inference call (metrics).
    """

    def __init__(self, run: Callable[[np.ndarray], list[np.ndarray]],
                 max_batch_size: int = _DEFAULTS.max_batch_size,
                 max_wait_ms: float = _DEFAULTS.max_wait_ms,
                 max_queue_images: int = _DEFAULTS.max_queue_images,
                 on_batch: Callable[[int, float], None] | None = None):
        self.run = run
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue_images = max_queue_images
        self.on_batch = on_batch
        self._queue: deque[_Job] = deque()
        self._queued_images = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._ids = itertools.count(1)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._worker, name="featurebank-batcher",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- requests -------------------------------------------------------------------------
    async def submit(self, pixels: np.ndarray) -> tuple[list[np.ndarray], list[BatchInfo]]:
        """Embed ``pixels`` in shared batches; rows per layer and the batches that made them.

        Raises :class:`QueueFullError` at once when the queue has no room for the images.
        Cancelling the awaiting task (timeout, client gone) drops the images still queued.
        """
        if not self.alive:
            raise RuntimeError("the inference thread is not running")
        loop = asyncio.get_running_loop()
        chunks = [pixels[i:i + self.max_batch_size]
                  for i in range(0, len(pixels), self.max_batch_size)]
        jobs = [_Job(chunk, loop, loop.create_future()) for chunk in chunks]
        with self._cond:
            if self._queued_images + len(pixels) > self.max_queue_images:
                raise QueueFullError(f"{self._queued_images} images queued, "
                                     f"{self.max_queue_images} at most")
            self._queue.extend(jobs)
            self._queued_images += len(pixels)
            self._cond.notify()
        try:
            parts = await asyncio.gather(*(job.future for job in jobs))
        except BaseException:
            for job in jobs:
                job.cancelled = True
            raise
        layers = [np.concatenate([rows[i] for rows, _ in parts]) for i in range(len(parts[0][0]))]
        return layers, [info for _, info in parts]

    # -- the inference thread -------------------------------------------------------------
    def _take_batch(self) -> list[_Job] | None:
        """Block until a batch is due; None when stopping."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            deadline = self._queue[0].enqueued + self.max_wait
            while self._queued_images < self.max_batch_size and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch: list[_Job] = []
            size = 0
            while self._queue and (not batch or size + len(self._queue[0].pixels) <= self.max_batch_size):
                job = self._queue.popleft()
                self._queued_images -= len(job.pixels)
                if not job.cancelled:
                    batch.append(job)
                    size += len(job.pixels)
            return batch

    def _worker(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                break
            if not batch:
                continue
            info = BatchInfo(next(self._ids), sum(len(job.pixels) for job in batch))
            started = time.perf_counter()
            try:
                outputs = self.run(np.concatenate([job.pixels for job in batch]))
            except Exception as exc:  # one bad batch must not kill the thread
                log.exception("inference failed for a batch of %d images", info.size)
                for job in batch:
                    job.loop.call_soon_threadsafe(_resolve, job.future, None, exc)
                continue
            if self.on_batch is not None:
                self.on_batch(info.size, time.perf_counter() - started)
            start = 0
            for job in batch:
                n = len(job.pixels)
                rows = [out[start:start + n] for out in outputs]
                start += n
                try:
                    job.loop.call_soon_threadsafe(_resolve, job.future, (rows, info))
                except RuntimeError:  # the request's event loop is closed (shutdown)
                    pass
        # stopping: nobody will run what is left
        with self._cond:
            while self._queue:
                job = self._queue.popleft()
                try:
                    job.loop.call_soon_threadsafe(
                        _resolve, job.future, None, RuntimeError("the service is shutting down"))
                except RuntimeError:
                    pass
            self._queued_images = 0
