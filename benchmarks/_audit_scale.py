"""The 1M-row part of ``benchmarks.audit``: stores tiled from real vectors with noise, one
audit per size in its own process (its peak memory is the process's), and the index's recall@10
and queries/s against exact search."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._common import REPO, load_average

SCALE_LAYER = "blocks.13"


def tiled_store(path: Path, source: Path, rows: int, noise: float, seed: int = 0) -> Path:
    """``rows`` vectors: the real vectors of ``source``'s SCALE_LAYER tiled, each copy plus
    Gaussian noise of ``noise`` times each dimension's spread; labels and paths of the original."""
    from featurebank.extractor import FeatureStore

    if path.is_file():
        return path
    feats = FeatureStore(source).read(SCALE_LAYER)
    sd = feats.X.std(axis=0)
    rng = np.random.default_rng(seed)
    tmp = path.with_name(path.name + ".part")
    tmp.unlink(missing_ok=True)
    with FeatureStore(tmp, mode="a") as store:
        for first in range(0, rows, 50_000):
            idx = np.arange(first, min(rows, first + 50_000))
            src = idx % len(feats.X)
            X = feats.X[src] + rng.normal(0, 1, (len(idx), feats.X.shape[1])).astype(np.float32) * (noise * sd)
            keys = [f"{i:064x}" for i in idx]
            store.add_rows(feats.spec, keys, X, list(feats.paths[src]), list(feats.y[src]))
    tmp.rename(path)
    return path


def audit_one(store: str, threshold: float, sample: int, index: str) -> dict:
    """One audit of a big store (run in its own process: its peak memory is the process's)."""
    import shutil

    from featurebank.classical import AuditOptions, audit_stores
    from featurebank.extractor.search import index_dir

    shutil.rmtree(index_dir(store), ignore_errors=True)  # time the index build too
    t0 = time.perf_counter()
    # pixel_check off: the tiled rows repeat 10k images (their signatures would confirm every
    # tile as a copy of every other); this part times the neighbour search and the labels
    report = audit_stores(store, [], SCALE_LAYER, options=AuditOptions(
        near_threshold=threshold, index=index, label_sample=sample, sheet_rows=0,
        pixel_check=False))
    return {"seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "counts": report.to_dict()["counts"], "label_sample": report.label_sample}


def search_quality(store: Path, queries: np.ndarray, index: str, nprobe: int | None = None,
                   refine: int | None = None) -> dict:
    """recall@10 and queries/s of the (already built) index against exact search."""
    from featurebank.extractor import FeatureStore, NeighbourIndex, exact_search

    fs = FeatureStore(store)
    fp = fs.resolve(SCALE_LAYER).fingerprint
    ix = NeighbourIndex(fs, fp, kind=index, **({"nprobe": nprobe} if nprobe else {}),
                        **({"refine": refine} if refine else {}))
    ix.update()
    t0 = time.perf_counter()
    approx = ix.search(queries, 10, keys=False)
    t_ix = time.perf_counter() - t0
    t0 = time.perf_counter()
    exact = exact_search(fs, fp, queries, 10, block_rows=65_536)
    t_ex = time.perf_counter() - t0
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approx.rows, exact.rows, strict=True)])
    return {"recall_at_10": round(float(recall), 4), "index_qps": round(len(queries) / t_ix, 1),
            "exact_qps": round(len(queries) / t_ex, 2), "queries": len(queries)}


def scale(work: Path, split: dict, sizes: list[int], noise: float, threshold: float,
          sample: int, index: str, save=None) -> list[dict]:
    from featurebank.extractor import FeatureStore

    queries = FeatureStore(split["root"] / "test.h5").read(SCALE_LAYER).X[:200]
    out = []
    for n in sizes:
        t0 = time.perf_counter()
        store = tiled_store(work / f"tiled-{n}.h5", split["root"] / "train.h5", n, noise)
        made = time.perf_counter() - t0
        proc = subprocess.run([sys.executable, "-m", "benchmarks.audit", "--audit-one", str(store),
                               "--threshold", str(threshold), "--label-sample", str(sample),
                               "--index", index], capture_output=True, text=True, cwd=REPO)
        if proc.returncode:
            raise SystemExit(proc.stderr[-3000:])
        row = {"rows": n, "store_write_s": round(made, 1), **json.loads(proc.stdout.splitlines()[-1]),
               "search": search_quality(store, queries, index), "loadavg": load_average()}
        print(row, flush=True)
        out.append(row)
        if save is not None:  # each size as it is measured: the largest may not finish
            save(out)
    return out
