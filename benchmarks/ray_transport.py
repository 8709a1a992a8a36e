"""How the rows of a Ray run reach a store the driver can read, without a shared file system.

Usage::

    python -m benchmarks.ray_transport [--rows 1000000] [--dim 1280] [--modes driver objstore]

Writes ``benchmarks/results/ray_transport.json``. Synthetic rows (no inference: a content key,
a path, a label and a ``--dim`` float16 vector, as the embedding actors return them) are made
by Ray Data tasks on a local Ray and brought to a sharded store in one of two ways:

- ``driver`` (the engine's way): the rows come back to the driver as Ray objects and the
  driver writes the shards (``featurebank.extractor.engines._ray._ShardWriter``), then
  rebuilds the manifest and virtual file;
- ``objstore``: each task writes its shard (and key index) itself through fsspec to object
  storage -- a ``file://`` folder standing in for a bucket, so bytes are counted exactly but
  the network is not timed -- and returns only the shard's name; the driver rebuilds the
  manifest from the key indexes read through fsspec, then downloads the shards to make the
  store readable where it runs (a virtual HDF5 file cannot map objects in a bucket).

Each mode runs in a child process of its own, so its peak resident memory is its own.
Recorded: wall time, bytes moved to the driver / written to and read from object storage,
the driver's peak RSS (sampled every 0.1 s, and ``ru_maxrss``) and the time to rebuild the
manifest at the end. The shards have ``--shard-rows`` rows (the engine's default with its
default batch size: 16 x 32 = 512).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks._common import RESULTS, load_average, write_result


def _spec():
    from featurebank.spec import FeatureSpec, ModelSpec, Preprocessing

    return FeatureSpec(ModelSpec("synthetic", "0" * 64, Preprocessing((224, 224), 224), "benchmark"),
                       "head", "avg")


def _synth(batch: dict[str, np.ndarray], dim: int) -> dict[str, np.ndarray]:
    """Rows as the embedding actors return them: status NEW, key, path, label, node, f0."""
    ids = batch["id"]
    n = len(ids)
    rng = np.random.default_rng(int(ids[0]))
    keys = np.array([f"{i:064x}" for i in ids], dtype=object)
    return {"idx": ids, "status": np.zeros(n, np.uint8), "key": keys,
            "path": np.array([f"s3://bucket/images/{i:09d}.jpg".encode() for i in ids], dtype=object),
            "label": np.array([str(i % 1000) for i in ids], dtype=object),
            "reason": np.full(n, "", dtype=object), "node": np.full(n, "node", dtype=object),
            "f0": rng.standard_normal((n, dim), dtype=np.float32).astype(np.float16)}


def _write_to_objstore(batch: dict[str, np.ndarray], url: str, dim: int) -> dict[str, np.ndarray]:
    """A task writes its own shard through fsspec (local temp file, then put) with its index."""
    import fsspec

    from featurebank.extractor.store._shard_index import index_path
    from featurebank.extractor.store._shards import write_shard

    rows = _synth(batch, dim)
    keys = list(rows["key"])
    name = f"shard-1-{int(rows['idx'][0]):010d}.h5"
    tmp = Path(tempfile.mkdtemp(prefix="objstore-task-"))
    try:
        images = [(k, p.decode(), lab) for k, p, lab in zip(keys, rows["path"], rows["label"], strict=True)]
        local = write_shard(tmp, name, {_spec(): (keys, rows["f0"])}, images, [], "float16")
        fs, root = fsspec.core.url_to_fs(url)
        fs.put(str(local), f"{root}/{name}")
        fs.put(str(index_path(local)), f"{root}/{index_path(local).name}")
        size = local.stat().st_size + index_path(local).stat().st_size
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"shard": np.array([name], dtype=object), "bytes": np.array([size])}


class _PeakRSS:
    """The largest resident set of this process, sampled every 0.1 s in a thread."""

    def __init__(self):
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()


def _payload_bytes(batch: dict[str, np.ndarray]) -> int:
    total = 0
    for v in batch.values():
        total += sum(len(x) for x in v) if v.dtype == object else v.nbytes
    return total


def run_mode(mode: str, rows: int, dim: int, batch: int, shard_rows: int, work: Path) -> dict:
    """One mode in this process (the child): returns its figures."""
    import ray

    from featurebank.extractor.engines._ray import _ShardWriter
    from featurebank.extractor.store._shard_index import INDEX_SUFFIX
    from featurebank.extractor.store._shards import ShardedStore

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=1024**3)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    rss_start = _PeakRSS().proc.memory_info().rss
    out: dict = {"mode": mode, "rows": rows, "dim": dim, "shard_rows": shard_rows}
    ds = ray.data.range(rows, override_num_blocks=max(1, rows // shard_rows))
    started = time.perf_counter()
    with _PeakRSS() as rss, ShardedStore(work / "store.h5") as store:
        if mode == "driver":
            ds = ds.map_batches(_synth, batch_size=batch, fn_kwargs={"dim": dim})
            writer = _ShardWriter(store, [_spec()], "float16", [], shard_rows)
            moved = 0
            for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
                moved += _payload_bytes(b)
                writer.add(b)
            writer.flush()
            out["bytes_to_driver"] = moved
            out["bytes_written_by_driver"] = sum(p.stat().st_size for p in store.dir.iterdir())
        else:
            bucket = work / "bucket"
            bucket.mkdir()
            url = f"file://{bucket}"
            ds = ds.map_batches(_write_to_objstore, batch_size=shard_rows,
                                fn_kwargs={"url": url, "dim": dim})
            names = [s for b in ds.iter_batches(batch_size=None, batch_format="numpy") for s in b["shard"]]
            out["bytes_to_objstore"] = sum(p.stat().st_size for p in bucket.iterdir())
            import fsspec

            fs, root = fsspec.core.url_to_fs(url)
            t = time.perf_counter()  # the manifest from the key indexes alone, through fsspec
            indexes = [json.loads(fs.cat(f"{root}/{n}{INDEX_SUFFIX}")) for n in names]
            keys = {k for ix in indexes for k in ix["groups"]["images"]["ident"]["keys"]}
            out["manifest_from_objstore_indexes_s"] = round(time.perf_counter() - t, 3)
            assert len(keys) == rows
            t = time.perf_counter()  # the driver fetches the shards to assemble a readable store
            for n in names:
                fs.get(f"{root}/{n}", str(store.dir / n))
                fs.get(f"{root}/{n}{INDEX_SUFFIX}", str(store.dir / f"{n}{INDEX_SUFFIX}"))
            out["download_s"] = round(time.perf_counter() - t, 3)
            out["bytes_from_objstore_to_driver"] = out["bytes_to_objstore"]
            out["bytes_to_driver"] = sum(_payload_bytes({"s": np.array([n], dtype=object)}) for n in names)
        out["transport_s"] = round(time.perf_counter() - started, 2)
        t = time.perf_counter()
        state = store.rebuild()
        out["rebuild_s"] = round(time.perf_counter() - t, 3)
        out["shards"] = len(state.shards)
        assert state.images == rows, (state.images, rows)
    out["total_s"] = round(time.perf_counter() - started, 2)
    out["driver_rss_start_mb"] = round(rss_start / 2**20, 1)
    out["driver_peak_rss_mb"] = round(rss.peak / 2**20, 1)
    out["driver_ru_maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["manifest_bytes"] = (store.dir / "manifest.json").stat().st_size
    ray.shutdown()
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1280, help="EfficientNet-Lite0 'head': 1280")
    ap.add_argument("--batch", type=int, default=32, help="rows per task batch (the engine's)")
    ap.add_argument("--shard-rows", type=int, default=512)
    ap.add_argument("--modes", nargs="+", default=["driver", "objstore"])
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=RESULTS / "ray_transport.json")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_mode(args.child, args.rows, args.dim, args.batch, args.shard_rows, args.work)))
        return {}
    load_before = load_average()
    runs = []
    for mode in args.modes:
        work = Path(tempfile.mkdtemp(prefix=f"ray-transport-{mode}-"))
        try:
            cmd = [sys.executable, "-m", "benchmarks.ray_transport", "--child", mode, "--work", str(work),
                   "--rows", str(args.rows), "--dim", str(args.dim), "--batch", str(args.batch),
                   "--shard-rows", str(args.shard_rows)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True,
                                  env={**os.environ, "RAY_DEDUP_LOGS": "0"})
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    result = {"benchmark": "ray_transport", "rows": args.rows, "dim": args.dim, "dtype": "float16",
              "shard_rows": args.shard_rows, "load_average_before": load_before,
              "load_average_after": load_average(),
              "note": "synthetic rows, no inference; local Ray with 2 CPUs; the object store is "
                      "a file:// folder through fsspec (bytes exact, network not timed)",
              "runs": runs}
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
