"""``featurebank demo``: the main job end to end on real images with the default model.

Real Fashion-MNIST images (Debian's dataset-fashion-mnist; scikit-learn's digits when absent)
are written as PNG files in an ImageFolder layout, embedded with EfficientNet-Lite0 into a
feature store, a classifier is trained (its kind and C chosen by cross-validation) and evaluated
on held-out images, side by side with the same classifier on raw pixels.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from featurebank.cli.flags import add_deprecated_flag
from featurebank.spec import DEFAULT_MODEL


def register(sub) -> None:
    p = sub.add_parser("demo", help="embed real images, train and evaluate a classifier")
    p.add_argument("--dataset", default="auto", choices=["auto", "fashion-mnist", "digits"])
    p.add_argument("--train-images", type=int, default=1000, metavar="N",
                   help="training images (stratified; default: %(default)s)")
    p.add_argument("--test-images", type=int, default=500, metavar="N",
                   help="test images (stratified; default: %(default)s)")
    p.add_argument("--layer", dest="layers", action="append", metavar="NAME",
                   help="layer(s) to cut at (default: blocks.13 and head, concatenated)")
    p.add_argument("--work-dir", default="runs/demo", metavar="DIR",
                   help="images, stores, classifier and report (default: %(default)s)")
    for old, new, dest in (("--workdir", "--work-dir", "work_dir"),
                           ("--train", "--train-images", "train_images"),
                           ("--test", "--test-images", "test_images")):
        add_deprecated_flag(p, old, new, dest, type=None if dest == "work_dir" else int)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_demo)


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
                                   "dataset-fashion-mnist, or use --dataset digits")
        return "fashion-mnist", load_fashion_mnist("train"), load_fashion_mnist("test"), FASHION_CLASSES
    from sklearn.model_selection import train_test_split

    X, y = load_digits_images()
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
    return "digits", (Xtr, ytr), (Xte, yte), None


def _say_if_exporting(model: str) -> None:
    """The first run exports the model (about 100 s on a CPU): say so instead of going silent."""
    from featurebank.export import cached_path

    path = cached_path(model)
    if not path.is_file():
        print(f"      exporting {model} to ONNX once (about 100 s on a CPU; later runs use "
              f"{path})", flush=True)


def run_demo(args) -> int:
    from featurebank.classical import evaluate, train
    from featurebank.datasets import subsample, write_image_folder
    from featurebank.extractor import embed_collection

    started = time.perf_counter()
    work = Path(args.work_dir)
    name, (Xtr, ytr), (Xte, yte), classes = _dataset(args.dataset)
    layers = tuple(args.layers or ("blocks.13", "head"))
    itr, ite = subsample(ytr, args.train_images), subsample(yte, args.test_images)
    print(f"[1/4] writing {len(itr)} train + {len(ite)} test {name} images as PNG under {work}")
    write_image_folder(Xtr[itr], ytr[itr], work / "images" / "train", classes)
    write_image_folder(Xte[ite], yte[ite], work / "images" / "test", classes)
    _say_if_exporting(DEFAULT_MODEL)
    stores = {}
    for split in ("train", "test"):
        print(f"[2/4] embedding {split} images with {DEFAULT_MODEL} at {', '.join(layers)}")
        stores[split] = work / f"{split}.h5"
        summary = embed_collection([str(work / "images" / split)], stores[split], layers=layers,
                                   progress=not args.no_progress)
        print(f"      {summary}")
    print("[3/4] training a classifier (kind and C chosen by cross-validation) and a raw-pixel "
          "baseline")
    model = train(stores["train"], [*layers])
    model.save(work / "model.joblib")
    print(f"      {model.info['classifier']} C={model.info['C']:g}, {model.info['n_train']} images, "
          f"saved {work / 'model.joblib'}")
    print("[4/4] evaluating on the held-out test images")
    result = evaluate(model, stores["test"], work / "report")
    print(f"accuracy: {result['accuracy']:.4f}")
    print(f"raw-pixel baseline accuracy: {result['raw_pixel_baseline_accuracy']:.4f} "
          f"(transfer gain {100 * result['gain_over_raw_pixels']:+.1f} points)")
    print(f"report: {work / 'report'} (metrics.json, confusion.png); "
          f"{time.perf_counter() - started:.0f} s in all")
    (work / "report" / "demo.json").write_text(json.dumps(
        {"dataset": name, "train": len(itr), "test": len(ite), "layers": list(layers),
         "accuracy": result["accuracy"],
         "raw_pixel_baseline_accuracy": result["raw_pixel_baseline_accuracy"]}, indent=2))
    return 0
