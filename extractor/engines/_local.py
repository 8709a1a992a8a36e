"""The local engine: decode in worker threads overlapped with inference, commit per batch.

Per image: read bytes, key = SHA-256 of the bytes. Content already stored for every requested
feature set is *cached* (only its path is recorded); content seen earlier in this run is a
*duplicate*; the rest is decoded in a thread pool (Pillow releases the GIL) while onnxruntime
runs the previous batch. Each batch is committed before the next one is run, so a kill loses
at most the batch in flight. At most a few batches are in flight: memory stays flat however
large the collection.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import replace

import numpy as np

from featurebank.errors import FeaturebankError
from featurebank.extractor._extractor import Extractor
from featurebank.extractor._inputs import ImageItem
from featurebank.extractor._progress import progress
from featurebank.extractor.engines._common import EmbedRun, EmbedSummary, Prepared, prepare_file
from featurebank.extractor.sources import iter_payloads, read_all
from featurebank.extractor.store._store import FeatureStore
from featurebank.spec import FeatureSpec

log = logging.getLogger(__name__)


def int8_calibration(items: list[ImageItem], store: FeatureStore, float_specs: list[FeatureSpec],
                     size: int) -> str | list[bytes]:
    """The store's int8 tag for these specs when it has one (and the graph is cached), else the
    bytes of ``size`` images spread evenly over the collection (sorted folders: every class is
    sampled), read once per container (shards, parquet files)."""
    from featurebank.extractor.graphs._int8 import int8_graph_path

    wanted = {s.fingerprint() for s in float_specs}
    for fs in store.feature_sets():
        tag = fs.spec.quantization
        if tag and replace(fs.spec, quantization=None).fingerprint() in wanted:
            if int8_graph_path(tag).is_file():
                return tag
            log.warning("store %s holds %s vectors but that int8 graph is not in this cache: "
                        "calibrating anew (a new feature set)", store.path, tag)
    if size < 1 or not items:
        raise FeaturebankError(f"int8 needs calibration images: calibration_size={size}, "
                               f"{len(items)} inputs")
    picks = np.unique(np.linspace(0, len(items) - 1, min(size, len(items))).round().astype(int))
    images = []
    for _, data in read_all([items[i].path for i in picks]):
        if isinstance(data, bytes):
            images.append(data)
        else:  # one unreadable sample must not stop the run
            log.warning("calibration: skipped %s", data)
    return images


class Clock:
    """Time as the per-file timeout sees it: ``time.monotonic``, and a wait on one file's step
    that returns when the step is done or ``seconds`` have passed.

    The engine reads :data:`CLOCK`; a test puts its own there to expire a file at the moment
    it chooses, so that no machine's speed decides which file times out (issue 31).
    """

    def now(self) -> float:
        return time.monotonic()

    def wait(self, future: Future, seconds: float) -> None:
        futures_wait([future], timeout=seconds)


CLOCK = Clock()


def wait_for_file(future: Future, item: ImageItem, timeout: float | None) -> Prepared:
    """The per-file step's result, or a failure once ``timeout`` seconds (``file_timeout``) of
    :data:`CLOCK` have passed since the wait began: a decoder stuck on one file must not hang
    the run. The one place the timeout is applied."""
    if timeout is None:
        return future.result()
    clock = CLOCK
    deadline = clock.now() + timeout
    while not future.done():
        left = deadline - clock.now()
        if left <= 0:
            log.warning("%s: no result after %g s, skipped", item.path, timeout)
            return Prepared(error=f"timed out after {timeout:g} s")
        clock.wait(future, left)
    return future.result()


class _LocalRun:
    """The state of one local run: what is decoded and waits for inference (``batch``), the
    paths and failures of the next commit, and the summary."""

    def __init__(self, items: list[ImageItem], store: FeatureStore, ex: Extractor,
                 run: EmbedRun):
        self.store, self.ex, self.run = store, ex, run
        self.summary = EmbedSummary(total=len(items))
        self.specs = ex.specs
        key_sets = [store.keys(s.fingerprint()) for s in self.specs]
        self.done = set.intersection(*key_sets) if key_sets else set()  # stored for every set
        self.in_run: set[str] = set()
        self.batch: list[tuple[ImageItem, Prepared]] = []
        self.images: list[tuple[str, str, str]] = []
        self.failures: list[tuple[str, str]] = []
        self.bar = progress(len(items), enabled=run.progress, desc="embedding")

    def consume(self, item: ImageItem, p: Prepared) -> None:
        """Sort one file: failed, already stored (cached), seen in this run, or to embed."""
        summary = self.summary
        if p.error is not None:
            summary.failed += 1
            self.failures.append((item.path, p.error))
            summary.failures.append((item.path, p.error))
            return
        self.images.append((p.key, item.path, item.label))
        if p.key in self.done:
            summary.cached += 1
        elif p.key in self.in_run:
            summary.duplicates += 1
        else:
            self.in_run.add(p.key)
            self.batch.append((item, p))

    def full(self) -> bool:
        return (len(self.batch) >= self.run.batch_size
                or len(self.images) + len(self.failures) >= 4 * self.run.batch_size)

    def flush(self) -> None:
        """Run the batch and commit it with the paths and failures gathered since the last."""
        rows = {}
        if self.batch:
            outs = self.ex.embed_pixels(np.stack([p.pixels for _, p in self.batch]))
            keys = [p.key for _, p in self.batch]
            rows = {spec: (keys, out) for spec, out in zip(self.specs, outs, strict=True)}
        if rows or self.images or self.failures:
            self.store.commit(rows, self.images, self.failures, dtype=self.run.dtype)
        s = self.summary
        s.embedded += len(self.batch)
        self.bar.update(len(self.images) + len(self.failures))  # every item lands in one
        self.bar.set_postfix(cached=s.cached, dup=s.duplicates, failed=s.failed, refresh=False)
        self.batch.clear()
        self.images.clear()
        self.failures.clear()


def embed_local(items: list[ImageItem], store: FeatureStore, ex: Extractor,
                run: EmbedRun) -> EmbedSummary:
    """Embed ``items`` with ``ex`` into the open ``store`` (see :func:`embed_collection`)."""
    started = time.perf_counter()
    state = _LocalRun(items, store, ex, run)
    # Bounded look-ahead: decoding of the next batches overlaps inference of this one, and at
    # most `window` decoded images are held, so memory stays flat on any collection size.
    window = max(2 * run.batch_size, 4 * run.decode_threads)
    pool = ThreadPoolExecutor(max_workers=run.decode_threads, thread_name_prefix="decode")
    pending: deque[tuple[Future, ImageItem]] = deque()
    try:
        # container members arrive read (one streaming pass per shard or parquet file);
        # plain files and URLs are read by the pool's threads
        for item, data in iter_payloads(items):
            pending.append((pool.submit(prepare_file, item.path, ex.spec_preprocessing,
                                        ex.max_pixels, state.done, data), item))
            if len(pending) >= window:
                _settle_first(pending, state)
                if state.full():
                    state.flush()
        while pending:
            _settle_first(pending, state)
            if len(state.batch) >= run.batch_size:
                state.flush()
        state.flush()
    finally:
        # Don't wait for a thread stuck in a decoder; it dies with the process.
        pool.shutdown(wait=False, cancel_futures=True)
    state.bar.close()
    state.summary.seconds = time.perf_counter() - started
    return state.summary


def _settle_first(pending: deque[tuple[Future, ImageItem]], state: _LocalRun) -> None:
    """The oldest file in flight, waited for (in input order) and sorted."""
    future, item = pending.popleft()
    state.consume(item, wait_for_file(future, item, state.run.file_timeout))
