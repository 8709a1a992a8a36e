"""Ray engine scaling on this machine: images/s with 1 and 2 embedding actors, local engine beside.

Usage::

    python -m benchmarks.ray_scaling [--images 600] [--workers 1 2] [--repeat 5]

Writes ``benchmarks/results/ray_scaling.json``. Images: the Fashion-MNIST test set written as
PNGs (sklearn's digits when the data set is absent). Each run embeds into a fresh store, so
every image is decoded and run through EfficientNet-Lite0 (``head``, avg pool). Every
configuration first runs once unmeasured (warm-up: Ray's worker processes, imports, the
optimised-graph cache); then ``--repeat`` measured runs, interleaved across configurations so
that drifting machine load hits all alike, reported as min / median / max. Each time still
includes starting that run's actors, which a long run amortises. The load average is recorded
before and after: on a shared machine it says how much the figures can be trusted.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks._common import RESULTS, load_average, spread, write_result

FASHION = Path("/usr/share/datasets/fashion-mnist")


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
    ap.add_argument("--repeat", type=int, default=5, help="measured runs per configuration")
    ap.add_argument("--out", type=Path, default=RESULTS / "ray_scaling.json")
    args = ap.parse_args(argv)

    import ray

    from featurebank.extractor import embed_collection

    load_before = load_average()
    # Ray's CPUs are logical: one per actor plus room for decode/write tasks, on the real cores.
    ray.init(num_cpus=max(args.workers) + 2, include_dashboard=False, log_to_driver=False)
    tmp = Path(tempfile.mkdtemp(prefix="ray-scaling-"))
    configs = [("ray", w) for w in args.workers] + [("local", max(args.workers))]
    times: dict = {c: [] for c in configs}
    try:
        dataset = write_images(tmp / "images", args.images)

        def run(engine: str, n: int, name: str) -> float:
            extra = {"workers": n, "threads": 1} if engine == "ray" else {"threads": n}
            s = embed_collection([str(tmp / "images")], tmp / f"{name}.h5", engine=engine,
                                 batch_size=args.batch_size, progress=False, **extra)
            assert s.embedded == args.images, s  # a fresh store: every image really embedded
            print(f"{name}: {s}", flush=True)
            return s.seconds

        for engine, n in configs:  # warm-up, unmeasured
            run(engine, n, f"warmup-{engine}-{n}")
        for rep in range(args.repeat):
            for engine, n in configs:
                times[(engine, n)].append(run(engine, n, f"{engine}-{n}-{rep}"))
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    runs = []
    for (engine, n), ts in times.items():
        rates = [args.images / t for t in ts]
        runs.append({"engine": engine, ("actors" if engine == "ray" else "threads"): n,
                     **({"threads_per_actor": 1} if engine == "ray" else {}),
                     "images": args.images, "seconds": spread(ts, 2),
                     "images_per_s": spread(rates, 1)})
    base = runs[0]["images_per_s"]
    speedup = {}
    for r in runs:
        if r["engine"] == "ray":
            ips = r["images_per_s"]
            # median over median; the range pairs the slowest and the fastest runs
            speedup[str(r["actors"])] = {"median": round(ips["median"] / base["median"], 2),
                                         "min": round(ips["min"] / base["max"], 2),
                                         "max": round(ips["max"] / base["min"], 2)}
    result = {
        "benchmark": "ray_scaling", "dataset": dataset, "model": "efficientnet_lite0", "layer": "head",
        "batch_size": args.batch_size, "ray": ray.__version__, "warmup_runs_per_config": 1,
        "measured_runs_per_config": args.repeat,
        "load_average_before": load_before, "load_average_after": load_average(),
        "note": f"{args.repeat} measured runs per configuration after one warm-up each, "
                "interleaved; each run includes starting its actors; min / median / max",
        "runs": runs, "speedup_vs_1_actor": speedup,
    }
    write_result(args.out, result)
    print(json.dumps(speedup), f"load {load_before} -> {result['load_average_after']}")
    return result


if __name__ == "__main__":
    main()
