"""Fashion-MNIST with 10 labelled images per class: frozen Lite0 features vs raw pixels.

Protocol -- no choice looks at the test set:

* **test**: a 3,000-image random sample of the official test set (``default_rng(0)``), scored
  after training on 3 draws of 10 images per class from the official training set
  (``k_shot_indices`` seeds 0, 1, 2); the figure is the mean over the draws.
* **dev** (all choices): 2,000 images of the *training* set (``default_rng(1000)``), scored after
  training on 3 draws (seeds 100-102) from the other 58,000 training images. The rendering of the
  28x28 images, horizontal-flip augmentation and the cut(s) are the dev winner.
* **classifier**: ``LinearProbe(normalize="l2", cv=5)``: rows L2-normalised, standardised,
  L-BFGS logistic regression with C from {0.001 .. 10} chosen by 5-fold stratified CV on the 100
  training images. The raw-pixel baseline (28x28 grey pixels / 255) uses the same probe, the same
  rule and the same flip augmentation; the gain is measured against the better of the raw-pixel
  runs with and without flips.

Renderings: ``plain`` (white garment on black, as stored in runs/fmnist_*.h5) and ``inv-pad4``
(255 - pixels, 4 px white border: a dark garment on white like a product photo, and the model's
centre crop no longer cuts the garment's edges). Flip: training rows are the image and its mirror;
a test row is the mean of both features. Features are embedded from the arrays
(``featurebank.datasets.load_fashion_mnist``) and cached in ``WORKDIR/fewshot_cache``.

    python -m benchmarks.fewshot_fmnist [--workdir runs]

Called by ``benchmarks.transfer_extras``, which writes the JSON.
"""

from __future__ import annotations

import warnings
from functools import cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

from featurebank.classical._features import load_features
from featurebank.classical._probe import LinearProbe, k_shot_indices
from featurebank.datasets import load_fashion_mnist

MODEL = "efficientnet_lite0"
LAYERS = ["blocks.10", "blocks.13", "blocks.15", "head"]
LAYER_SETS = {"blocks.13": ["blocks.13"], "blocks.15": ["blocks.15"], "head": ["head"],
              "blocks.10+blocks.13": ["blocks.10", "blocks.13"],
              "blocks.13+blocks.15+head": ["blocks.13", "blocks.15", "head"]}
RENDERINGS = ("plain", "inv-pad4")
K, DRAWS = 10, 3


def probe() -> LinearProbe:
    """The few-shot probe, for features and raw pixels alike."""
    return LinearProbe(normalize="l2", cv=5)


@cache
def splits() -> dict:
    """Index sets: the test sample and its training draws; the dev split and its draws."""
    _, ytr = load_fashion_mnist("train")
    dev = np.sort(np.random.default_rng(1000).permutation(len(ytr))[:2000])
    pool = np.setdiff1d(np.arange(len(ytr)), dev)
    return {"test": np.random.default_rng(0).permutation(10000)[:3000],
            "test_draws": [k_shot_indices(ytr, K, s) for s in range(DRAWS)],
            "dev": dev,
            "dev_draws": [pool[k_shot_indices(ytr[pool], K, s)] for s in range(100, 100 + DRAWS)]}


def render(images: np.ndarray, rendering: str, flip: bool) -> np.ndarray:
    if rendering == "inv-pad4":
        images = np.pad(255 - images, ((0, 0), (4, 4), (4, 4)), constant_values=255)
    elif rendering != "plain":
        raise ValueError(f"unknown rendering {rendering!r}")
    return np.ascontiguousarray(images[:, :, ::-1] if flip else images)


class FeatureBank:
    """Features of (split, rendering, flip) for selected image indices, embedded once and cached."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.images = {s: load_fashion_mnist(s) for s in ("train", "test")}
        self._extractor = None
        self._stored: dict = {}

    def get(self, split: str, index: np.ndarray, rendering: str, flip: bool) -> dict:
        if rendering == "plain" and not flip:
            return self._from_store(split, index)
        cache = self.workdir / "fewshot_cache" / f"{MODEL}_{rendering}_{int(flip)}_{split}.npz"
        have: dict = {}
        if cache.exists():
            z = np.load(cache)
            have = {"index": z["index"], **{layer: z[layer.replace(".", "_")] for layer in LAYERS}}
        missing = np.setdiff1d(index, have.get("index", []))
        if len(missing):
            have = self._embed(split, missing, rendering, flip, have)
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, index=have["index"],
                     **{layer.replace(".", "_"): have[layer] for layer in LAYERS})
        pos = np.searchsorted(have["index"], index)
        return {layer: have[layer][pos] for layer in LAYERS}

    def _embed(self, split, missing, rendering, flip, have) -> dict:
        from featurebank.extractor import Extractor

        if self._extractor is None:
            self._extractor = Extractor(MODEL, layers=LAYERS, batch_size=64)
        pixels = render(self.images[split][0][missing], rendering, flip)
        chunks = []
        with tqdm(total=len(pixels), desc=f"embed {split} {rendering} flip={flip}",
                  unit="img") as bar:
            for i in range(0, len(pixels), 256):
                chunks.append(self._extractor.embed(list(pixels[i:i + 256])))
                bar.update(len(chunks[-1][LAYERS[0]]))
        index = np.concatenate([have.get("index", np.zeros(0, int)), missing])
        order = np.argsort(index)
        out = {"index": index[order]}
        for layer in LAYERS:
            new = np.concatenate([c[layer] for c in chunks])
            out[layer] = (np.concatenate([have[layer], new]) if have else new)[order]
        return out

    def _from_store(self, split: str, index: np.ndarray) -> dict:
        """Plain rendering: the features benchmarks.fashion_mnist_full stored for every image."""
        if split not in self._stored:
            self._stored[split] = {}
            for layer in LAYERS:
                data = load_features(self.workdir / f"fmnist_{split}.h5", [layer])
                order = np.argsort([int(Path(p).stem) for p in data.paths])  # name = array index
                self._stored[split][layer] = data.X[order]
        return {layer: X[index] for layer, X in self._stored[split].items()}


def accuracy(train_parts: list[np.ndarray], y_train: np.ndarray, test_parts: list[np.ndarray],
             y_test: np.ndarray) -> float:
    """Train on the rows of every part (image, mirror), score on the mean of the test parts."""
    X = np.vstack(train_parts)
    y = np.concatenate([y_train] * len(train_parts))
    return float(probe().fit(X, y).score(np.mean(test_parts, axis=0), y_test))


def _cat(feats: dict, layers: list[str]) -> np.ndarray:
    return np.hstack([feats[layer] for layer in layers])


def _flat(images: np.ndarray, flip: bool) -> np.ndarray:
    return (images[:, :, ::-1] if flip else images).reshape(len(images), -1) / 255.0


def evaluate(bank: FeatureBank, stage: str, rendering: str, flip: bool, layer_sets: dict) -> dict:
    """Mean accuracy over the draws of a stage ('dev' or 'test') for each layer set."""
    sp = splits()
    eval_split = "train" if stage == "dev" else "test"
    ytr, yev = bank.images["train"][1], bank.images[eval_split][1][sp[stage]]
    flips = (False, True) if flip else (False,)
    ev = [bank.get(eval_split, sp[stage], rendering, f) for f in flips]
    scores: dict = {name: [] for name in layer_sets}
    for draw in sp[f"{stage}_draws"]:
        tr = [bank.get("train", draw, rendering, f) for f in flips]
        for name, layers in layer_sets.items():
            scores[name].append(accuracy([_cat(t, layers) for t in tr], ytr[draw],
                                         [_cat(e, layers) for e in ev], yev))
    return {name: float(np.mean(s)) for name, s in scores.items()}


def raw_pixels(bank: FeatureBank, stage: str, flip: bool) -> float:
    sp = splits()
    eval_split = "train" if stage == "dev" else "test"
    images, labels = bank.images[eval_split]
    flips = (False, True) if flip else (False,)
    ev = [_flat(images[sp[stage]], f) for f in flips]
    tr_images, ytr = bank.images["train"]
    return float(np.mean([accuracy([_flat(tr_images[d], f) for f in flips], ytr[d], ev,
                                   labels[sp[stage]]) for d in sp[f"{stage}_draws"]]))


def run(workdir: Path) -> dict:
    """Choose on dev, then report every step on the test sample."""
    warnings.filterwarnings("ignore", category=UserWarning)
    bank = FeatureBank(workdir)
    configs = [(r, f) for r in RENDERINGS for f in (False, True) if (r, f) != ("plain", True)]
    dev = {f"{r} flip={f}": evaluate(bank, "dev", r, f, LAYER_SETS) for r, f in configs}
    dev["raw_pixels flip=False"] = raw_pixels(bank, "dev", False)
    dev["raw_pixels flip=True"] = raw_pixels(bank, "dev", True)
    best = max(((r, f, name) for r, f in configs for name in LAYER_SETS),
               key=lambda c: dev[f"{c[0]} flip={c[1]}"][c[2]])
    rendering, flip, layers = best
    test = {f"{r} flip={f}": evaluate(bank, "test", r, f, LAYER_SETS) for r, f in configs}
    raw = {"flip=False": raw_pixels(bank, "test", False), "flip=True": raw_pixels(bank, "test", True)}
    chosen = test[f"{rendering} flip={flip}"][layers]
    return {"protocol": "LinearProbe(normalize='l2', cv=5); choices on a 2,000-image dev split of "
                        "the training set; test: 3,000-image sample, mean of 3 draws",
            "chosen": {"model": MODEL, "rendering": rendering, "flip": flip, "layers": layers},
            "dev": dev, "test": test, "test_raw_pixels": raw,
            "test_accuracy": chosen, "test_raw_pixels_best": max(raw.values()),
            "gain_points": 100 * (chosen - max(raw.values()))}


if __name__ == "__main__":
    import argparse
    import json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="runs")
    print(json.dumps(run(Path(ap.parse_args().workdir)), indent=2))
