"""Embed an image collection into the store: decode in worker threads overlapped with inference.

Per image: read bytes, key = SHA-256 of the bytes. Content already stored for every requested
feature set is *cached* (only its path is recorded); content seen earlier in this run is a
*duplicate*; the rest is decoded in a thread pool (Pillow releases the GIL) while onnxruntime
runs the previous batch. Each batch is committed before the next one is run, so a kill loses
at most the batch in flight. At most a few batches are in flight: memory stays flat however
large the collection.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from export.errors import FeaturebankError
from export.spec import FeatureSpec
from extractor.api import Extractor
from extractor.inputs import ImageItem, collect
from extractor.preprocess import DecodeError, decode, image_key, read_bytes
from extractor.store import FeatureStore

log = logging.getLogger(__name__)
DTYPES = ("float16", "float32")


@dataclass
class EmbedSummary:
    """What a run did."""

    total: int = 0
    embedded: int = 0
    cached: int = 0
    duplicates: int = 0
    failed: int = 0
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.total / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "images_per_s": round(self.images_per_s, 2)}

    def __str__(self) -> str:
        return (f"{self.total} images in {self.seconds:.1f} s ({self.images_per_s:.1f} img/s): "
                f"embedded {self.embedded}, already cached {self.cached}, duplicates "
                f"{self.duplicates}, failed {self.failed}")


@dataclass
class _Prepared:
    item: ImageItem
    key: str | None = None
    pixels: np.ndarray | None = None
    error: str | None = None


def embed_collection(
    inputs: Sequence[str],
    store_path: str | Path,
    *,
    model: str = "efficientnet_lite0",
    layers: Sequence[str] = ("head",),
    pool: str = "avg",
    gem_p: float = 3.0,
    normalize: bool = False,
    batch_size: int = 32,
    workers: int | None = None,
    device: str = "auto",
    threads: int | None = None,
    dtype: str = "float16",
    progress: bool = True,
    engine: str = "local",
    address: str | None = None,
    extractor: Extractor | None = None,
    file_timeout: float = 60.0,
    precision: str = "fp32",
    calibration_size: int = 128,
) -> EmbedSummary:
    """Embed every image of ``inputs`` into ``store_path``; only new content is computed.

    Parameters
    ----------
    inputs : sequence of str
        Folders (sub-folder = label), list files, globs or image files.
    store_path : path
        The HDF5 store; created when absent.
    model, layers, pool, gem_p, normalize
        The spec (see :class:`extractor.Extractor`).
    batch_size : int
        Images per inference call and per commit.
    workers : int, optional
        Decoding threads; default: number of cores.
    device, threads
        onnxruntime device and intra-op threads.
    dtype : {'float16', 'float32'}
        Storage type of new feature sets.
    engine : {'local', 'ray'}
        ``ray`` runs the same job on a Ray cluster (``pip install 'featurebank[ray]'``).
    address : str, optional
        Ray cluster address (``engine='ray'``).
    extractor : Extractor, optional
        A ready extractor (its spec options then replace ``model`` ... ``threads``).
    file_timeout : float
        Seconds one file may take to read and decode; a file over it is recorded as a
        failure and the run goes on.
    precision : {'fp32', 'fp16', 'int8'}
        See :class:`extractor.Extractor`. ``int8`` calibrates on ``calibration_size`` images
        spread evenly over the collection; a store that already holds int8 vectors of the same
        spec keeps its calibration, so later runs append to the same feature set.
    calibration_size : int
        Images to calibrate int8 on.

    Returns
    -------
    EmbedSummary
        Counts of embedded, cached, duplicate and failed images, and the wall time.
    """
    if dtype not in DTYPES:
        raise FeaturebankError(f"--dtype must be one of {DTYPES}, got {dtype!r}")
    if batch_size < 1:
        raise FeaturebankError(f"--batch-size must be >= 1, got {batch_size}")
    kwargs = dict(model=model, layers=layers, pool=pool, gem_p=gem_p, normalize=normalize,
                  batch_size=batch_size, workers=workers, device=device, threads=threads,
                  dtype=dtype, progress=progress)
    if engine == "ray":
        if precision != "fp32":
            raise FeaturebankError(f"precision {precision!r} runs with engine 'local' only; "
                                   "Ray actors compute in fp32")
        try:
            from extractor.ray_engine import embed_collection_ray
        except ImportError as exc:
            raise FeaturebankError("engine 'ray' needs Ray: pip install 'featurebank[ray]'") from exc
        return embed_collection_ray(inputs, store_path, address=address, **kwargs)
    if engine != "local":
        raise FeaturebankError(f"engine must be 'local' or 'ray', got {engine!r}")
    items = collect(list(inputs))
    with FeatureStore(store_path, mode="a") as store:
        ex = extractor
        if ex is None:
            calibration = None
            if precision == "int8":
                float_specs = Extractor(model, layers, pool, gem_p, normalize).specs
                calibration = int8_calibration(items, store, float_specs, calibration_size)
            ex = Extractor(model, layers, pool, gem_p, normalize, device, batch_size, threads,
                           precision=precision, calibration=calibration)
        return _run(items, ex, store, batch_size, workers or os.cpu_count() or 2, dtype, progress,
                    file_timeout)


def int8_calibration(items: list[ImageItem], store: FeatureStore, float_specs: list[FeatureSpec],
                     size: int) -> str | list[str]:
    """The store's int8 tag for these specs when it has one (and the graph is cached), else
    ``size`` paths spread evenly over the collection (sorted folders: every class is sampled)."""
    from extractor.quantize import int8_graph_path

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
    return [items[i].path for i in picks]


def _prepare(item: ImageItem, ex: Extractor, done: set[str] | None) -> _Prepared:
    try:
        data = read_bytes(item.path)
        key = image_key(data)
        if done is not None and key in done:
            return _Prepared(item, key)  # cached: no decode needed
        return _Prepared(item, key, decode(data, ex.spec_preprocessing, ex.max_pixels, item.path))
    except DecodeError as exc:
        return _Prepared(item, None, None, exc.reason)
    except Exception as exc:  # never let one file abort a run of millions
        log.exception("unexpected error decoding %s", item.path)
        return _Prepared(item, None, None, f"unexpected error ({type(exc).__name__}: {exc})")


def _run(items: list[ImageItem], ex: Extractor, store: FeatureStore, batch_size: int,
         workers: int, dtype: str, progress: bool, file_timeout: float) -> EmbedSummary:
    started = time.perf_counter()
    summary = EmbedSummary(total=len(items))
    specs = ex.specs
    fingerprints = [s.fingerprint() for s in specs]
    key_sets = [store.keys(fp) for fp in fingerprints]
    done = set.intersection(*key_sets) if key_sets else set()
    in_run: set[str] = set()
    batch: list[_Prepared] = []
    images: list[tuple[str, str, str]] = []
    failures: list[tuple[str, str]] = []
    bar = tqdm(total=len(items), unit="img", disable=not progress, dynamic_ncols=True,
               desc="embedding", smoothing=0.1)

    def flush() -> None:
        rows = {}
        if batch:
            outs = ex.embed_pixels(np.stack([p.pixels for p in batch]))
            keys = [p.key for p in batch]
            rows = {spec: (keys, out) for spec, out in zip(specs, outs, strict=True)}
        if rows or images or failures:
            store.commit(rows, images, failures, dtype=dtype)
        summary.embedded += len(batch)
        bar.update(len(images) + len(failures))  # every item lands in one of the two
        bar.set_postfix(cached=summary.cached, dup=summary.duplicates, failed=summary.failed,
                        refresh=False)
        batch.clear()
        images.clear()
        failures.clear()

    def result(future, item: ImageItem) -> _Prepared:
        try:
            return future.result(timeout=file_timeout)
        except FutureTimeout:  # a decoder stuck on one file must not hang the run
            log.warning("%s: no result after %g s, skipped", item.path, file_timeout)
            return _Prepared(item, None, None, f"timed out after {file_timeout:g} s")

    # Bounded look-ahead: decoding of the next batches overlaps inference of this one, and at
    # most `window` decoded images are held, so memory stays flat on any collection size.
    window = max(2 * batch_size, 4 * workers)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
    try:
        pending: deque = deque()
        for item in items:
            pending.append((pool.submit(_prepare, item, ex, done), item))
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


def _consume(p: _Prepared, summary: EmbedSummary, done: set[str], in_run: set[str],
             batch: list[_Prepared], images: list, failures: list) -> None:
    if p.error is not None:
        summary.failed += 1
        failures.append((p.item.path, p.error))
        return
    images.append((p.key, p.item.path, p.item.label))
    if p.key in done:
        summary.cached += 1
    elif p.key in in_run:
        summary.duplicates += 1
    else:
        in_run.add(p.key)
        batch.append(p)
