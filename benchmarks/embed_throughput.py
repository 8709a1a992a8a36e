"""Embedding throughput: a first run over a real-image collection vs. the cached re-run.

The collection: ``--fashion`` Fashion-MNIST training images written as PNG files (28x28 grey)
plus ``--photos`` JPEG crops of real photos (scikit-image / scikit-learn samples) at several
hundred pixels, so decoding costs are realistic for both tiny and camera-sized files.

Usage::

    python -m benchmarks.embed_throughput                      # 2000 Fashion-MNIST + 200 photos
    python -m benchmarks.embed_throughput --fashion 300 --photos 60 --threads 2

Prints images/s of both runs, the speed-up of the re-run and the peak RSS of the process,
and writes ``benchmarks/results/embed_throughput.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import RESULTS, write_result


def make_collection(root: Path, n_fashion: int, n_photos: int) -> Path:
    """Fashion-MNIST PNGs under fashion/<class>/ and photo crops under photos/<name>/."""
    import numpy as np

    from benchmarks._common import photo_sources, random_crop
    from featurebank.datasets import (
        FASHION_CLASSES,
        fashion_mnist_available,
        load_fashion_mnist,
        subsample,
        write_image_folder,
    )

    if n_fashion:
        if not fashion_mnist_available():
            raise SystemExit("Fashion-MNIST not found; pass --fashion 0")
        images, labels = load_fashion_mnist("train")
        idx = subsample(labels, n_fashion)
        write_image_folder(images[idx], labels[idx], root / "fashion", FASHION_CLASSES)
    photos = photo_sources(with_camera=False)
    rng = np.random.default_rng(0)
    names = sorted(photos)
    for i in range(n_photos):  # distinct random crops, 300..600 px on the long side
        name = names[i % len(names)]
        img = random_crop(photos[name], rng, 0.6, 0.95)
        img.thumbnail((int(rng.integers(300, 601)),) * 2)
        (root / "photos" / name).mkdir(parents=True, exist_ok=True)
        img.save(root / "photos" / name / f"{i:05d}.jpg", quality=90)
    return root


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fashion", type=int, default=2000, help="Fashion-MNIST images (PNG)")
    p.add_argument("--photos", type=int, default=200, help="real-photo crops (JPEG)")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--out", default=str(RESULTS / "embed_throughput.json"))
    args = p.parse_args(argv)

    from featurebank.extractor import embed_collection

    with tempfile.TemporaryDirectory(prefix="fb-embed-bench-") as tmp:
        src = make_collection(Path(tmp) / "src", args.fashion, args.photos)
        store = Path(tmp) / "store.h5"
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        kw = dict(model=args.model, batch_size=args.batch_size, workers=args.workers,
                  threads=args.threads, dtype=args.dtype, progress=sys.stderr.isatty())
        first = embed_collection([str(src)], store, **kw)
        second = embed_collection([str(src)], store, **kw)
        store_mb = store.stat().st_size / 1e6
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "model": args.model, "images": first.total, "fashion_png": args.fashion,
        "photo_jpeg": args.photos, "batch_size": args.batch_size, "workers": args.workers,
        "threads": args.threads, "dtype": args.dtype,
        "first_run": first.to_dict(), "cached_rerun": second.to_dict(),
        "speedup_cached": round(first.seconds / second.seconds, 1) if second.seconds else None,
        "store_mb": round(store_mb, 2), "peak_rss_mb": round(rss_mb, 1),
        "peak_rss_before_embed_mb": round(rss_before, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(f"first run : {first}")
    print(f"cached run: {second}")
    print(f"speed-up of the cached re-run: {result['speedup_cached']}x; store {store_mb:.1f} MB; "
          f"peak RSS {rss_mb:.0f} MB ({rss_before:.0f} MB before embedding)")
    write_result(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()
