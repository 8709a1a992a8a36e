"""int8 vs fp32: linear-probe accuracy on Fashion-MNIST, speed, and cosine to the float vectors.

On a fixed-seed subset of Fashion-MNIST (``--train`` / ``--test`` PNGs from ``runs/fmnist``),
embeds with the float Lite0 feature graph and with int8 graphs from
:func:`featurebank.extractor.graphs._int8.int8_feature_graph` (the ``precision="int8"`` path, calibrated on
``--calibration`` training images), trains the same :class:`classical.LinearProbe` on each and reports test accuracy, the
accuracy lost, cosine between int8 and fp32 vectors, inference-only images/s (fp32 and int8
timed alternately on the same batches, best of ``--repeats``) and end-to-end images/s
(:func:`featurebank.extractor.engines._local.embed_collection` into a fresh store).

Usage::

    python -m benchmarks.int8                          # the default variant
    python -m benchmarks.int8 --variants all           # every variant in VARIANTS
    python -m benchmarks.int8 --variants default,u8u8 --train 1000 --test 300

Prints a table, writes ``benchmarks/results/int8.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks._common import RESULTS, fashion_folders, write_result
from featurebank.extractor.graphs._int8 import INT8_OPTIONS, int8_feature_graph, int8_graph_path

MODEL = "efficientnet_lite0"

# Keyword arguments of quantize_feature_graph per variant (int8_feature_graph's ``options``).
VARIANTS: dict[str, dict] = {
    "default": INT8_OPTIONS,  # what precision="int8" uses
    "keep4": {"keep_float_convs": 4, "reduce_range": False},
    "keep4_reduce_range": {"keep_float_convs": 4, "reduce_range": True},
    "keep1_reduce_range": {"keep_float_convs": 1, "reduce_range": True},
    "all_int8": {"keep_float_convs": 0, "reduce_range": False},
    "all_int8_reduce_range": {"keep_float_convs": 0, "reduce_range": True},
    "all_int8_rr_percentile": {"keep_float_convs": 0, "reduce_range": True, "calibrate_method": "Percentile"},
    "all_int8_rr_entropy": {"keep_float_convs": 0, "reduce_range": True, "calibrate_method": "Entropy"},
    "all_int8_rr_per_tensor": {"keep_float_convs": 0, "reduce_range": True, "per_channel": False},
    "all_int8_rr_qoperator": {"keep_float_convs": 0, "reduce_range": True, "quant_format": "QOperator"},
    "all_int8_rr_float_depthwise": {"keep_float_convs": 0, "reduce_range": True, "exclude_depthwise": True},
    "u8u8": {"keep_float_convs": 4, "weight_type": "QUInt8"},
}


def subset(n_train: int, n_test: int, seed: int) -> tuple[list[Path], np.ndarray, list[Path], np.ndarray]:
    """Fixed-seed random train / test PNGs (label = class folder) from runs/fmnist."""
    rng = np.random.default_rng(seed)
    out = []
    for root, n in zip(fashion_folders(), (n_train, n_test), strict=True):
        files = sorted(root.rglob("*.png"))
        pick = [files[i] for i in np.sort(rng.choice(len(files), n, replace=False))]
        out += [pick, np.array([f.parent.name for f in pick])]
    return tuple(out)


def embed(run, pixels: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([run(pixels[i:i + batch])[0] for i in range(0, len(pixels), batch)])


def inference_rates(runs: dict, pixels: np.ndarray, batch: int, repeats: int) -> dict[str, float]:
    """images/s per runner, timed alternately on the same batches (fair under shared load)."""
    best = dict.fromkeys(runs, np.inf)
    for _ in range(repeats):
        for name, run in runs.items():
            t0 = time.perf_counter()
            embed(run, pixels, batch)
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: len(pixels) / t for name, t in best.items()}


def end_to_end(ex, files: list[Path], labels: np.ndarray, tmp: Path, batch: int) -> float:
    from featurebank.extractor import embed_collection

    listing = tmp / "e2e.csv"
    listing.write_text("".join(f"{f},{y}\n" for f, y in zip(files, labels, strict=True)))
    store = tmp / f"e2e-{time.monotonic_ns()}.h5"
    summary = embed_collection([str(listing)], store, batch_size=batch, extractor=ex, progress=False)
    store.unlink()
    return summary.images_per_s


def probe_accuracy(Xtr, ytr, Xte, yte, C: float | None) -> tuple[float, float]:
    from featurebank.classical._probe import LinearProbe

    probe = LinearProbe(Cs=None if C is None else (C,)).fit(Xtr, ytr)
    return float(probe.score(Xte, yte)), float(probe.C_)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="default", help=f"comma list or 'all': {', '.join(VARIANTS)}")
    ap.add_argument("--layer", default="head")
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--calibration", type=int, default=100, help="training images to calibrate on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats (best kept)")
    ap.add_argument("--speed-images", type=int, default=256, help="images per inference timing")
    ap.add_argument("--e2e-images", type=int, default=500, help="test images per end-to-end run")
    ap.add_argument("--C", type=float, default=None, help="fixed probe C (default: swept)")
    ap.add_argument("--out", default=str(RESULTS / "int8.json"))
    args = ap.parse_args(argv)
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")

    import onnxruntime

    from featurebank.extractor._extractor import Extractor

    ftr, ytr, fte, yte = subset(args.train, args.test, args.seed)
    ex = Extractor(MODEL, layers=(args.layer,), batch_size=args.batch_size, threads=args.threads)
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        ptr, pte = (np.stack(list(pool.map(ex.decode, fs))) for fs in (ftr, fte))
    speed_px = pte[: args.speed_images]
    t0 = time.perf_counter()
    f_tr, f_te = embed(ex.embed_pixels, ptr, args.batch_size), embed(ex.embed_pixels, pte, args.batch_size)
    fp32_acc, fp32_C = probe_accuracy(f_tr, ytr, f_te, yte, args.C)
    print(f"fp32: probe accuracy {fp32_acc:.4f} (C={fp32_C:g}; {time.perf_counter() - t0:.0f} s)", flush=True)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in names:
            t0 = time.perf_counter()
            # the user's path: a cached int8 graph found by its tag (the options enter the digest)
            tag = int8_feature_graph(ex.graph, ptr[: args.calibration],
                                     options=VARIANTS[name]).specs[0].quantization
            path = int8_graph_path(tag)
            qex = Extractor(MODEL, layers=(args.layer,), batch_size=args.batch_size, threads=args.threads,
                            precision="int8", calibration=tag)
            q_tr, q_te = embed(qex.embed_pixels, ptr, args.batch_size), embed(qex.embed_pixels, pte, args.batch_size)
            acc, C = probe_accuracy(q_tr, ytr, q_te, yte, args.C)
            rates = inference_rates({"fp32": ex.embed_pixels, "int8": qex.embed_pixels}, speed_px,
                                    args.batch_size, args.repeats)
            # fp32 end to end re-measured next to each int8 run: the machine's load drifts
            e2e_files, e2e_y = fte[: args.e2e_images], yte[: args.e2e_images]
            fp32_e2e = end_to_end(ex, e2e_files, e2e_y, tmp, args.batch_size)
            e2e = end_to_end(qex, e2e_files, e2e_y, tmp, args.batch_size)
            cos = cosine(q_te, f_te)
            rows[name] = {
                "options": VARIANTS[name], "probe_accuracy": acc, "probe_C": C,
                "accuracy_lost_points": 100 * (fp32_acc - acc),
                "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                "inference_fp32": rates["fp32"], "inference_int8": rates["int8"],
                "inference_speedup": rates["int8"] / rates["fp32"],
                "end_to_end_fp32": fp32_e2e, "end_to_end_int8": e2e, "end_to_end_speedup": e2e / fp32_e2e,
                "file_mb": path.stat().st_size / 2**20, "seconds": time.perf_counter() - t0,
            }
            r = rows[name]
            print(f"{name:26s} acc {acc:.4f} (lost {r['accuracy_lost_points']:+.2f} pt)  cos mean "
                  f"{r['cosine_mean']:.4f} min {r['cosine_min']:.4f}  inference x{r['inference_speedup']:.2f}"
                  f" ({rates['int8']:.0f} vs {rates['fp32']:.0f} img/s)  e2e x{r['end_to_end_speedup']:.2f}"
                  f" ({e2e:.0f} vs {fp32_e2e:.0f} img/s)", flush=True)
    out = {"model": MODEL, "layer": args.layer, "train": args.train, "test": args.test,
           "calibration": args.calibration, "seed": args.seed, "batch_size": args.batch_size,
           "threads": args.threads, "fp32_probe_accuracy": fp32_acc, "fp32_probe_C": fp32_C,
           "targets": {"end_to_end_speedup": 1.8, "accuracy_lost_points": 0.5},
           "cpu_count": os.cpu_count(), "loadavg": os.getloadavg(), "python": platform.python_version(),
           "onnxruntime": onnxruntime.__version__, "variants": rows}
    write_result(Path(args.out), out)
    return out


if __name__ == "__main__":
    main()
