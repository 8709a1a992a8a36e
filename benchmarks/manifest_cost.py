"""Cost of rebuilding a sharded store's manifest and virtual file against the number of shards.

Usage::

    python -m benchmarks.manifest_cost [--shards 1000 10000 100000] [--rows 4] [--legacy 1000]

Writes ``benchmarks/results/manifest_cost.json`` and ``manifest_cost.png``. A Ray run rebuilds
the manifest at its start and its end from every shard's keys. Two ways are timed:

- **index** (what the store does): each shard's key index ``SHARD.h5.index.json``, written when
  the shard is committed, is read -- no HDF5 file is opened. Synthetic shards of ``--rows``
  rows each (distinct keys) are indexes cloned from one real tiny shard, beside empty
  placeholder shard files: the rebuild never opens a shard, so their content cannot matter
  (the virtual file maps them by name). This is what lets 100k shards be measured cheaply.
- **legacy** (before the indexes): ``--legacy`` real tiny shards without indexes; the first
  rebuild opens every shard with HDF5 (and writes its index), the second reads the indexes.

Each figure is one rebuild, also split into the index reads alone; the load average is kept.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import RESULTS, load_average, write_result
from featurebank.extractor.store._shard_index import index_path, read_index
from featurebank.extractor.store._shards import ShardedStore, write_shard
from featurebank.spec import FeatureSpec, ModelSpec, Preprocessing

SPEC = FeatureSpec(ModelSpec("synthetic", "0" * 64, Preprocessing((8, 8), 8), "benchmark"),
                   "pixels", "none")
DIM = 16


def _rows(first: int, n: int):
    keys = [f"{first + j:064x}" for j in range(n)]
    vectors = np.random.default_rng(first).standard_normal((n, DIM)).astype(np.float32)
    return {SPEC: (keys, vectors)}, [(k, f"s3://bucket/images/{k[-12:]}.jpg", "a") for k in keys]


def _synthetic(store: ShardedStore, shards: int, rows: int) -> None:
    """``shards`` indexes cloned from one real shard (new keys and paths), empty shard files."""
    feats, images = _rows(0, rows)
    template = write_shard(store.dir, "shard-template.h5", feats, images, [])
    doc = json.loads(index_path(template).read_text())
    template.unlink()
    index_path(template).unlink()
    doc["size"] = 0
    fgroup = f"features/{SPEC.fingerprint()}"
    run = store.new_run_id()
    for s in range(shards):
        keys = [f"{s * rows + j:064x}" for j in range(rows)]
        paths = [f"s3://bucket/images/{k[-12:]}.jpg" for k in keys]
        doc["groups"]["images"]["ident"]["keys"] = keys
        doc["groups"]["paths"]["ident"] = {"paths": paths, "keys": keys}
        doc["groups"][fgroup]["ident"]["keys"] = keys
        doc["groups"]["commits"]["ident"]["times"] = [float(s)]
        name = store.dir / f"{run}-{s:08d}.h5"
        name.touch()
        index_path(name).write_text(json.dumps(doc, separators=(",", ":")))


def _timed_rebuild(store: ShardedStore) -> dict:
    import psutil

    rss = psutil.Process().memory_info().rss
    names = store.committed_shards()
    t = time.perf_counter()
    for n in names:  # the index reads alone (size 0: the placeholders, or real sizes)
        read_index(store.dir / n, (store.dir / n).stat().st_size)
    reads = time.perf_counter() - t
    t = time.perf_counter()
    state = store.rebuild()
    total = time.perf_counter() - t
    grown = psutil.Process().memory_info().rss - rss  # the key sets the state holds, mostly
    return {"rss_growth_mb": round(grown / 2**20, 1),
            "per_row_us": round(1e6 * total / max(1, state.images), 3),"shards": len(names), "rows": state.images, "rebuild_s": round(total, 3),
            "index_reads_s": round(reads, 3), "per_shard_ms": round(1e3 * total / len(names), 3),
            "manifest_bytes": (store.dir / "manifest.json").stat().st_size,
            "virtual_file_bytes": store.path.stat().st_size}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--rows", type=int, default=4, help="rows per synthetic shard")
    ap.add_argument("--big", type=int, nargs=2, default=[1000, 512], metavar=("SHARDS", "ROWS"),
                    help="one more index run with realistic shards: the cost per row")
    ap.add_argument("--legacy", type=int, nargs="*", default=[1000],
                    help="real shards rebuilt without indexes first")
    ap.add_argument("--out", type=Path, default=RESULTS / "manifest_cost.json")
    args = ap.parse_args(argv)
    load_before = load_average()
    tmp = Path(tempfile.mkdtemp(prefix="manifest-cost-"))
    index_runs, legacy_runs = [], []
    try:
        for n in args.shards:
            with ShardedStore(tmp / f"idx-{n}" / "s.h5") as store:
                _synthetic(store, n, args.rows)
                index_runs.append(_timed_rebuild(store))
            print("index", index_runs[-1], flush=True)
            shutil.rmtree(tmp / f"idx-{n}")
        with ShardedStore(tmp / "big" / "s.h5") as store:
            _synthetic(store, *args.big)
            big = {"rows_per_shard": args.big[1], **_timed_rebuild(store)}
        print("big", big, flush=True)
        shutil.rmtree(tmp / "big")
        for n in args.legacy:
            with ShardedStore(tmp / f"legacy-{n}" / "s.h5") as store:
                for s in range(n):
                    write_shard(store.dir, f"{store.new_run_id()}-{s:08d}.h5", *_rows(s * args.rows, args.rows), [])
                for p in store.dir.glob("*.index.json"):
                    p.unlink()  # shards as written before the indexes existed
                t = time.perf_counter()
                store.rebuild()
                first = time.perf_counter() - t
                again = _timed_rebuild(store)
            legacy_runs.append({"shards": n, "first_rebuild_opening_hdf5_s": round(first, 3),
                                "per_shard_ms_opening_hdf5": round(1e3 * first / n, 3),
                                "then_with_indexes": again})
            print("legacy", legacy_runs[-1], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"benchmark": "manifest_cost", "rows_per_shard": args.rows,
              "load_average_before": load_before, "load_average_after": load_average(),
              "note": "one rebuild each; index runs: cloned indexes + empty placeholder shard "
                      "files (never opened); legacy: real tiny shards, first rebuild opens each "
                      "with HDF5", "index": index_runs, "big_shards": big, "legacy": legacy_runs}
    write_result(args.out, result)
    _plot(result, args.out.with_suffix(".png"))
    return result


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    idx = result["index"]
    ax.loglog([r["shards"] for r in idx], [r["rebuild_s"] for r in idx], "o-",
              label="rebuild from key indexes")
    ax.loglog([r["shards"] for r in idx], [r["index_reads_s"] for r in idx], "s--",
              label="of which: reading the indexes")
    leg = result["legacy"]
    if leg:
        ax.loglog([r["shards"] for r in leg], [r["first_rebuild_opening_hdf5_s"] for r in leg],
                  "x", markersize=10, label="opening every shard with HDF5 (before)")
    xs = np.array([idx[0]["shards"], idx[-1]["shards"]])
    ax.loglog(xs, idx[0]["rebuild_s"] * xs / xs[0], ":", color="grey", label="linear")
    ax.set_xlabel("shards")
    ax.set_ylabel("seconds per rebuild")
    ax.set_title(f"Manifest + virtual file rebuild ({result['rows_per_shard']} rows per shard)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
