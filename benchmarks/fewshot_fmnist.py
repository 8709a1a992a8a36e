"""Fashion-MNIST with 10 labelled images per class: frozen Lite0 features vs raw pixels.

Protocol -- no choice looks at the test set:

* **test**: a 3,000-image random sample of the official test set (``default_rng(0)``), scored
  after training on 3 draws of 10 images per class from the official training set
  (``k_shot_indices`` seeds 0, 1, 2); the figure is the mean over the draws.
* **dev** (all choices): 2,000 images of the *training* set (``default_rng(1000)``), scored after
  training on 3 draws (seeds 100-102) from the other 58,000 training images.
* **protocols**, tried in three steps, each keeping the dev winner of the one before:
  1. cuts (:data:`LAYER_SETS`) with the views of the previous benchmark's winner (a dark garment
     on white in a 4 px frame, and its mirror); then the view sets of
     :mod:`benchmarks._fewshot_views` (plain, mirrored, crops = the garment shifted by 2 px in
     its frame, scales = 2/4/7 px frames, all, the model at 160 or 288 px) with the winning
     cuts. A view set's views are extra training rows; a test image's features are the mean
     over its views. The cuts include ``pixels`` (the view's own pixels beside the features);
  2. with the winning views and cuts: the views averaged for training too (``mean``), and the
     classifiers of :data:`CLASSIFIERS`;
  3. fine-tuning (:mod:`benchmarks._fewshot_finetune`): ``featurebank.finetune`` on the 100
     images, which answers with the fine-tuned model only when its own rule says it pays.
  The chosen protocol is the best dev accuracy of all. Every protocol tried is reported with
  its dev and test accuracy.
* **classifiers** (C or alpha chosen by 5-fold cross-validation on the 100 training images,
  grouped by image so that an image's views never sit on both sides of a fold): rows
  L2-normalised and standardised, then L-BFGS logistic regression, the same with PCA whitening
  (90 % of the variance of the training rows), ridge, or nearest class mean on centred,
  L2-normalised rows (SimpleShot's CL2N, cosine; nothing to choose).
* **raw pixels** (28x28 grey / 255): every classifier, with and without mirrored rows; the gain
  is measured against the best raw-pixel *test* figure (the baseline is given every chance).

Features, fine-tuning maps and measured figures are cached in ``WORKDIR`` (a stopped run
resumes; delete ``WORKDIR/fewshot_cache/protocols.json`` after changing a protocol's code).

    python -m benchmarks.fewshot_fmnist [--work-dir runs] [--test-images 3000] [--no-finetune]

Called by ``benchmarks.transfer_extras``, which writes the JSON.
"""

from __future__ import annotations

import json
import warnings
from functools import cache
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
from sklearn.neighbors import NearestCentroid
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from threadpoolctl import threadpool_limits

from benchmarks._fewshot_views import MODEL, VIEW_SETS, FeatureBank
from featurebank.classical._probe import k_shot_indices
from featurebank.datasets import load_fashion_mnist

LAYER_SETS = {"blocks.13": ["blocks.13"], "blocks.15": ["blocks.15"], "head": ["head"],
              "blocks.10+blocks.13": ["blocks.10", "blocks.13"],
              "blocks.12+blocks.13+blocks.14": ["blocks.12", "blocks.13", "blocks.14"],
              "blocks.7+blocks.10+blocks.13": ["blocks.7", "blocks.10", "blocks.13"],
              "blocks.10+blocks.12+blocks.13+blocks.14+blocks.15":
                  ["blocks.10", "blocks.12", "blocks.13", "blocks.14", "blocks.15"],
              "blocks.13+blocks.15+head": ["blocks.13", "blocks.15", "head"],
              "blocks.10+blocks.13+pixels": ["blocks.10", "blocks.13", "pixels"]}
START_VIEWS = "inv-pad4 flip"  # the previous benchmark's dev winner
K, DRAWS = 10, 3
CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def classifier(name: str):
    """An unfitted classifier (with its inner grouped CV); fit with ``groups=``."""
    cv = StratifiedGroupKFold(5, shuffle=True, random_state=0)
    scale = [Normalizer("l2"), StandardScaler()]
    if name == "ncm-cosine":
        return make_pipeline(StandardScaler(with_std=False), Normalizer("l2"), NearestCentroid())
    if name == "ridge":
        return GridSearchCV(make_pipeline(*scale, RidgeClassifier()),
                            {"ridgeclassifier__alpha": [1e0, 1e1, 1e2, 1e3, 1e4]}, cv=cv,
                            n_jobs=2)
    if name == "logreg-pca-whiten":
        from sklearn.decomposition import PCA

        scale = [*scale, PCA(0.9, whiten=True, random_state=0)]
    elif name != "logreg":
        raise ValueError(f"unknown classifier {name!r}")
    return GridSearchCV(make_pipeline(*scale, LogisticRegression(max_iter=1000)),
                        {"logisticregression__C": list(CS)}, cv=cv, n_jobs=2)


CLASSIFIERS = ("logreg", "logreg-pca-whiten", "ridge", "ncm-cosine")


@cache
def splits(test_images: int = 3000) -> dict:
    """Index sets: the test sample and its training draws; the dev split and its draws."""
    _, ytr = load_fashion_mnist("train")
    dev = np.sort(np.random.default_rng(1000).permutation(len(ytr))[:2000])
    pool = np.setdiff1d(np.arange(len(ytr)), dev)
    return {"test": np.sort(np.random.default_rng(0).permutation(10000)[:3000][:test_images]),
            "test_draws": [k_shot_indices(ytr, K, s) for s in range(DRAWS)],
            "dev": dev,
            "dev_draws": [pool[k_shot_indices(ytr[pool], K, s)] for s in range(100, 100 + DRAWS)]}


def accuracy(train_views: list[np.ndarray], y_train: np.ndarray, eval_views: list[np.ndarray],
             y_eval: np.ndarray, name: str = "logreg", mode: str = "rows") -> float:
    """Train on every view's rows (``rows``) or on their mean (``mean``); score the mean of the
    evaluation images' views."""
    if mode == "mean":
        train_views = [np.mean(train_views, axis=0)]
    elif mode != "rows":
        raise ValueError(f"unknown mode {mode!r}")
    X = np.vstack(train_views)
    y = np.concatenate([y_train] * len(train_views))
    groups = np.tile(np.arange(len(y_train)), len(train_views))
    clf = classifier(name)
    # one BLAS thread per fit, the grid's fits two at a time: L-BFGS on a few hundred rows
    # loses more to the threads' synchronisation than it gains (4x slower on a busy machine)
    with threadpool_limits(1):
        clf.fit(X, y, **({"groups": groups} if isinstance(clf, GridSearchCV) else {}))
        return float(clf.score(np.mean(eval_views, axis=0), y_eval))


class Stage:
    """The images of a stage ('dev' or 'test'): its evaluation images and its draws."""

    def __init__(self, bank: FeatureBank, stage: str, test_images: int = 3000):
        sp = splits(test_images)
        self.bank, self.stage = bank, stage
        self.eval_split = "train" if stage == "dev" else "test"
        self.eval_index, self.draws = sp[stage], sp[f"{stage}_draws"]
        self.y_train = bank.images["train"][1]
        self.y_eval = bank.images[self.eval_split][1][self.eval_index]

    def score(self, views: list[str], layers: list[str], name: str = "logreg",
              mode: str = "rows") -> float:
        """Mean accuracy over the draws of one protocol."""
        def cat(split, index, view):
            feats = self.bank.get(split, index, view)
            return np.hstack([feats[layer] for layer in layers])

        ev = [cat(self.eval_split, self.eval_index, v) for v in views]
        return float(np.mean([accuracy([cat("train", d, v) for v in views], self.y_train[d], ev,
                                       self.y_eval, name, mode) for d in self.draws]))

    def raw_pixels(self, name: str, flip: bool) -> float:
        def flat(images, mirrored):
            return (images[:, :, ::-1] if mirrored else images).reshape(len(images), -1) / 255.0

        flips = (False, True) if flip else (False,)
        ev = [flat(self.bank.images[self.eval_split][0][self.eval_index], f) for f in flips]
        tr = self.bank.images["train"][0]
        return float(np.mean([accuracy([flat(tr[d], f) for f in flips], self.y_train[d], ev,
                                       self.y_eval, name) for d in self.draws]))


class Memo:
    """Figures already measured, in ``WORKDIR/fewshot_cache/protocols.json``: a run stopped
    part-way resumes without fitting again what it has."""

    def __init__(self, path: Path):
        self.path = path
        self.figures = json.loads(path.read_text()) if path.exists() else {}

    def get(self, key: dict, compute):
        name = json.dumps(key, sort_keys=True)
        if name not in self.figures:
            self.figures[name] = compute()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self.figures, indent=1))
            tmp.replace(self.path)
        return self.figures[name]


def _row(memo: Memo, dev: Stage, test: Stage, protocol: dict) -> dict:
    """One protocol's dev and test accuracy."""
    args = (VIEW_SETS[protocol["views"]], LAYER_SETS[protocol["layers"]], protocol["classifier"],
            protocol["mode"])
    key = {k: protocol[k] for k in ("views", "layers", "classifier", "mode")}
    return {**protocol, **{stage.stage: memo.get({**key, "stage": stage.stage,
                                                  "images": len(stage.eval_index)},
                                                 lambda s=stage: s.score(*args))
                           for stage in (dev, test)}}


def run(workdir: Path, test_images: int = 3000, finetune: bool = True) -> dict:
    """Choose on dev, step by step; report every protocol tried, on dev and on test."""
    warnings.filterwarnings("ignore", category=UserWarning)
    images = {s: load_fashion_mnist(s) for s in ("train", "test")}
    bank = FeatureBank(workdir, images)
    dev, test = Stage(bank, "dev", test_images), Stage(bank, "test", test_images)
    memo = Memo(workdir / "fewshot_cache" / "protocols.json")
    base = {"views": START_VIEWS, "classifier": "logreg", "mode": "rows"}
    tried = [_row(memo, dev, test, {**base, "step": "1 cuts", "layers": name}) for name in LAYER_SETS]
    layers = max(tried, key=lambda r: r["dev"])["layers"]
    tried += [_row(memo, dev, test, {**base, "step": "1 views", "views": views, "layers": layers})
              for views in VIEW_SETS if views != START_VIEWS]
    best = max(tried, key=lambda r: r["dev"])
    tried += [_row(memo, dev, test, {**best, "step": "2 classifier", "classifier": name, "mode": mode})
              for name in CLASSIFIERS for mode in ("rows", "mean")
              if (name, mode) != ("logreg", "rows") and (mode == "rows" or
                                                         len(VIEW_SETS[best["views"]]) > 1)]
    if finetune:
        from benchmarks._fewshot_finetune import FROM_LAYER, OPTIONS, ROW, finetune_stage

        row = dict(ROW)
        for stage in (dev, test):
            key = {"finetune": FROM_LAYER, "options": OPTIONS, "stage": stage.stage,
                   "images": len(stage.eval_index)}
            row.update(memo.get(key, lambda s=stage.stage: finetune_stage(
                workdir, images, splits(test_images), s)))
        tried.append(row)
    chosen = max(tried, key=lambda r: r["dev"])
    raw = {f"{name} flip={flip}": {stage.stage: memo.get(
        {"raw_pixels": name, "flip": flip, "stage": stage.stage, "images": len(stage.eval_index)},
        lambda s=stage, n=name, f=flip: s.raw_pixels(n, f)) for stage in (dev, test)}
        for name in CLASSIFIERS for flip in (False, True)}
    raw_best = max(r["test"] for r in raw.values())
    for row in tried:
        row["gain_points"] = 100 * (row["test"] - raw_best)
    return {"protocol": "choices on a 2,000-image dev split of the training set, step by step "
                        "(cuts, views, classifier, fine-tuning); test: a "
                        f"{len(test.eval_index):,}-image sample, mean of {DRAWS} draws; see "
                        "benchmarks/fewshot_fmnist.py",
            "model": MODEL, "chosen": chosen, "protocols": tried, "raw_pixels": raw,
            "test_accuracy": chosen["test"], "test_raw_pixels_best": raw_best,
            "gain_points": 100 * (chosen["test"] - raw_best)}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", default="runs")
    ap.add_argument("--test-images", type=int, default=3000)
    ap.add_argument("--no-finetune", action="store_true")
    a = ap.parse_args()
    print(json.dumps(run(Path(a.work_dir), a.test_images, not a.no_finetune), indent=2))
