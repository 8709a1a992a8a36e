"""Fashion-MNIST with frozen EfficientNet-Lite features and classical classifiers.

Reports what each step adds: layer choice, concatenating cuts, classifier, input size, and
10-shot features vs raw pixels. CPU is scarce: sizes are arguments and the JSON records them.

    python -m benchmarks.fashion_mnist --train 60000 --test 10000 --size 224
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks._common import embed_arrays, markdown, pixels, score, write_result
from featurebank.classical import k_shot_indices
from featurebank.datasets import load_fashion_mnist, subsample

LAYERS = ["blocks.10", "blocks.13", "blocks.15", "head"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=5000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--size", type=int, default=None, help="input size (default: native 224)")
    ap.add_argument("--layers", nargs="+", default=["blocks.13", "head"],
                    help="single cuts to score (all of LAYERS are embedded in one pass)")
    ap.add_argument("--models", nargs="+", default=["efficientnet_lite0"])
    ap.add_argument("--rbf", action="store_true", help="also an RBF SVM on the best features")
    ap.add_argument("--out", default="fashion_mnist")
    args = ap.parse_args(argv)

    Xtr, ytr = load_fashion_mnist("train")
    Xte, yte = load_fashion_mnist("test")
    itr, ite = subsample(ytr, args.train), subsample(yte, args.test)
    Xtr, ytr, Xte, yte = Xtr[itr], ytr[itr], Xte[ite], yte[ite]
    rows, started = [], time.perf_counter()
    base = score(pixels(Xtr), ytr, pixels(Xte), yte)
    rows.append({"model": "raw pixels 28x28", "features": "pixels", "classifier": "logreg", **base})
    fewshot = {}
    idx10 = k_shot_indices(ytr, 10)
    fewshot["raw pixels"] = score(pixels(Xtr[idx10]), ytr[idx10], pixels(Xte), yte)["accuracy"]
    for model in args.models:
        ftr, rate = embed_arrays(Xtr, model, LAYERS, args.size)
        fte, _ = embed_arrays(Xte, model, LAYERS, args.size)
        tag = f"{model}@{args.size or 'native'}"
        candidates = {layer: [layer] for layer in args.layers}
        candidates["blocks.15+head"] = ["blocks.15", "head"]
        best = None
        for name, parts in candidates.items():
            a = np.hstack([ftr[p] for p in parts])
            b = np.hstack([fte[p] for p in parts])
            r = score(a, ytr, b, yte)
            rows.append({"model": tag, "features": name, "classifier": "logreg",
                         "embed_img_per_s": round(rate, 1), **r})
            print(rows[-1], flush=True)
            if best is None or r["accuracy"] > best[1]:
                best = (parts, r["accuracy"], a, b)
        parts, _, a, b = best
        fewshot[tag] = score(a[idx10], ytr[idx10], b, yte)["accuracy"]
        if args.rbf:
            rows.append({"model": tag, "features": "+".join(parts), "classifier": "rbf-svm",
                         **score(a, ytr, b, yte, "rbf-svm")})
            print(rows[-1], flush=True)
    payload = {"dataset": "fashion-mnist", "train_images": len(ytr), "test_images": len(yte),
               "input_size": args.size or "native (224 for Lite0)", "rows": rows,
               "ten_shot_accuracy": fewshot, "seconds": round(time.perf_counter() - started)}
    path = write_result(args.out, payload)
    print(markdown(rows, ["model", "features", "classifier", "accuracy"]))
    print("10 labelled images per class:", {k: f"{100 * v:.2f} %" for k, v in fewshot.items()},
          f"({path})")


if __name__ == "__main__":
    main()
