"""scikit-learn digits: frozen EfficientNet-Lite features vs raw pixels, 5-fold stratified CV.

    python -m benchmarks.digits [--n 1797] [--size 224]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks._common import embed_arrays, markdown, pixels, write_result
from featurebank.classical import LinearProbe, cross_validate_probe
from featurebank.datasets import load_digits_images, subsample

LAYERS = ["blocks.13", "blocks.15", "head"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=None, help="images (stratified subset; default all 1797)")
    ap.add_argument("--size", type=int, default=None, help="input size (default: native 224)")
    ap.add_argument("--model", default="efficientnet_lite0")
    args = ap.parse_args(argv)

    X, y = load_digits_images()
    idx = subsample(y, args.n)
    X, y = X[idx], y[idx]
    started = time.perf_counter()
    feats, rate = embed_arrays(X, args.model, LAYERS, args.size)
    probe = LinearProbe(Cs=(0.01, 0.1, 1.0), max_iter=300)
    sets = {"raw pixels 28x28": pixels(X), **feats,
            "blocks.15+head": np.hstack([feats["blocks.15"], feats["head"]])}
    rows = []
    for name, F in sets.items():
        scores = cross_validate_probe(probe, F, y, folds=5)
        rows.append({"features": name, "accuracy": float(scores.mean()),
                     "std": round(float(scores.std()), 4)})
        print(rows[-1], flush=True)
    path = write_result("digits", {"dataset": "sklearn digits", "images": len(y), "folds": 5,
                            "model": args.model, "input_size": args.size or "native",
                            "embed_img_per_s": round(rate, 1), "rows": rows,
                            "seconds": round(time.perf_counter() - started)})
    print(markdown(rows, ["features", "accuracy", "std"]), f"({path})")


if __name__ == "__main__":
    main()
