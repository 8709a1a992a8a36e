"""Where the time goes: decode alone, inference alone, end to end, PyTorch eager, cached re-run.

All five stages run in ONE process on the same images, for two image sets: camera-sized JPEG
crops of real photos (scikit-image / scikit-learn samples, 400-640 px) and small Fashion-MNIST
PNGs (28x28, from ``runs/fmnist/test`` when present, otherwise written from the idx files).

Usage::

    python -m benchmarks.throughput                        # 200 photos + 500 Fashion-MNIST
    python -m benchmarks.throughput --photos 60 --fashion 120 --threads 2

Besides min(decode, inference), it reports the *shared-core ceiling*
``1 / (1/decode + 1/inference)``: decode-only and inference-only each use every core, while end
to end they share the same cores, so one image costs the sum of both stages' machine time.

Prints a table, writes ``benchmarks/results/throughput.json`` and ``throughput.png``.
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

from benchmarks._common import RESULTS, fashion_pngs, make_photos, write_result

__all__ = ["fashion_pngs", "make_photos", "main"]  # the image sets, where other scripts found them
MODEL, LAYER = "efficientnet_lite0", "head"


def _rate(n: int, fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return n / (time.perf_counter() - t0), out


def bench_set(files: list[Path], root: Path, args) -> dict:
    from featurebank.extractor import embed_collection
    from featurebank.extractor._extractor import Extractor

    n, workers = len(files), args.workers
    ex = Extractor(MODEL, layers=(LAYER,), batch_size=args.batch_size, threads=args.threads)
    ex.embed_pixels(np.zeros((1, *ex.decode(files[0]).shape), np.uint8))  # warm the session

    def decode_all():
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(ex.decode, files))

    r = {"n": n}
    r["decode_only"], pixels = _rate(n, decode_all)
    batches = [np.stack(pixels[i:i + args.batch_size]) for i in range(0, n, args.batch_size)]
    r["inference_only"], _ = _rate(n, lambda: [ex.embed_pixels(b) for b in batches])
    store = root / "store.h5"
    kw = dict(model=MODEL, layers=(LAYER,), batch_size=args.batch_size, workers=workers,
              threads=args.threads, progress=False, extractor=ex)
    first = embed_collection([str(root / "img")], store, **kw)
    r["end_to_end"] = first.images_per_s
    again = embed_collection([str(root / "img")], store, **kw)
    r["cached_rerun"] = again.images_per_s
    assert first.embedded == n and again.cached == n, (first, again)
    r["torch_eager"] = torch_eager(files, args)
    return r


class _Folder:
    """img2vec-style dataset: PIL decode, resize, center crop, normalise."""

    def __init__(self, files, prep):
        self.files, self.prep = files, prep

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        import torch
        from PIL import Image

        p = self.prep
        img = Image.open(self.files[i]).convert("RGB")
        s = p.resize_size / min(img.size)
        img = img.resize((round(img.width * s), round(img.height * s)), Image.BICUBIC)
        th, tw = p.input_size
        left, top = (img.width - tw) // 2, (img.height - th) // 2
        a = np.asarray(img.crop((left, top, left + tw, top + th)), np.float32) / 255.0
        a = (a - np.asarray(p.mean, np.float32)) / np.asarray(p.std, np.float32)
        return torch.from_numpy(a.transpose(2, 0, 1).copy())


def torch_eager(files: list[Path], args) -> float:
    import torch

    from featurebank.export import build_torch_model, get_model_entry

    torch.set_num_threads(args.threads or 2)
    net = build_torch_model(MODEL).eval()
    loader = torch.utils.data.DataLoader(_Folder(files, get_model_entry(MODEL).preprocessing),
                                         batch_size=args.batch_size, num_workers=2)

    def run():
        with torch.inference_mode():
            return [net.features(x)[LAYER].mean(dim=(2, 3)) for x in loader]

    return _rate(len(files), run)[0]


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = ["decode_only", "inference_only", "shared_core_ceiling", "end_to_end", "torch_eager",
              "cached_rerun"]
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4))
    for ax, (name, r) in zip(np.atleast_1d(axes), results.items(), strict=True):
        ax.bar(stages, [r[s] for s in stages],
               color=["tab:gray" if s == "shared_core_ceiling" else "tab:blue" for s in stages])
        ax.set_yscale("log")
        ax.set_title(f"{name} ({r['n']} images)")
        ax.set_ylabel("images/s (log)")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=200)
    ap.add_argument("--fashion", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    args = ap.parse_args(argv)
    import onnxruntime
    import torch

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, n, make in (("photos", args.photos, make_photos),
                              ("fashion_mnist", args.fashion, fashion_pngs)):
            if n:
                root = Path(tmp) / name
                files = make(root / "img", n)
                results[name] = bench_set(files, root, args)
    for r in results.values():
        r["e2e_over_bottleneck"] = r["end_to_end"] / min(r["decode_only"], r["inference_only"])
        # Decode and inference each used every core when measured alone; end to end they share
        # the cores, so an image costs 1/decode + 1/inference core-seconds of the whole machine.
        r["shared_core_ceiling"] = 1.0 / (1.0 / r["decode_only"] + 1.0 / r["inference_only"])
        r["e2e_over_shared_ceiling"] = r["end_to_end"] / r["shared_core_ceiling"]
        r["e2e_over_torch"] = r["end_to_end"] / r["torch_eager"]
        r["cached_speedup"] = r["cached_rerun"] / r["end_to_end"]
    cols = ["decode_only", "inference_only", "shared_core_ceiling", "end_to_end", "torch_eager",
            "cached_rerun", "e2e_over_bottleneck", "e2e_over_shared_ceiling", "e2e_over_torch",
            "cached_speedup"]
    for name, r in results.items():
        print(f"{name} ({r['n']} images)")
        print("".join(f"  {c:24s}{r[c]:12.2f}\n" for c in cols), end="")
    out = {"model": MODEL, "layer": LAYER, "batch_size": args.batch_size, "workers": args.workers,
           "threads": args.threads, "cpu_count": os.cpu_count(), "loadavg": os.getloadavg(),
           "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
           "torch": torch.__version__, "sets": results}
    write_result("throughput", out)
    chart(results, RESULTS / "throughput.png")
    return out


if __name__ == "__main__":
    main()
