"""Fixtures shared by every area: real photos and the exported default model.

Area-specific fixtures stay in the area's own test modules.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# Keep each test process from oversubscribing the 2 cores when several libraries spin threads.
os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """A cache of exported models shared by the whole session (exports are the slow part)."""
    cache = Path(os.environ.get("FEATUREBANK_TEST_CACHE", REPO / ".pytest_cache" / "featurebank-models"))
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["FEATUREBANK_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def lite0_onnx(model_cache) -> Path:
    """The default model exported to ONNX (through the cache, as users get it)."""
    from featurebank.export import ensure_exported

    return Path(ensure_exported("efficientnet_lite0", cache_dir=model_cache))


@pytest.fixture(scope="session")
def real_photos() -> dict[str, np.ndarray]:
    """Real RGB photos (uint8 HxWx3) with the ImageNet class a person expects."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    sample = load_sample_images()
    names = [Path(f).stem for f in sample.filenames]
    photos = dict(zip(names, sample.images, strict=True))  # china (temple), flower
    photos["chelsea"] = data.chelsea()  # a tabby cat
    photos["coffee"] = data.coffee()  # a cup of coffee
    photos["astronaut"] = data.astronaut()
    photos["rocket"] = data.rocket()
    return photos


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory, real_photos) -> Path:
    """The real photos written as JPEG files in an ImageFolder layout (label = sub-folder)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    for i, (name, arr) in enumerate(sorted(real_photos.items())):
        label = "animal" if name in ("chelsea",) else "scene" if i % 2 else "object"
        (root / label).mkdir(exist_ok=True)
        Image.fromarray(arr).save(root / label / f"{name}.jpg", quality=92)
    return root


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """scikit-learn's digits (real handwritten 8x8 scans) as PNGs in an ImageFolder layout."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits")
    d = load_digits()
    for i, (img, label) in enumerate(zip(d.images, d.target, strict=True)):
        folder = root / str(label)
        folder.mkdir(exist_ok=True)
        px = (img * (255.0 / 16.0)).astype(np.uint8)
        Image.fromarray(px, mode="L").save(folder / f"{i:04d}.png")
    return root
