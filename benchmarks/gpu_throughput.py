"""GPU path throughput: Lite0 at 224, fp32 and fp16, by batch size, on CUDA (or CPU).

Per precision and batch size, on the same camera-sized JPEGs (real photos cropped and rescaled,
``benchmarks._common.make_photos``):

* ``inference_run`` / ``inference_bound``: pre-decoded uint8 batches through ``session.run`` and
  through the IOBinding runner (``featurebank.extractor.graphs._fp16.BoundRunner``); on CUDA the normalisation runs
  on the GPU inside the graph, so only uint8 bytes cross the bus.
* ``end_to_end``: ``featurebank.extractor.engines._local.embed_collection`` over the JPEG folder into a new store
  (decoding in worker threads overlapped with inference, as users run it).

Once: ``decode_only`` (Pillow decode + resize + crop in worker threads, the CPU-side ceiling of
end to end), GPU JPEG decoding when torchvision with CUDA is installed (decode only; not used by
the pipeline), and the fp16-vs-fp32 deviation of the vectors on the device (min cosine).

Usage::

    python -m benchmarks.gpu_throughput --device cuda                  # on a GPU machine
    python -m benchmarks.gpu_throughput --device cpu --batch 16 --n 64 # smoke run anywhere

Prints a table, writes ``benchmarks/results/gpu_throughput.json`` (device name, providers).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks._common import RESULTS, make_photos, write_result

MODEL, LAYER = "efficientnet_lite0", "head"


def device_name(device: str) -> str:
    """The GPU's name from nvidia-smi on CUDA, else the CPU model."""
    if device == "cuda":
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20, check=True)
            return out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            return "unknown CUDA device"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def rate(fn, images: int, min_seconds: float, warmup: int = 2) -> float:
    """Images/s of ``fn`` (one call embeds ``images``), after ``warmup`` untimed calls.

    On CUDA the first call of a batch shape runs cuDNN's exhaustive algorithm search; the
    warm-up keeps it out of the figure.
    """
    for _ in range(warmup):
        fn()
    done, t0 = 0, time.perf_counter()
    while True:
        fn()
        done += images
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return done / elapsed


def gpu_decode_rate(files: list[Path], min_seconds: float) -> dict:
    """JPEG decode-only on the GPU (nvJPEG through torchvision) where it is installed."""
    try:
        import torch
        import torchvision.io as tvio
    except ImportError as exc:
        return {"library": None, "reason": f"torchvision not installed ({exc.name})"}
    if not torch.cuda.is_available():
        return {"library": "torchvision.io", "reason": "torch has no CUDA device here"}
    datas = [tvio.read_file(str(f)) for f in files]

    def run():
        tvio.decode_jpeg(datas, device="cuda")
        torch.cuda.synchronize()

    return {"library": "torchvision.io.decode_jpeg (nvJPEG)",
            "decode_only": rate(run, len(files), min_seconds)}


def bench_one(args, precision: str, batch: int, pixels: np.ndarray, root: Path):
    """The extractor and the figures of one precision and batch size."""
    from featurebank.extractor import embed_collection
    from featurebank.extractor._extractor import Extractor
    from featurebank.extractor.graphs._fp16 import BoundRunner

    ex = Extractor(MODEL, layers=(LAYER,), device=args.device, precision=precision, batch_size=batch,
                   threads=args.threads)
    session, names = ex.session, ex.graph.output_names
    px = np.resize(pixels, (batch, *pixels.shape[1:]))  # cycles the photos to a full batch
    runner = BoundRunner(session, names)
    row = {"precision": precision, "batch": batch,
           "inference_run": rate(lambda: session.run(names, {"pixels": px}), batch,
                                 args.min_seconds),
           "inference_bound": rate(lambda: runner.run(px), batch, args.min_seconds)}
    store = root / f"store-{precision}-{batch}.h5"
    summary = embed_collection([str(root / "img")], store, extractor=ex, batch_size=batch,
                               workers=args.workers, progress=False)
    if summary.embedded != len(pixels):
        raise RuntimeError(f"end to end embedded {summary.embedded} of {len(pixels)}: {summary}")
    row["end_to_end"] = summary.images_per_s
    store.unlink()
    return ex, row


def bench(args, files: list[Path], root: Path) -> dict:
    from featurebank.extractor._extractor import Extractor

    base = Extractor(MODEL, layers=(LAYER,), device="cpu", threads=args.threads)
    with ThreadPoolExecutor(args.workers) as pool:
        t0 = time.perf_counter()
        pixels = np.stack(list(pool.map(base.decode, files)))
        decode_only = len(files) / (time.perf_counter() - t0)
    rows, vectors, providers = [], {}, []
    for precision in args.precision:
        for batch in args.batch:
            ex, row = bench_one(args, precision, batch, pixels, root)
            providers = ex.session.get_providers()
            rows.append(row)
            print(f"{precision:6s}{batch:7d}" + "".join(
                f"{row[k]:14.1f}" for k in ("inference_run", "inference_bound", "end_to_end")),
                flush=True)
        vectors[precision] = ex.embed_pixels(pixels[: min(len(pixels), 256)])[0]
    out = {"decode_only": decode_only, "providers": providers, "rows": rows,
           "gpu_jpeg": gpu_decode_rate(files, args.min_seconds) if args.device == "cuda"
           else {"library": None, "reason": "--device cpu"}}
    if {"fp32", "fp16"} <= set(vectors):
        a, b = vectors["fp32"], vectors["fp16"]
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        out["fp16_vs_fp32"] = {"min_cosine": float(cos.min()),
                               "max_abs_diff": float(np.abs(a - b).max()),
                               "max_abs_fp32": float(np.abs(a).max())}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--precision", nargs="+", choices=("fp32", "fp16"), default=["fp32", "fp16"])
    ap.add_argument("--batch", nargs="+", type=int, default=[64, 256, 1024])
    ap.add_argument("--n", type=int, default=4096, help="JPEGs for decode and end to end")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="decoding threads")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (CPU)")
    ap.add_argument("--min-seconds", type=float, default=3.0, help="timing window per figure")
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu_throughput.json")
    args = ap.parse_args(argv)
    import onnxruntime

    print(f"{'prec':6s}{'batch':>7s}{'infer run':>14s}{'infer bound':>14s}{'end to end':>14s}"
          "   (images/s)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = make_photos(root / "img", args.n)
        result = bench(args, files, root)
    print(f"decode only (Pillow, {args.workers} threads): {result['decode_only']:.1f} images/s")
    print(f"GPU JPEG decode: {result['gpu_jpeg']}")
    if "fp16_vs_fp32" in result:
        print(f"fp16 vs fp32: {result['fp16_vs_fp32']}")
    out = {"model": MODEL, "layer": LAYER, "input_size": 224, "device": args.device,
           "device_name": device_name(args.device), "n_images": args.n, "workers": args.workers,
           "threads": args.threads, "cpu_count": os.cpu_count(), "loadavg": os.getloadavg(),
           "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
           "available_providers": onnxruntime.get_available_providers(),
           "tensorrt": os.environ.get("FEATUREBANK_TENSORRT") == "1", **result}
    write_result(args.out, out)
    return out


if __name__ == "__main__":
    main()
