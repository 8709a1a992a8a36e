"""Helpers every benchmark shares: where results go, what the machine was doing, timing stats.

Benchmarks run one way, as modules from the repository root (``python -m benchmarks.NAME``),
print their figures and write one JSON file to ``benchmarks/results/`` through
:func:`write_result`, which stamps it with :func:`machine` (cores, load, versions, date), so a
figure is never separated from the conditions it was measured in.

Also here: the image sets several benchmarks embed (:func:`make_photos`, :func:`fashion_pngs`,
:func:`fashion_folders`) and the probe steps of the classical benchmarks (:func:`embed_arrays`,
:func:`pixels`, :func:`score`, :func:`markdown`).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages, rounded (the machine is shared: this says by how much)."""
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict:
    """Cores, load, Python and onnxruntime versions, platform and UTC date of a measurement."""
    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:  # a benchmark that never runs a graph still records the rest
        ort = None
    return {"cpu_count": os.cpu_count(), "loadavg": load_average(),
            "python": platform.python_version(), "onnxruntime": ort,
            "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def spread(values: Sequence[float], digits: int = 3) -> dict:
    """min / median / max (and every value) of repeated measurements."""
    vals = [float(v) for v in values]
    return {"min": round(min(vals), digits), "median": round(statistics.median(vals), digits),
            "max": round(max(vals), digits), "all": [round(v, digits) for v in vals]}


def write_result(name_or_path: str | Path, payload: dict) -> Path:
    """Write ``payload`` (plus ``machine`` unless it has one) as JSON; return the path.

    ``name_or_path``: a bare name (``"int8"``) lands in ``benchmarks/results/NAME.json``; a path
    (``--out``) is used as given.
    """
    path = Path(name_or_path)
    if path.suffix != ".json" and len(path.parts) == 1:
        path = RESULTS / f"{path}.json"
    payload = {**payload, "machine": payload.get("machine") or machine()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")
    return path


# -- image sets --------------------------------------------------------------------------------
def photo_sources(with_camera: bool = True) -> dict[str, np.ndarray]:
    """The real RGB photos of scikit-learn and scikit-image the image sets are cut from."""
    from skimage import color, data
    from sklearn.datasets import load_sample_images

    srcs = dict(zip(("china", "flower"), load_sample_images().images, strict=True))
    srcs.update(chelsea=data.chelsea(), coffee=data.coffee(), astronaut=data.astronaut(),
                rocket=data.rocket())
    if with_camera:
        srcs["camera"] = color.gray2rgb(data.camera()).astype(np.uint8)
    return srcs


def random_crop(arr: np.ndarray, rng: np.random.Generator, lo: float, hi: float):
    """A PIL crop of ``arr`` whose sides are ``lo``-``hi`` of the photo's, at a random place."""
    from PIL import Image

    h, w = arr.shape[:2]
    ch, cw = int(h * rng.uniform(lo, hi)), int(w * rng.uniform(lo, hi))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return Image.fromarray(arr[y:y + ch, x:x + cw])


def make_photos(root: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` distinct JPEGs (random crop, rescale to 400-640 px, flip) of real photos."""
    from PIL import Image

    srcs = photo_sources()
    rng = np.random.default_rng(seed)
    names, paths = sorted(srcs), []
    for i in range(n):
        name = names[i % len(names)]
        img = random_crop(srcs[name], rng, 0.6, 1.0)
        scale = rng.uniform(400, 640) / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.BICUBIC)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        out = root / name / f"{i:04d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        img.save(out, quality=90)
        paths.append(out)
    return paths


def fashion_folders() -> list[Path]:
    """``runs/fmnist/train`` and ``runs/fmnist/test`` (70,000 PNGs), written when missing."""
    from featurebank.datasets import FASHION_CLASSES, load_fashion_mnist, write_image_folder

    roots = []
    for split in ("train", "test"):
        root = REPO / "runs" / "fmnist" / split
        if not root.is_dir() or not any(root.rglob("*.png")):
            images, labels = load_fashion_mnist(split)
            write_image_folder(images, labels, root, FASHION_CLASSES)
        roots.append(root)
    return roots


def fashion_pngs(root: Path, n: int) -> list[Path]:
    """``n`` Fashion-MNIST PNGs copied from runs/fmnist/test (or written from the idx files)."""
    src = REPO / "runs" / "fmnist" / "test"
    if src.is_dir():
        every = sorted(src.rglob("*.png"))
        files = every[:: max(1, len(every) // n)][:n]
        out = []
        for f in files:
            dst = root / f.parent.name / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dst)
            out.append(dst)
        return out
    from featurebank.datasets import (
        FASHION_CLASSES,
        load_fashion_mnist,
        subsample,
        write_image_folder,
    )

    images, labels = load_fashion_mnist("test")
    idx = subsample(labels, n)
    write_image_folder(images[idx], labels[idx], root, FASHION_CLASSES)
    return sorted(root.rglob("*.png"))


# -- probes on embedded arrays (classical benchmarks) ---------------------------------------
def embed_arrays(images: np.ndarray, model: str, layers: list[str], input_size: int | None,
                 batch: int = 64) -> tuple[dict[str, np.ndarray], float]:
    """Features of every layer in one pass over grey uint8 images; (features, images/s)."""
    from tqdm import tqdm

    from featurebank.extractor import Extractor

    ex = Extractor(model, layers=layers, input_size=input_size, batch_size=batch)
    parts: dict[str, list] = {layer: [] for layer in layers}
    t0 = time.perf_counter()
    for i in tqdm(range(0, len(images), batch), desc=f"{model}@{input_size or 'native'}"):
        out = ex.embed(list(images[i:i + batch]))  # a dict layer -> [N, D], whatever the layers
        for layer in layers:
            parts[layer].append(out[layer])
    rate = len(images) / (time.perf_counter() - t0)
    return {k: np.concatenate(v).astype(np.float32) for k, v in parts.items()}, rate


def pixels(images: np.ndarray, side: int = 28) -> np.ndarray:
    """Raw-pixel baseline features: grey images at side x side in [0, 1]."""
    from PIL import Image

    if images.shape[1] != side:
        images = np.stack([np.asarray(Image.fromarray(im).resize((side, side), Image.BILINEAR))
                           for im in images])
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def score(Xtr, ytr, Xte, yte, classifier: str = "logreg", Cs=(0.01, 0.1, 1.0)) -> dict:
    """Test accuracy of a probe whose C is chosen on a validation split (a short sweep: CPU)."""
    from featurebank.classical import LinearProbe

    t0 = time.perf_counter()
    probe = LinearProbe(classifier=classifier, Cs=Cs, max_iter=300).fit(Xtr, ytr)
    return {"accuracy": float(probe.score(Xte, yte)), "C": probe.C_,
            "fit_seconds": round(time.perf_counter() - t0, 1)}


def markdown(rows: list[dict], cols: list[str]) -> str:
    """A markdown table of result rows (accuracies as percentages)."""
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(
            f"{100 * r[c]:.2f} %" if c == "accuracy" else str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(out)
