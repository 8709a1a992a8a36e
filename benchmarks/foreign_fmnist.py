"""A foreign backbone's cuts against native Lite0's, on a Fashion-MNIST subset.

The foreign model is pretrained Lite0 wrapped to take NHWC, BGR, 0-255 pixels with opaque tensor
names and a ReduceMean pool (the model the parity tests build), adopted with its conventions.
Every cut of its catalogue is embedded and scored by the same standardised logistic regression
as native Lite0's catalogue cuts, on the same images: where the conventions are right, the
adopted cut scores what the native layer it lands on scores.

    python -m benchmarks.foreign_fmnist [--n 600]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import write_result


def score(features: dict[str, np.ndarray], y: np.ndarray, train: np.ndarray,
          test: np.ndarray) -> dict[str, dict]:
    """Test accuracy of a standardised logistic regression per cut."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = {}
    for layer, feats in features.items():
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
        clf.fit(feats[train], y[train])
        out[layer] = {"dim": int(feats.shape[1]),
                      "accuracy": round(float(clf.score(feats[test], y[test])), 4)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600, help="images (half train, half test)")
    ap.add_argument("--out", default="foreign_fmnist")
    args = ap.parse_args()

    from benchmarks.harness.foreign_models import LITE_FLAGS, make_foreign_lite
    from featurebank.datasets import load_fashion_mnist, subsample
    from featurebank.export import adopt, ensure_exported, read_onnx_metadata
    from featurebank.extractor import Extractor

    images, labels = load_fashion_mnist("test")
    idx = subsample(labels, args.n, seed=0)
    rgb = [np.stack([im] * 3, -1) for im in images[idx]]
    y = labels[idx]
    train, test = np.arange(0, len(idx), 2), np.arange(1, len(idx), 2)
    with tempfile.TemporaryDirectory(prefix="fb-foreign-") as tmp:
        adopted = Path(tmp) / "adopted.onnx"
        adopt(make_foreign_lite(Path(tmp)), adopted, **LITE_FLAGS)
        models = {
            # friendly names only: the foreign catalogue also lists every tensor by its name
            "foreign": (str(adopted), [la.name for la in read_onnx_metadata(adopted).layers
                                       if la.name != la.tensor]),
            "native": ("efficientnet_lite0",
                       [la.name for la in read_onnx_metadata(ensure_exported(
                           "efficientnet_lite0")).layers]),
        }
        result = {"images": len(idx), "train": len(train), "test": len(test)}
        for name, (model, layers) in models.items():
            t0 = time.perf_counter()
            feats = Extractor(model, layers=layers, device="cpu", batch_size=32).embed(rgb)
            seconds = round(time.perf_counter() - t0, 1)
            result[name] = {"model": model if name == "native" else "lite0 as NHWC BGR 0-255",
                            "embed_seconds": seconds, "cuts": score(feats, y, train, test)}
            for layer, r in result[name]["cuts"].items():
                print(f"{name:8s} {layer:10s} dim {r['dim']:5d}  accuracy {r['accuracy']:.4f}")
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
