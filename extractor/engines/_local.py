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
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
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


def embed_local(items: list[ImageItem], store: FeatureStore, ex: Extractor,
                run: EmbedRun) -> EmbedSummary:
    """Embed ``items`` with ``ex`` into the open ``store`` (see :func:`embed_collection`)."""
    batch_size, workers, file_timeout = run.batch_size, run.decode_threads, run.file_timeout
    started = time.perf_counter()
    summary = EmbedSummary(total=len(items))
    specs = ex.specs
    fingerprints = [s.fingerprint() for s in specs]
    key_sets = [store.keys(fp) for fp in fingerprints]
    done = set.intersection(*key_sets) if key_sets else set()
    in_run: set[str] = set()
    batch: list[tuple[ImageItem, Prepared]] = []
    images: list[tuple[str, str, str]] = []
    failures: list[tuple[str, str]] = []
    bar = progress(len(items), enabled=run.progress, desc="embedding")

    def flush() -> None:
        rows = {}
        if batch:
            outs = ex.embed_pixels(np.stack([p.pixels for _, p in batch]))
            keys = [p.key for _, p in batch]
            rows = {spec: (keys, out) for spec, out in zip(specs, outs, strict=True)}
        if rows or images or failures:
            store.commit(rows, images, failures, dtype=run.dtype)
        summary.embedded += len(batch)
        bar.update(len(images) + len(failures))  # every item lands in one of the two
        bar.set_postfix(cached=summary.cached, dup=summary.duplicates, failed=summary.failed,
                        refresh=False)
        batch.clear()
        images.clear()
        failures.clear()

    def result(future, item: ImageItem) -> tuple[ImageItem, Prepared]:
        try:
            return item, future.result(timeout=file_timeout)
        except FutureTimeout:  # a decoder stuck on one file must not hang the run
            log.warning("%s: no result after %g s, skipped", item.path, file_timeout)
            return item, Prepared(error=f"timed out after {file_timeout:g} s")

    # Bounded look-ahead: decoding of the next batches overlaps inference of this one, and at
    # most `window` decoded images are held, so memory stays flat on any collection size.
    window = max(2 * batch_size, 4 * workers)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
    try:
        pending: deque = deque()
        # container members arrive read (one streaming pass per shard or parquet file);
        # plain files and URLs are read by the pool's threads
        for item, data in iter_payloads(items):
            pending.append((pool.submit(prepare_file, item.path, ex.spec_preprocessing,
                                        ex.max_pixels, done, data), item))
            if len(pending) >= window:
                _consume(result(*pending.popleft()), summary, done, in_run, batch, images, failures)
                if len(batch) >= batch_size or len(images) + len(failures) >= 4 * batch_size:
                    flush()
        while pending:
            _consume(result(*pending.popleft()), summary, done, in_run, batch, images, failures)
            if len(batch) >= batch_size:
                flush()
        flush()
    finally:
        # Don't wait for a thread stuck in a decoder; it dies with the process.
        pool.shutdown(wait=False, cancel_futures=True)
    bar.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _consume(prepared: tuple[ImageItem, Prepared], summary: EmbedSummary, done: set[str],
             in_run: set[str], batch: list, images: list, failures: list) -> None:
    item, p = prepared
    if p.error is not None:
        summary.failed += 1
        failures.append((item.path, p.error))
        summary.failures.append((item.path, p.error))
        return
    images.append((p.key, item.path, item.label))
    if p.key in done:
        summary.cached += 1
    elif p.key in in_run:
        summary.duplicates += 1
    else:
        in_run.add(p.key)
        batch.append(prepared)
