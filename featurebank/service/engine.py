"""What a request needs done: store look-up, decoding off the event loop, batched inference.

The service's one Extractor decides the spec, so its vectors are the ones ``featurebank embed``
stores for the same model, layers and pooling: same decode path, same feature graph.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurebank.extractor import DecodeError, Extractor, image_key
from featurebank.extractor.store import StoreCache
from featurebank.service.batcher import BatchInfo, DynamicBatcher, QueueFullError
from featurebank.service.config import ServiceConfig, ServiceError
from featurebank.service.metrics import ServiceMetrics
from featurebank.service.uploads import Upload

log = logging.getLogger(__name__)


@dataclass
class Embedded:
    """Vectors of one request: ``X`` float32 [N, sum of dims], layers concatenated in order."""

    X: np.ndarray
    keys: list[str]
    cached: list[bool]
    batches: list[BatchInfo]


class ServingEngine:
    """The extractor, decode threads, batcher and optional store behind the HTTP routes."""

    def __init__(self, extractor: Extractor, config: ServiceConfig, metrics: ServiceMetrics,
                 store: str | Path | None = None):
        self.extractor = extractor
        self.config = config
        self.metrics = metrics
        self.fingerprints = [s.fingerprint() for s in extractor.specs]  # builds the graph now
        self.store = StoreCache(store, self.fingerprints) if store else None
        if self.store is not None:
            self.store.check()
        self.batcher = DynamicBatcher(extractor.embed_pixels, config.max_batch_size,
                                      config.max_wait_ms, config.max_queue_images,
                                      on_batch=metrics.observe_batch)
        metrics.queue_depth.set_function(lambda: self._in_flight)
        self._decoders: ThreadPoolExecutor | None = None
        self._ready = False
        self._in_flight = 0  # images accepted and not yet answered
        self._start_lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Create the session, warm it up and start the threads (idempotent)."""
        with self._start_lock:
            if self._ready and self.batcher.alive:
                return
            # A full batch first: onnxruntime's arena grows to its working size now, so memory
            # is flat from the first request on (and the first client does not pay for it).
            h, w = self.extractor.spec_preprocessing.input_size
            self.extractor.embed_pixels(np.zeros((self.config.max_batch_size, h, w, 3), np.uint8))
            workers = self.config.decode_workers or os.cpu_count() or 2
            if self._decoders is None:
                self._decoders = ThreadPoolExecutor(workers, thread_name_prefix="featurebank-decode")
            self.batcher.start()
            self._ready = True

    def stop(self) -> None:
        self._ready = False
        self.batcher.stop()
        if self._decoders is not None:
            self._decoders.shutdown(wait=False, cancel_futures=True)
            self._decoders = None

    @property
    def ready(self) -> bool:
        return self._ready and self.batcher.alive

    @property
    def failed(self) -> bool:
        """Started once, but the inference thread is gone."""
        return self._ready and not self.batcher.alive

    @property
    def dim(self) -> int:
        return int(sum(self.extractor.graph.dims))

    # -- work -----------------------------------------------------------------------------
    def _decode(self, upload: Upload, position: int, count: int) -> np.ndarray:
        try:
            return self.extractor.decode(upload.data, upload.name)
        except DecodeError as exc:
            where = f"image {upload.name!r}" + (f" ({position + 1} of {count})" if count > 1 else "")
            raise ServiceError(422, f"{where} cannot be embedded: {exc.reason}", image=upload.name,
                               index=position, reason=exc.reason) from None

    async def embed(self, uploads: list[Upload]) -> Embedded:
        """Vectors for the uploads: from the store where it has them, else computed.

        Admission is counted from arrival, not from the inference queue: images still being
        decoded count too, so under overload requests are refused at once with 503 instead
        of piling up in front of the decode threads.
        """
        n = len(uploads)
        if self._in_flight + n > self.config.max_queue_images:
            raise self._at_capacity(f"{self._in_flight} images in progress, "
                                    f"{self.config.max_queue_images} at most")
        self._in_flight += n  # only ever touched on the event loop: no lock needed
        try:
            return await self._embed(uploads)
        finally:
            self._in_flight -= n

    def _at_capacity(self, detail: str) -> ServiceError:
        return ServiceError(503, f"the service is at capacity ({detail}); retry later",
                            headers={"Retry-After": str(self.config.retry_after_s)})

    async def _embed(self, uploads: list[Upload]) -> Embedded:
        if not self.ready:
            await asyncio.to_thread(self.start)
        loop = asyncio.get_running_loop()
        keys = [image_key(u.data) for u in uploads]
        found = await asyncio.to_thread(self.store.lookup, keys) if self.store else {}
        todo = [i for i in range(len(uploads)) if i not in found]
        X = np.empty((len(uploads), self.dim), np.float32)
        batches: list[BatchInfo] = []
        if todo:
            pixels = await asyncio.gather(*(
                loop.run_in_executor(self._decoders, self._decode, uploads[i], i, len(uploads))
                for i in todo))
            try:
                layers, batches = await self.batcher.submit(np.stack(pixels))
            except QueueFullError as exc:
                raise self._at_capacity(str(exc)) from None
            X[todo] = np.hstack(layers) if len(layers) > 1 else layers[0]
        for i, vector in found.items():
            X[i] = vector
        self.metrics.images.labels("computed").inc(len(todo))
        self.metrics.images.labels("store").inc(len(found))
        return Embedded(X, keys, [i in found for i in range(len(uploads))], batches)

    async def embed_within_timeout(self, uploads: list[Upload]) -> Embedded:
        try:
            return await asyncio.wait_for(self.embed(uploads), self.config.request_timeout_s)
        except TimeoutError:
            raise ServiceError(504, f"not answered within {self.config.request_timeout_s:g} s "
                                    "(request_timeout_s); the service is overloaded or the "
                                    "images are very large") from None
