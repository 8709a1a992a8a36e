"""Benchmark datasets: the readers live in :mod:`featurebank.datasets` (shared with the demo)."""

from featurebank.datasets import (  # noqa: F401  (re-exported for benchmark scripts)
    FASHION_CLASSES,
    fashion_mnist_available,
    load_digits_images,
    load_fashion_mnist,
    subsample,
)
