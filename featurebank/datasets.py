"""Real labelled image sets for the demo, benchmarks and tests, written as ImageFolder trees."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "ankle-boot"]


def fashion_mnist_available() -> bool:
    return (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file()


def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 28, 28] and labels [N] from Debian's dataset-fashion-mnist."""
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images, labels


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 [N, 8, 8] (0..255) and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255.0 / 16.0)).round().astype(np.uint8), d.target


def write_image_folder(images: np.ndarray, labels: np.ndarray, root: str | Path,
                       class_names: list[str] | None = None, prefix: str = "") -> Path:
    """Write grey images as PNGs under root/<class>/; existing files are kept (idempotent)."""
    from PIL import Image

    root = Path(root)
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        name = class_names[int(label)] if class_names else str(int(label))
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{prefix}{i:05d}.png"
        if not path.exists():
            Image.fromarray(img, mode="L").save(path)
    return root


def subsample(labels: np.ndarray, n: int | None, seed: int = 0) -> np.ndarray:
    """Indices of a class-stratified random subset of size n (all when n is None)."""
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split

    idx, _ = train_test_split(np.arange(len(labels)), train_size=n, stratify=labels, random_state=seed)
    return np.sort(idx)


def load_labelled_images(split: str = "test") -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """Real labelled images for demos and tests: Fashion-MNIST's ``split`` where Debian's
    package is installed, else scikit-learn's digits; with the class names (None: digits)."""
    if fashion_mnist_available():
        images, labels = load_fashion_mnist(split)
        return images, labels, list(FASHION_CLASSES)
    images, labels = load_digits_images()
    return images, labels, None
