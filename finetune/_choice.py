"""An honest choice between the fine-tuned top and the frozen linear probe (torch).

The run trains once on its training split, the best epoch chosen on its validation split. Which
model it answers with is then decided on images that neither model was fitted or selected on:

* **below** :data:`MIN_VALIDATION` validation images, by *cross-fitting*: the images are cut
  into :data:`FOLDS` stratified folds; for each fold the whole procedure (probe with its C,
  fine-tuning with its best epoch, both chosen on an inner validation split of the other folds)
  runs on the other folds and predicts the held-out one. Every image then has one held-out
  prediction of each model;
* from :data:`MIN_VALIDATION` validation images on, on the validation split itself (the best
  epoch is chosen on it too: a mild optimism that this many images keep small).

The rule (docs/finetune.md): with ``d_i = [fine-tuned right] - [probe right]`` on those n
images, ``mean = (a - b) / n`` (``a``: images only the fine-tuned model gets right, ``b``: only
the probe), ``se = sd(d) / sqrt(n)`` (sample standard deviation), and the 95 % interval
``mean -/+ 1.96 se``. The fine-tuned model is chosen only if the lower bound is above 0;
otherwise the answer is the probe.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from featurebank.errors import FeaturebankError
from featurebank.finetune._data import stratified_split
from featurebank.finetune._top import TopNet
from featurebank.finetune._train import (
    Checkpoint,
    Fit,
    Setup,
    fit,
    new_top,
    predict_logits,
)

log = logging.getLogger(__name__)
#: validation images from which one split decides; below, the choice is cross-fitted
MIN_VALIDATION = 2000
FOLDS = 5
Z95 = 1.959964  # two-sided 95 % normal quantile


def paired_difference(finetuned_right: np.ndarray, probe_right: np.ndarray) -> dict[str, Any]:
    """Fine-tuned minus probe accuracy, paired per image, with its 95 % interval."""
    a = int(np.sum(finetuned_right & ~probe_right))
    b = int(np.sum(probe_right & ~finetuned_right))
    n = len(finetuned_right)
    mean = (a - b) / n
    var = (a + b - n * mean * mean) / (n - 1) if n > 1 else math.inf  # sum d^2 = a + b
    half = Z95 * math.sqrt(max(var, 0.0) / n)
    return {"images": n, "finetuned_only_right": a, "probe_only_right": b,
            "finetuned_accuracy": float(np.mean(finetuned_right)),
            "probe_accuracy": float(np.mean(probe_right)),
            "difference": mean, "ci95": [mean - half, mean + half]}


def decide(pairs: dict[str, Any], method: str) -> dict[str, Any]:
    """The rule applied to :func:`paired_difference`'s figures: which model, and why."""
    low, high = pairs["ci95"]
    chosen = "finetuned" if low > 0 else "probe"
    figures = (f"fine-tuned minus probe {100 * pairs['difference']:+.2f} points, 95 % interval "
               f"[{100 * low:+.2f}, {100 * high:+.2f}] on {pairs['images']} images, {method}")
    verdict = ("the lower bound is above 0" if chosen == "finetuned" else
               "fine-tuning is worse" if high < 0 else "fine-tuning is not better beyond noise")
    reason = f"{figures}: {verdict}"
    return {"chosen": chosen, "method": method, "reason": reason, **pairs}


@dataclass
class Trained:
    """What training leaves: the main fit, the probe as a top (the frozen layers and the
    probe's head), the choice between them, and the cross-fitted folds behind it."""

    main: Fit
    probe_top: TopNet
    choice: dict[str, Any]
    base_sha256: str
    folds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def chosen_top(self) -> TopNet:
        return self.main.top if self.choice["chosen"] == "finetuned" else self.probe_top


def train_top(setup: Setup, base_sha: str, train: np.ndarray, val: np.ndarray,
              checkpoint: Checkpoint) -> Trained:
    """The main fit (checkpointed per epoch), the choice, and the top the run answers with."""
    main = fit(setup, train, val, setup.opts.seed, checkpoint)
    folds: list[dict[str, Any]] = []
    if len(val) < MIN_VALIDATION:
        folds = cross_fit(setup, checkpoint, main)
        rows = np.concatenate([f["held"] for f in folds])
        ft = np.concatenate([f["finetuned_right"] for f in folds]).astype(bool)
        pr = np.concatenate([f["probe_right"] for f in folds]).astype(bool)
        choice = decide(paired_difference(ft, pr), f"cross-fitted over {len(folds)} folds")
        choice["per_fold"] = [{"images": len(f["held"]), "best_epoch": f["best_epoch"],
                               "difference": float(np.mean(f["finetuned_right"])
                                                   - np.mean(f["probe_right"]))} for f in folds]
        assert len(np.unique(rows)) == len(setup.y)  # every image held out exactly once
    else:
        ft = predict_logits(main.top, setup.maps.X, setup.maps.shape, val).argmax(1) == setup.y[val]
        choice = decide(paired_difference(ft, _probe_right(setup, main.probe_head, val)),
                        "the validation split")
    log.info("chosen: %s (%s)", choice["chosen"], choice["reason"])
    return Trained(main, new_top(setup, setup.opts.seed, main.probe_head), choice, base_sha,
                   folds)


def _probe_right(setup: Setup, head: dict[str, torch.Tensor], rows: np.ndarray) -> np.ndarray:
    W, b = head["weight"].numpy(), head["bias"].numpy()
    return (setup.feats[rows] @ W.T + b).argmax(1) == setup.y[rows]


def cross_fit(setup: Setup, checkpoint: Checkpoint, main: Fit) -> list[dict[str, Any]]:
    """Held-out correctness of both models on every image, fold by fold (each finished fold
    is saved in the checkpoint, so a resumed run skips it)."""
    from sklearn.model_selection import StratifiedKFold

    opts, y = setup.opts, setup.y
    k = int(min(FOLDS, np.bincount(y).min()))
    if k < 2:
        raise FeaturebankError("cross-fitting needs two images of every class")
    done = list((checkpoint.load() or {}).get("folds", []))
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=opts.seed)
    for i, (rest, held) in enumerate(splitter.split(np.zeros(len(y)), y)):
        if i < len(done):
            continue
        seed = opts.seed + 1000 * (i + 1)
        setup_i, inner_train, inner_val = _inner(setup, rest, seed, main)
        fold = fit(setup_i, inner_train, inner_val, seed)
        right = predict_logits(fold.top, setup.maps.X, setup.maps.shape, held).argmax(1) == y[held]
        done.append({"held": held.tolist(), "finetuned_right": right.tolist(),
                     "probe_right": _probe_right(setup, fold.probe_head, held).tolist(),
                     "best_epoch": fold.best_epoch, "probe_C": fold.probe["C"]})
        checkpoint.save(folds=done)
        log.info("fold %d/%d: fine-tuned %.4f, probe %.4f on %d held-out images", i + 1, k,
                 np.mean(right), np.mean(done[-1]["probe_right"]), len(held))
    return [{**f, "held": np.array(f["held"]), "finetuned_right": np.array(f["finetuned_right"]),
             "probe_right": np.array(f["probe_right"])} for f in done]


def _inner(setup: Setup, rest: np.ndarray, seed: int, main: Fit
           ) -> tuple[Setup, np.ndarray, np.ndarray]:
    """A fold's own training and validation rows. When the fold's images are too few for a
    stratified inner split, it trains on all of them with the main run's probe C and best
    epoch count instead (fixed, so nothing is chosen on the held-out fold)."""
    try:
        tr, val = stratified_split(setup.maps.labels[rest], setup.opts.val_size, seed)
        return setup, rest[tr], rest[val]
    except (FeaturebankError, ValueError):
        fixed = setup.opts.replace(epochs=max(main.best_epoch, 1), probe_c=main.probe["C"],
                                   patience=0)
        return replace(setup, opts=fixed), rest, np.array([], dtype=np.int64)
