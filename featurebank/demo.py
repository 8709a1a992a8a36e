"""The main job end to end on real images with the default model (``featurebank demo``).

Real Fashion-MNIST images (Debian's dataset-fashion-mnist; scikit-learn's digits when absent)
are written as PNG files in an ImageFolder layout, embedded with EfficientNet-Lite0 into a
feature store, a linear probe is trained and evaluated on held-out images, side by side with
the same classifier on raw pixels.

Like :mod:`featurebank.predict`, this module sits above the stages (it runs extractor and
classical, imported on first use) and below the entry points; at its top it imports only the
ground floor, so the command line builds ``demo``'s flags from :class:`DemoOptions` for free.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featurebank.options import Interval, Items, Options, check_options, option
from featurebank.paths import write_json
from featurebank.spec import DEFAULT_MODEL

__all__ = ["DATASETS", "DemoOptions", "run_demo"]

DATASETS = ("auto", "fashion-mnist", "digits")


@dataclass(frozen=True)
class DemoOptions:
    """What the demo runs on.

    Parameters
    ----------
    dataset : str
        ``fashion-mnist``, ``digits`` or ``auto`` (Fashion-MNIST when installed).
    train_images, test_images : int
        Images drawn (stratified) for training and for the held-out test.
    layers : tuple of str
        Layers to cut at, concatenated.
    work_dir : str
        Folder for the images, stores, classifier and report.
    progress : bool
        Show embedding progress.
    """

    dataset: str = option("auto", Options(DATASETS))
    train_images: int = option(1000, Interval(int, 10, None),
                               help="training images, drawn stratified")
    test_images: int = option(500, Interval(int, 10, None), help="held-out test images, drawn "
                              "stratified")
    layers: tuple[str, ...] = option(("blocks.13", "head"), Items(str))
    work_dir: str = option("runs/demo", str, Path)
    progress: bool = option(True, bool)

    def __post_init__(self) -> None:
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        check_options(self)


def _dataset(name: str):
    from featurebank.datasets import (
        FASHION_CLASSES,
        fashion_mnist_available,
        load_digits_images,
        load_fashion_mnist,
    )

    if name == "fashion-mnist" or (name == "auto" and fashion_mnist_available()):
        if not fashion_mnist_available():
            from featurebank.errors import FeaturebankError

            raise FeaturebankError("Fashion-MNIST is not installed: apt-get install "
                                   "dataset-fashion-mnist, or use dataset 'digits'")
        return "fashion-mnist", load_fashion_mnist("train"), load_fashion_mnist("test"), FASHION_CLASSES
    from sklearn.model_selection import train_test_split

    X, y = load_digits_images()
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
    return "digits", (Xtr, ytr), (Xte, yte), None


def _say_if_exporting(model: str, say: Callable[[str], None]) -> None:
    """The first run exports the model (about 100 s on a CPU): say so instead of going silent."""
    from featurebank.export import cached_path

    path = cached_path(model)
    if not path.is_file():
        say(f"      exporting {model} to ONNX once (about 100 s on a CPU; later runs use {path})")


def run_demo(options: DemoOptions = DemoOptions(),
             say: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the images, embed them, train and evaluate; ``say`` tells each step.

    Returns
    -------
    dict
        What ``report/demo.json`` holds, with the full metrics under ``metrics``.
    """
    from featurebank.classical import evaluate, train
    from featurebank.datasets import subsample, write_image_folder
    from featurebank.extractor import embed_collection
    from featurebank.paths import check_writable

    started = time.perf_counter()
    work = Path(options.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    check_writable(work / "classifier.joblib")
    name, (Xtr, ytr), (Xte, yte), classes = _dataset(options.dataset)
    layers = options.layers
    itr, ite = subsample(ytr, options.train_images), subsample(yte, options.test_images)
    say(f"[1/4] writing {len(itr)} train + {len(ite)} test {name} images as PNG under {work}")
    write_image_folder(Xtr[itr], ytr[itr], work / "images" / "train", classes)
    write_image_folder(Xte[ite], yte[ite], work / "images" / "test", classes)
    _say_if_exporting(DEFAULT_MODEL, say)
    stores = {}
    for split in ("train", "test"):
        say(f"[2/4] embedding {split} images with {DEFAULT_MODEL} at {', '.join(layers)}")
        stores[split] = work / f"{split}.h5"
        summary = embed_collection([str(work / "images" / split)], stores[split], layers=layers,
                                   progress=options.progress)
        say(f"      {summary}")
    say("[3/4] training a classifier (kind and C chosen by cross-validation) and a raw-pixel "
        "baseline of the same kind")
    classifier = train(stores["train"], [*layers])
    classifier.save(work / "classifier.joblib")
    say(f"      {classifier.info['classifier']} C={classifier.info['C']:g}, "
        f"{classifier.info['n_train']} images, saved "
        f"{work / 'classifier.joblib'}")
    say("[4/4] evaluating on the held-out test images")
    result = evaluate(classifier, stores["test"], work / "report")
    out = {"dataset": name, "train": len(itr), "test": len(ite), "layers": list(layers),
           "accuracy": result["accuracy"],
           "raw_pixel_baseline_accuracy": result["raw_pixel_baseline_accuracy"],
           "seconds": round(time.perf_counter() - started, 1)}
    write_json(out, work / "report" / "demo.json")
    return {**out, "metrics": result, "report": str(work / "report")}
