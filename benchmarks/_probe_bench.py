"""Shared steps of the classical benchmarks: embed arrays once (all layers), score probes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from featurebank.classical._probe import LinearProbe
from PIL import Image
from tqdm import tqdm

RESULTS = Path(__file__).resolve().parent / "results"


def embed_arrays(images: np.ndarray, model: str, layers: list[str], input_size: int | None,
                 batch: int = 64) -> tuple[dict[str, np.ndarray], float]:
    """Features of every layer in one pass over grey uint8 images; (features, images/s)."""
    from featurebank.extractor._extractor import Extractor

    ex = Extractor(model, layers=layers, input_size=input_size, batch_size=batch)
    parts: dict[str, list] = {layer: [] for layer in layers}
    t0 = time.perf_counter()
    for i in tqdm(range(0, len(images), batch), desc=f"{model}@{input_size or 'native'}"):
        out = ex.embed(list(images[i:i + batch]))
        out = out if isinstance(out, dict) else {layers[0]: out}
        for layer in layers:
            parts[layer].append(out[layer])
    rate = len(images) / (time.perf_counter() - t0)
    return {k: np.concatenate(v).astype(np.float32) for k, v in parts.items()}, rate


def pixels(images: np.ndarray, side: int = 28) -> np.ndarray:
    """Raw-pixel baseline features: grey images at side x side in [0, 1]."""
    if images.shape[1] != side:
        images = np.stack([np.asarray(Image.fromarray(im).resize((side, side), Image.BILINEAR))
                           for im in images])
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def score(Xtr, ytr, Xte, yte, classifier: str = "logreg", Cs=(0.01, 0.1, 1.0)) -> dict:
    """Test accuracy of a probe whose C is chosen on a validation split (a short sweep: CPU)."""
    t0 = time.perf_counter()
    probe = LinearProbe(classifier=classifier, Cs=Cs, max_iter=300).fit(Xtr, ytr)
    return {"accuracy": float(probe.score(Xte, yte)), "C": probe.C_,
            "fit_seconds": round(time.perf_counter() - t0, 1)}


def markdown(rows: list[dict], cols: list[str]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(
            f"{100 * r[c]:.2f} %" if c == "accuracy" else str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(out)


def write(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path
