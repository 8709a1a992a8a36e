"""Embedding on a Ray cluster: the one module of featurebank that imports Ray.

The job is a Ray Data pipeline over the collected ``(path, label)`` items:

1. **decode** (tasks): read bytes, content key = SHA-256, skip content the store already has,
   decode with :func:`featurebank.extractor._preprocess.decode` -- the same function the local engine uses;
2. **embed** (an actor pool, one onnxruntime session per actor, ``num_gpus=1`` per actor when
   the cluster has GPUs): the truncated, pooled feature graph built once on the driver;
3. **write** (on the driver): the rows come back to the driver, which writes one shard per
   ``shard_rows`` rows in the store's own layout, under a temporary name and renamed
   (:func:`featurebank.extractor.store._shards.write_shard`). Workers never open the store, so
   the nodes share no file system: each reads its images from their paths or URLs.

The driver then rebuilds the manifest and the virtual HDF5 file over the shards
(:class:`featurebank.extractor.store._shards.ShardedStore`), so every reader sees one store at the path given.
Ray restarts a killed embedding actor and retries its batches; a killed driver loses only the
shards in flight, and a rerun embeds only content missing from the committed shards.

Image paths must be readable on every node (a shared file system, or URLs); the store only
on the driver -- see docs/ray.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray

from featurebank.errors import FeaturebankError, OptionError
from featurebank.extractor._extractor import Extractor
from featurebank.extractor._progress import progress
from featurebank.extractor.engines._common import EmbedRun, EmbedSummary, prepare_file
from featurebank.extractor.sources import ImageItem, iter_payloads
from featurebank.extractor.store._format import chunk_rows
from featurebank.extractor.store._shards import ShardedStore, write_shard
from featurebank.spec import FeatureSpec, Preprocessing

log = logging.getLogger(__name__)
NEW, CACHED, FAILED = 0, 1, 2


# -- stage 1: decode (Ray tasks) ------------------------------------------------------------
class _SortedKeys:
    """The stored content keys as one sorted fixed-width bytes array, for ``key in keys``.

    Put in Ray's object store once, it is read zero-copy by every task of a node (a Python set
    of 25M keys would be ~3 GB unpickled in every decoding process)."""

    def __init__(self, keys: set[str]):
        self.ref = ray.put(np.array(sorted(keys), dtype="S64"))

    def __reduce__(self):  # tasks get the reference, not the array
        return (_LoadedKeys, (self.ref,))


class _LoadedKeys:
    """A task's view of :class:`_SortedKeys`, fetched at the first lookup (not while Ray
    unpickles the task's arguments)."""

    def __init__(self, ref: ray.ObjectRef):
        self.ref, self.keys = ref, None

    def __contains__(self, key: object) -> bool:
        if self.keys is None:
            self.keys = ray.get(self.ref)
        k = str(key).encode()
        i = int(np.searchsorted(self.keys, k))
        return i < len(self.keys) and self.keys[i] == k


def _decode_batch(batch: dict[str, np.ndarray], preprocessing: Preprocessing, max_pixels: int,
                  done: _LoadedKeys) -> dict[str, np.ndarray]:
    n = len(batch["idx"])
    keys, status, reasons, pixels = [""] * n, np.full(n, NEW, np.uint8), [""] * n, [b""] * n
    items = [ImageItem(os.fsdecode(bytes(raw)), error=str(err))
             for raw, err in zip(batch["path"], batch["error"], strict=True)]
    at = {id(item): i for i, item in enumerate(items)}
    # Plain files and URLs are read here, from the node this task runs on; the members of a tar
    # shard or parquet file in this batch come from one streaming pass over their container.
    for item, data in iter_payloads(items):
        i = at[id(item)]
        p = prepare_file(item.path, preprocessing, max_pixels, done, data)
        keys[i] = p.key or ""
        if p.error is not None:
            status[i], reasons[i] = FAILED, p.error
        elif p.pixels is None:
            status[i] = CACHED  # only its path is recorded: no decode, no inference
        else:
            pixels[i] = p.pixels.tobytes()
    return {**batch, "key": np.array(keys, dtype=object), "status": status,
            "reason": np.array(reasons, dtype=object), "pixels": np.array(pixels, dtype=object)}


# -- stage 2: embed (Ray actors) ------------------------------------------------------------
class _Embedder:
    """One onnxruntime session per actor, built from the feature graph's bytes."""

    def __init__(self, graph: list[ray.ObjectRef], output_names: list[str], dims: list[int],
                 input_size: tuple[int, int], device: str, threads: int | None):
        import onnx

        from featurebank.extractor.graphs._sessions import make_session

        model = onnx.load_from_string(ray.get(graph[0]))
        self.session = make_session(model, device, threads)
        self.names, self.dims, self.shape = output_names, dims, (*input_size, 3)
        self.node = ray.get_runtime_context().get_node_id()  # recorded per row: where it ran

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = batch.pop("pixels")  # not shipped on to the writers
        new = np.flatnonzero(batch["status"] == NEW)
        outs = [np.zeros((0, d), np.float32) for d in self.dims]
        if len(new):
            px = np.stack([np.frombuffer(pixels[i], np.uint8).reshape(self.shape) for i in new])
            outs = self.session.run(self.names, {"pixels": px})
        for j, (out, d) in enumerate(zip(outs, self.dims, strict=True)):
            col = np.zeros((len(batch["status"]), d), np.float32)
            col[new] = out
            batch[f"f{j}"] = col
        batch["node"] = np.full(len(batch["status"]), self.node, dtype=object)
        return batch


# -- on the driver: one shard per ``shard_rows`` rows ------------------------------------------
class _ShardWriter:
    """Collects the actors' rows on the driver and writes them as shards of the driver's store.

    The rows come back to the driver (Ray moves them as objects), so no node but the driver
    ever opens the store: workers need no shared file system, and the shards are committed
    by one process in order (``benchmarks/ray_transport.py`` measures this choice against
    workers writing shards to object storage).
    """

    def __init__(self, store: ShardedStore, specs: list[FeatureSpec], dtype: str,
                 roots: list[str], shard_rows: int):
        self.store, self.specs, self.dtype, self.roots = store, specs, dtype, roots
        self.shard_rows, self.run_id, self.seq = shard_rows, store.new_run_id(), 0
        self.batches: list[dict[str, np.ndarray]] = []
        self.rows = 0

    def add(self, batch: dict[str, np.ndarray]) -> None:
        self.batches.append(batch)
        self.rows += len(batch["status"])
        if self.rows >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        if not self.batches:
            return
        cat = {c: np.concatenate([b[c] for b in self.batches]) for c in self.batches[0]}
        self.batches, self.rows = [], 0
        status = cat["status"]
        new = np.flatnonzero(status == NEW)
        keys = [str(k) for k in cat["key"][new]]
        rows = {spec: (keys, cat[f"f{j}"][new]) for j, spec in enumerate(self.specs)}
        paths = [os.fsdecode(bytes(p)) for p in cat["path"]]
        images = [(str(cat["key"][i]), paths[i], str(cat["label"][i]))
                  for i in np.flatnonzero(status != FAILED)]
        failures = [(paths[i], str(cat["reason"][i])) for i in np.flatnonzero(status == FAILED)]
        nodes = sorted({str(n) for n in cat["node"][new]})
        write_shard(self.store.dir, f"{self.run_id}-{self.seq:08d}.h5", rows, images, failures,
                    self.dtype, roots=self.roots, attrs={"ray_nodes": nodes})
        self.seq += 1


# -- driver -----------------------------------------------------------------------------------
@contextlib.contextmanager
def connected(address: str | None = None) -> Iterator[None]:
    """Use the Ray session already initialised, else join ``address`` (None: start a local one).

    ``address`` is ``auto`` (a cluster started with ``ray start`` on this machine), a GCS
    address ``host:6379`` or a Ray Client address ``ray://host:10001``. Only a session
    started here is shut down on exit.
    """
    started = False
    if not ray.is_initialized():
        # CPU actors pin their provider themselves: keep Ray from rewriting CUDA_VISIBLE_DEVICES
        # for them (and from warning about it on every run).
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise OptionError("address", f"{address!r}: cannot connect to Ray at "
                              f"{address or 'a new local instance'} ({exc}); start one with "
                              "'ray start --head' or check the address", owner="EmbedRun") from exc
        started = True
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _actor_resources(device: str, workers: int | None, threads: int | None) -> tuple[dict, int, str]:
    """Remote args, pool size and onnxruntime device of the embedding actors."""
    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 1))
    if device == "cuda" and not gpus:
        raise OptionError("device", "'cuda' asked for, but the Ray cluster has no GPU; start "
                          "workers with GPUs ('ray start --num-gpus N') or use device='cpu'",
                          owner="EmbedRun")
    if gpus and device in ("auto", "cuda"):
        return {"num_gpus": 1, "num_cpus": 1}, workers or gpus, "cuda"
    per_actor = threads or 1
    # Half the CPUs at most go to inference: the decode and write tasks need the rest, or the
    # pipeline starves upstream of its own actors.
    size = workers or max(1, cpus // (2 * per_actor))
    if size * per_actor >= cpus:
        raise OptionError("workers", f"{size} x {per_actor} thread(s) would take all {cpus} CPUs "
                          "of the Ray cluster and leave none for decoding; use fewer workers",
                          owner="EmbedRun")
    return {"num_cpus": per_actor}, size, "cpu"


def _default_shard_rows(batch_size: int, dims: list[int], dtype: str) -> int:
    """16 batches, rounded up to whole HDF5 chunks of the widest feature set: a shard of 512
    rows of 1280 float16 values filled 2 chunks of 409 rows, and its file was 2x its payload
    (``benchmarks/results/ray_transport.json``)."""
    per_chunk = chunk_rows(max(dims), np.dtype(dtype).itemsize)
    return per_chunk * -(-16 * batch_size // per_chunk)


_ATTEMPTS = 3  # jobs started over the items still missing after a failure Ray cannot recover


def _pipeline(left: dict[int, ImageItem], ex: Extractor, run: EmbedRun, done: set[str],
              embedder: dict, attempt: int) -> ray.data.Dataset:
    """The decode -> embed dataset over the items ``left`` (index -> item).

    The first attempt waits for every actor (one per node at least, with SPREAD); a restarted
    one for a single actor, as a lost node may have left room for fewer."""
    size, batch_size = embedder["size"], run.batch_size
    ds = ray.data.from_items(
        [{"idx": i, "path": os.fsencode(it.path), "label": it.label, "error": it.error}
         for i, it in left.items()],
        override_num_blocks=max(1, min(len(left) // batch_size, 4 * size * 8)))
    # Each stage asks for different resources, which also keeps Ray Data from fusing decode
    # into the actors: decoding stays parallel to inference.
    ds = ds.map_batches(_decode_batch, batch_size=batch_size, num_cpus=0.5, max_retries=3,
                        fn_kwargs={"preprocessing": ex.spec_preprocessing,
                                   "max_pixels": ex.max_pixels, "done": _SortedKeys(done)})
    return ds.map_batches(_Embedder, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(
        min_size=size if attempt == 1 else 1, max_size=size), fn_constructor_kwargs=embedder["fn_constructor_kwargs"],
        scheduling_strategy="SPREAD", **embedder["remote"])  # actors on as many nodes as there are


def embed_ray(items: list[ImageItem], store_path: str | Path, ex: Extractor,
              run: EmbedRun, roots: list[str] | None = None) -> EmbedSummary:
    """Embed ``items`` into the sharded store ``store_path`` on a Ray cluster.

    The vectors are the local engine's. ``run.workers`` is the number of embedding actors
    (one onnxruntime session each; default one per GPU, else half the cluster's CPUs);
    ``run.threads`` the intra-op threads (and CPUs reserved) per CPU actor (default 1);
    ``run.address`` the Ray address (``auto``, ``host:6379``, ``ray://host:10001``; default:
    the running session, else a new local one).
    """
    started = time.perf_counter()
    graph = ex.graph  # built once here; actors get its bytes (workers need no model files)
    specs = graph.specs
    fps = [s.fingerprint() for s in specs]
    summary = EmbedSummary(total=len(items))
    with ShardedStore(store_path) as store, connected(run.address):
        state = store.rebuild()
        if not items:
            return summary
        done = state.done(fps)
        known = {state.dtypes[fp] for fp in fps if fp in state.dtypes}
        store_dtype = known.pop() if len(known) == 1 else run.dtype  # an existing set keeps its dtype
        embedder = _embedder(graph, ex, run)
        writer = _ShardWriter(store, list(specs), store_dtype, list(roots or ()),
                              run.shard_rows or _default_shard_rows(run.batch_size, graph.dims,
                                                                    store_dtype))
        bar = progress(len(items), enabled=run.progress, desc="embedding (ray)")
        try:
            _run_attempts(dict(enumerate(items)), ex, run, done, embedder, writer, summary, bar)
        finally:
            bar.close()
            store.rebuild()
    summary.seconds = time.perf_counter() - started
    return summary


def _embedder(graph: Any, ex: Extractor, run: EmbedRun) -> dict[str, Any]:
    """The embedding actors' resources and constructor arguments."""
    remote, size, actor_device = _actor_resources(run.device, run.workers, run.threads)
    # The graph's bytes go to the object store once; the driver holds the reference for the
    # whole run, so an actor restarted after its node died can still fetch them (an inline
    # constructor argument of this size is not kept for restarts).
    graph_ref = ray.put(graph.model.SerializeToString())
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.wait_for_min_actors_s = int(run.actor_wait_s)
    return dict(size=size, remote=remote, fn_constructor_kwargs={
        "graph": [graph_ref], "output_names": list(graph.output_names),
        "dims": list(graph.dims), "input_size": tuple(ex.spec_preprocessing.input_size),
        "device": actor_device, "threads": run.threads or remote.get("num_cpus", 1)})


def _run_attempts(left: dict[int, ImageItem], ex: Extractor, run: EmbedRun, done: set[str],
                  embedder: dict[str, Any], writer: _ShardWriter, summary: EmbedSummary,
                  bar: Any) -> None:
    """Run the job over the items whose row has not come back to the driver (``left``); a job
    Ray cannot recover (objects lost with a node, say) starts again over the items still
    missing, the rows already back kept."""
    in_run: set[str] = set()
    for attempt in range(1, _ATTEMPTS + 1):
        if not left:  # the failure came after the last row
            break
        ds = _pipeline(left, ex, run, done | in_run, embedder, attempt)
        try:
            for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
                _count(summary, in_run, out)
                writer.add(out)
                for i in out["idx"]:
                    left.pop(int(i), None)
                bar.update(len(out["status"]))
            break
        except ray.exceptions.RayError as exc:
            writer.flush()
            if attempt == _ATTEMPTS:
                raise FeaturebankError(
                    f"the Ray job failed {attempt} times ({type(exc).__name__}: {exc}); "
                    "the shards committed so far are kept: run again to continue") from exc
            log.warning("the Ray job failed (%s); starting again over the %d items left",
                        type(exc).__name__, len(left))
    writer.flush()


def _count(summary: EmbedSummary, in_run: set[str], batch: dict[str, np.ndarray]) -> None:
    status = batch["status"]
    summary.failed += int(np.sum(status == FAILED))
    summary.failures += [(os.fsdecode(bytes(batch["path"][i])), str(batch["reason"][i]))
                         for i in np.flatnonzero(status == FAILED)]
    for i in np.flatnonzero(status != FAILED):
        key = str(batch["key"][i])
        if key in in_run:  # a second copy in this run (cached: seen by a restarted job)
            summary.duplicates += 1
        elif status[i] == CACHED:
            summary.cached += 1
        else:
            in_run.add(key)
            summary.embedded += 1
            node = str(batch["node"][i])
            summary.nodes[node] = summary.nodes.get(node, 0) + 1


# -- scikit-learn on the cluster ---------------------------------------------------------------
@contextlib.contextmanager
def ray_joblib_backend(address: str | None = None) -> Iterator[None]:
    """Run joblib work (scikit-learn's ``n_jobs``) on the Ray cluster inside the ``with`` block.

    Examples
    --------
    >>> with ray_joblib_backend("auto"):                        # doctest: +SKIP
    ...     GridSearchCV(LogisticRegression(), grid, n_jobs=-1).fit(X, y)
    """
    import joblib
    from ray.util.joblib import register_ray

    with connected(address):
        register_ray()
        with joblib.parallel_backend("ray"):
            yield
