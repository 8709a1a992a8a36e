"""Peak memory while embedding a 70,000-image collection into a fresh store (issue 5, target < 1.5 GB).

Embeds Fashion-MNIST's 60,000 training + 10,000 test PNGs (``runs/fmnist/{train,test}``,
written from the idx files when absent) with the normal pipeline
(:func:`featurebank.extractor.engines._local.embed_collection`, Lite0, ``head``) while a thread samples the
process's resident set size (psutil) every ``--interval`` seconds, together with the number of
images embedded so far. ``resource.getrusage(...).ru_maxrss`` gives the kernel's own peak.

Usage::

    python -m benchmarks.memory                 # all 70,000 images (~10-20 min on 2 cores)
    python -m benchmarks.memory --limit 2000    # a quick run on the first 2,000

Prints the figures, writes ``benchmarks/results/memory.json`` and ``memory.png`` (RSS over
images embedded).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks._common import RESULTS, fashion_folders, write_result

MODEL, LAYER = "efficientnet_lite0", "head"
TARGET_MB = 1500.0


class RssSampler(threading.Thread):
    """Samples (seconds, RSS MB, images embedded) until stopped."""

    def __init__(self, counter: list[int], interval: float):
        super().__init__(daemon=True)
        import psutil

        self.proc, self.counter, self.interval = psutil.Process(), counter, interval
        self.samples: list[tuple[float, float, int]] = []
        self._done = threading.Event()
        self._t0 = time.perf_counter()

    def sample(self) -> None:
        rss = self.proc.memory_info().rss / 2**20
        self.samples.append((time.perf_counter() - self._t0, rss, self.counter[0]))

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._done.set()
        self.join()
        self.sample()


def counting_extractor(counter: list[int], threads: int | None, batch_size: int):
    """A Lite0 extractor whose ``embed_pixels`` also counts the images it ran."""
    from featurebank.extractor._extractor import Extractor

    ex = Extractor(MODEL, layers=(LAYER,), batch_size=batch_size, threads=threads)
    run = ex.embed_pixels

    def embed_pixels(pixels):
        out = run(pixels)
        counter[0] += len(pixels)
        return out

    ex.embed_pixels = embed_pixels  # instance attribute: the pipeline calls this one
    return ex


def chart(samples: list[tuple[float, float, int]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = np.asarray(samples)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(s[:, 2], s[:, 1], lw=1.2, label="RSS (psutil samples)")
    ax.axhline(TARGET_MB, color="tab:red", ls="--", label=f"target {TARGET_MB:.0f} MB")
    ax.set_xlabel("images embedded")
    ax.set_ylabel("resident set size (MB)")
    ax.set_ylim(0, max(TARGET_MB, s[:, 1].max()) * 1.1)
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="embed only the first N images")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="decode threads (default: cores)")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between RSS samples")
    ap.add_argument("--out", default=str(RESULTS / "memory.json"))
    args = ap.parse_args(argv)

    from featurebank.extractor import embed_collection
    from featurebank.extractor._inputs import collect

    items = collect([str(r) for r in fashion_folders()])
    if args.limit:
        items = items[: args.limit]
    counter = [0]
    ex = counting_extractor(counter, args.threads, args.batch_size)
    sampler = RssSampler(counter, args.interval)
    baseline_mb = sampler.proc.memory_info().rss / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        # A list file keeps the label of each image (its class folder) and honours --limit.
        listing = Path(tmp) / "images.csv"
        listing.write_text("".join(f"{it.path},{it.label}\n" for it in items))
        store = Path(tmp) / "store.h5"
        sampler.start()
        summary = embed_collection([str(listing)], store, model=MODEL, layers=(LAYER,),
                                   batch_size=args.batch_size, workers=args.workers,
                                   threads=args.threads, extractor=ex, progress=True)
        sampler.stop()
        store_mb = store.stat().st_size / 2**20
    rss = np.asarray([s[1] for s in sampler.samples])
    # ru_maxrss is in KiB on Linux: the kernel's high-water mark, which sampling can miss.
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_mb = max(float(rss.max()), maxrss_mb)
    half = rss[len(rss) // 2:]
    out = {
        "model": MODEL, "layer": LAYER, "images": len(items), "summary": summary.to_dict(),
        "batch_size": args.batch_size, "workers": args.workers or os.cpu_count(),
        "threads": args.threads, "rss_before_mb": round(baseline_mb, 1),
        "peak_rss_sampled_mb": round(float(rss.max()), 1), "ru_maxrss_mb": round(maxrss_mb, 1),
        "peak_rss_mb": round(peak_mb, 1), "target_mb": TARGET_MB, "under_target": peak_mb < TARGET_MB,
        # flat memory: RSS over the second half of the run barely moves
        "rss_second_half_min_mb": round(float(half.min()), 1),
        "rss_second_half_max_mb": round(float(half.max()), 1),
        "store_mb": round(store_mb, 1), "cpu_count": os.cpu_count(), "loadavg": os.getloadavg(),
        "python": platform.python_version(), "samples": [[round(t, 2), round(m, 1), n]
                                                         for t, m, n in sampler.samples],
    }
    print(summary)
    print(f"RSS before {baseline_mb:.0f} MB; peak {peak_mb:.0f} MB (sampled {rss.max():.0f}, "
          f"ru_maxrss {maxrss_mb:.0f}); second half {half.min():.0f}-{half.max():.0f} MB; "
          f"target < {TARGET_MB:.0f} MB: {'met' if peak_mb < TARGET_MB else 'MISSED'}")
    path = write_result(Path(args.out), out)
    chart(sampler.samples, path.with_suffix(".png"),
          f"Lite0 head, {len(items):,} Fashion-MNIST PNGs: peak {peak_mb:.0f} MB")
    return out


if __name__ == "__main__":
    main()
