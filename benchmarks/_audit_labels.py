"""The label part of ``benchmarks/audit.py``: the probe's regularisation calibrated on a split of
another seed with its own flipped labels, and our rules beside cleanlab's on the benchmark's
out-of-fold probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np

LABEL_LAYER = "head"
PROBE_GRID = (0.12, 0.025, 0.0075, 0.0025, 0.00075)  # C per 1000 training rows


def image_name(path: str) -> str:
    return "/".join(Path(path).parts[-2:])


def _scores(mask: np.ndarray, truth: np.ndarray) -> dict:
    hits = int((mask & truth).sum())
    return {"flagged": int(mask.sum()), "recall": round(hits / int(truth.sum()), 4),
            "precision": round(hits / max(1, int(mask.sum())), 4)}


def _mask(rows, n: int) -> np.ndarray:
    mask = np.zeros(n, bool)
    mask[rows] = True
    return mask


def calibrate_probe(split: dict, flip: float = 0.05, seed: int = 11) -> dict:
    """On the calibration split's training store (no labels flipped there), flip ``flip`` of
    the labels here and score the ranked rule at each probe regularisation: the default is the
    one of best F1."""
    from featurebank.classical.audit._labels import label_issues, out_of_fold_probabilities
    from featurebank.extractor import FeatureStore

    feats = FeatureStore(split["root"] / "train.h5").read(LABEL_LAYER)
    classes, y = np.unique(feats.y, return_inverse=True)
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(y), int(round(flip * len(y))), replace=False)
    y[flipped] = (y[flipped] + rng.integers(1, len(classes), len(flipped))) % len(classes)
    truth = _mask(flipped, len(y))
    grid = {}
    for c in PROBE_GRID:
        _, proba = out_of_fold_probabilities(feats.X, classes[y], c=c)
        grid[str(c)] = {rule: _scores(_mask(label_issues(y, proba, rule).rows, len(y)), truth)
                        for rule in ("ranked", "confident_learning")}
        grid[str(c)]["accuracy"] = round(float((proba.argmax(1) == y).mean()), 4)
    f1 = {c: 2 / (1 / g["ranked"]["recall"] + 1 / g["ranked"]["precision"])
          for c, g in grid.items() if g["ranked"]["recall"] and g["ranked"]["precision"]}
    return {"rows": len(y), "flipped": len(flipped), "layer": LABEL_LAYER,
            "best_c": float(max(f1, key=f1.get)), "by_c": grid}


def side_by_side(split: dict, c: float) -> dict:
    """Our two rules and cleanlab's (where installed) on the same out-of-fold probabilities."""
    from featurebank.classical.audit._labels import label_issues, out_of_fold_probabilities
    from featurebank.extractor import FeatureStore

    feats = FeatureStore(split["root"] / "train.h5").read(LABEL_LAYER)
    classes, proba = out_of_fold_probabilities(feats.X, feats.y, c=c)
    labels = np.searchsorted(classes, feats.y)
    flipped = {image_name(p) for p in split["flipped"]}
    truth = np.array([image_name(p) in flipped for p in feats.paths])
    flags = {f"featurebank {rule}": label_issues(labels, proba, rule).rows
             for rule in ("ranked", "confident_learning")}
    try:
        from cleanlab.count import num_label_issues
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError:
        return {"probe_c": c, "cleanlab": "not installed",
                **{k: _scores(_mask(v, len(labels)), truth) for k, v in flags.items()}}
    for rule in ("confident_learning", "prune_by_noise_rate"):
        flags[f"cleanlab {rule}"] = find_label_issues(labels, proba, filter_by=rule)
    count = num_label_issues(labels, proba, estimation_method="off_diagonal")
    scores = get_label_quality_scores(labels, proba, method="self_confidence")
    flags["cleanlab num_label_issues + self_confidence"] = np.argsort(scores, kind="stable")[:count]
    return {"probe_c": c, **{k: _scores(_mask(v, len(labels)) if v.dtype != bool else v, truth)
                             for k, v in flags.items()}}


def ranked_flags(work: Path) -> dict:
    """Precision and recall along the flags ranked by score (1 - probability of the given
    label), read back from the benchmark's report: what a shorter, ranked list trades. A
    training file's true class is known from its Fashion-MNIST index (``tr{i}.png``)."""
    import csv

    from featurebank.datasets import FASHION_CLASSES, load_fashion_mnist

    _, ytr = load_fashion_mnist("train")
    root = work / "benchmark"
    files = list((root / "train").glob("*/*.png"))
    flipped = {str(p) for p in files if p.parent.name != FASHION_CLASSES[ytr[int(p.stem[2:])]]}
    with open(root / "report-labels" / "label_issues.csv") as f:
        ranked = [row["path"] in flipped for row in csv.DictReader(f)]
    hits = np.cumsum(ranked)
    recall, precision = hits / len(flipped), hits / np.arange(1, len(ranked) + 1)
    at = {}
    for goal in (0.5, 0.6, 0.7, 0.8):
        reach = np.flatnonzero(recall >= goal)
        at[f"recall_{goal}"] = ({"flags": int(reach[0] + 1), "precision": round(float(precision[reach[0]]), 4)}
                                if len(reach) else None)
    best = np.flatnonzero(precision >= 0.6)
    return {"flipped": len(flipped), "flags": len(ranked), "at_recall": at,
            "recall_at_precision_0.6": round(float(recall[best[-1]]), 4) if len(best) else 0.0,
            "top_500": {"recall": round(float(recall[min(499, len(ranked) - 1)]), 4),
                        "precision": round(float(precision[min(499, len(ranked) - 1)]), 4)}}
