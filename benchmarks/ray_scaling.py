"""Ray engine scaling on this machine: images/s with 1 and 2 embedding actors, local engine beside.

Usage::

    python -m benchmarks.ray_scaling [--images 600] [--workers 1 2]

Writes ``benchmarks/results/ray_scaling.json``. Images: the Fashion-MNIST test set written as
PNGs (sklearn's digits when the data set is absent). Each run embeds into a fresh store, so
every image is decoded and run through EfficientNet-Lite0 (``head``, avg pool); after one
warm-up run, each time still includes starting that run's actors, which a long run amortises.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

FASHION = Path("/usr/share/datasets/fashion-mnist")
RESULTS = Path(__file__).resolve().parent / "results" / "ray_scaling.json"


def write_images(root: Path, n: int) -> str:
    """``n`` real images as PNGs in an ImageFolder layout; returns the data set's name."""
    images_gz = FASHION / "t10k-images-idx3-ubyte.gz"
    if images_gz.is_file():
        with gzip.open(images_gz) as f:
            images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
        with gzip.open(FASHION / "t10k-labels-idx1-ubyte.gz") as f:
            labels = np.frombuffer(f.read(), np.uint8, offset=8)[:n]
        name = "fashion-mnist"
    else:
        from sklearn.datasets import load_digits

        d = load_digits()
        images, labels = (d.images[:n] * (255 / 16)).astype(np.uint8), d.target[:n]
        name = "sklearn-digits"
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L").save(root / str(label) / f"{i:05d}.png")
    return name


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    import ray

    from extractor.pipeline import embed_collection

    cores = os.cpu_count() or 1
    # Ray's CPUs are logical: one per actor plus room for decode/write tasks, on `cores` cores.
    ray.init(num_cpus=max(args.workers) + 2, include_dashboard=False, log_to_driver=False)
    tmp = Path(tempfile.mkdtemp(prefix="ray-scaling-"))
    try:
        dataset = write_images(tmp / "images", args.images)
        # Warm-up: Ray worker processes, imports and the optimised-graph cache, so the first
        # measured run does not pay costs the others skip.
        embed_collection([str(next((tmp / "images").rglob("*.png")))], tmp / "warmup.h5",
                         engine="ray", workers=1, threads=1, progress=False)
        runs = []
        for workers in args.workers:
            store = tmp / f"ray-{workers}.h5"
            s = embed_collection([str(tmp / "images")], store, engine="ray", workers=workers,
                                 threads=1, batch_size=args.batch_size, progress=False)
            runs.append({"engine": "ray", "workers": workers, "threads_per_worker": 1,
                         "images": s.total, "seconds": round(s.seconds, 2),
                         "images_per_s": round(s.images_per_s, 1)})
            print(runs[-1], flush=True)
        started = time.perf_counter()
        s = embed_collection([str(tmp / "images")], tmp / "local.h5", threads=len(args.workers),
                             batch_size=args.batch_size, progress=False)
        runs.append({"engine": "local", "workers": None, "threads": len(args.workers),
                     "images": s.total, "seconds": round(time.perf_counter() - started, 2),
                     "images_per_s": round(s.images_per_s, 1)})
        print(runs[-1], flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    base = runs[0]["images_per_s"]
    result = {
        "benchmark": "ray_scaling", "dataset": dataset, "model": "efficientnet_lite0", "layer": "head",
        "cpu_cores": cores, "machine": platform.machine(), "ray": ray.__version__,
        "note": "shared 2-core machine; times include actor start-up",
        "runs": runs,
        "speedup_vs_1_worker": {str(r["workers"]): round(r["images_per_s"] / base, 2)
                                for r in runs if r["engine"] == "ray"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["speedup_vs_1_worker"]), "->", args.out)
    return result


if __name__ == "__main__":
    main()
