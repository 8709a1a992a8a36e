"""Fashion-MNIST at full size (60k train / 10k test): frozen Lite0 cuts + logistic regression.

Embeds both splits once with five cuts in one pass (a re-run reuses the stores: only missing
content is embedded), then fits a standardised L-BFGS logistic regression per cut and for
concatenations, C chosen on a 10k/5k split of the training set, and scores on the 10k test set.

    python -m benchmarks.fashion_mnist_full [--work-dir runs] [--configs head all5 ...]

Writes benchmarks/results/fashion_mnist_full.json.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from benchmarks._common import RESULTS, write_result
from featurebank.classical._features import load_features
from featurebank.datasets import FASHION_CLASSES, load_fashion_mnist, write_image_folder
from featurebank.extractor import embed_collection

LAYERS = ("blocks.7", "blocks.10", "blocks.13", "blocks.15", "head")
CONFIGS = {"head": ["head"], "blocks.15": ["blocks.15"], "blocks.13": ["blocks.13"],
           "blocks.13+blocks.15+head": ["blocks.13", "blocks.15", "head"], "all5": list(LAYERS)}
OUT = RESULTS / "fashion_mnist_full.json"


def probe(train_store, test_store, layers, Cs=(0.01, 0.1, 1.0)) -> dict:
    a, b = load_features(train_store, layers), load_features(test_store, layers)
    scaler = StandardScaler().fit(a.X)
    Xa, Xb = scaler.transform(a.X), scaler.transform(b.X)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(Xa))
    tr, va = order[:10000], order[10000:15000]
    val = {c: LogisticRegression(C=c, max_iter=300).fit(Xa[tr], a.y[tr]).score(Xa[va], a.y[va])
           for c in Cs}
    best = max(val, key=val.get)
    t = time.perf_counter()
    model = LogisticRegression(C=best, max_iter=500).fit(Xa, a.y)
    return {"accuracy": float(model.score(Xb, b.y)), "C": best, "dim": int(Xa.shape[1]),
            "val_scores": val, "fit_s": round(time.perf_counter() - t, 1),
            "n_train": len(Xa), "n_test": len(Xb)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", default="runs")
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS))
    ap.add_argument("--out", default=str(OUT), help="JSON to write")
    args = ap.parse_args()
    work = Path(args.work_dir)
    stores = {}
    for split in ("train", "test"):
        images, labels = load_fashion_mnist(split)
        folder = write_image_folder(images, labels, work / "fmnist" / split, FASHION_CLASSES)
        stores[split] = work / f"fmnist_{split}.h5"
        summary = embed_collection([str(folder)], stores[split], layers=LAYERS, batch_size=64)
        print(f"{split}: {summary}")
    results = {"model": "efficientnet_lite0", "input": 224, "classifier": "logreg (lbfgs)",
               "loadavg": os.getloadavg(), "configs": {}}
    for name in args.configs:
        results["configs"][name] = probe(stores["train"], stores["test"], CONFIGS[name])
        print(name, results["configs"][name], flush=True)
        write_result(Path(args.out), results)  # after each config: a long run keeps its figures


if __name__ == "__main__":
    main()
