"""Two transfer figures beside the full Fashion-MNIST run.

1. Fashion-MNIST with 10 labelled images per class (3 draws), frozen Lite0 cuts vs raw 28x28
   pixels, same standardised logistic regression, scored on a 3,000-image stratified sample of
   the test set. Needs the stores of ``benchmarks.fashion_mnist_full`` (runs/fmnist_*.h5).
2. digits, 5-fold stratified: raw pixels vs concatenated mid-network Lite0 cuts.

    python -m benchmarks.transfer_extras [--workdir runs]

Writes benchmarks/results/transfer_extras.json.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from classical.features import load_features
from classical.model import raw_pixels
from classical.probe import LinearProbe, cross_validate_probe, k_shot_indices
from featurebank.datasets import load_digits_images

RESULTS = Path(__file__).parent / "results" / "transfer_extras.json"
FEWSHOT = {"head": ["head"], "blocks.13": ["blocks.13"],
           "all5": ["blocks.7", "blocks.10", "blocks.13", "blocks.15", "head"]}
DIGIT_LAYERS = ["blocks.4", "blocks.7", "blocks.10", "blocks.13"]


def _probe():
    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))


def fewshot(work: Path, k: int = 10, draws: int = 3) -> dict:
    test_idx = np.random.default_rng(0).permutation(10000)[:3000]
    out: dict = {}
    for name, layers in FEWSHOT.items():
        a = load_features(work / "fmnist_train.h5", layers)
        b = load_features(work / "fmnist_test.h5", layers)
        out[name] = float(np.mean([
            _probe().fit(a.X[i], a.y[i]).score(b.X[test_idx], b.y[test_idx])
            for i in (k_shot_indices(a.y, k, seed) for seed in range(draws))]))
    pixels_test = raw_pixels(b.paths[test_idx])
    out["raw_pixels"] = float(np.mean([
        _probe().fit(raw_pixels(a.paths[i]), a.y[i]).score(pixels_test, b.y[test_idx])
        for i in (k_shot_indices(a.y, k, seed) for seed in range(draws))]))
    return out


def digits() -> dict:
    from extractor import Extractor

    X, y = load_digits_images()
    feats = Extractor(layers=DIGIT_LAYERS, batch_size=64).embed(list(X))
    F = np.hstack([feats[name] for name in DIGIT_LAYERS])
    pixels = X.reshape(len(X), -1) / 255.0
    return {"raw_pixels_logreg": float(cross_validate_probe(LinearProbe(), pixels, y).mean()),
            "mid_cuts_logreg": float(cross_validate_probe(LinearProbe(), F, y).mean()),
            "layers": DIGIT_LAYERS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="runs")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    results = {"fashion_mnist_10_shot": fewshot(Path(args.workdir)), "digits_5_fold": digits()}
    print(json.dumps(results, indent=2))
    RESULTS.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
