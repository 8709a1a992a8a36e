"""Two transfer figures beside the full Fashion-MNIST run: 10-shot Fashion-MNIST and digits.

1. Fashion-MNIST with 10 labelled images per class vs raw pixels: see
   :mod:`benchmarks.fewshot_fmnist` (cuts, crops and mirrors averaged, classifiers and
   fine-tuning, each chosen on a dev split of the training set; test on a 3,000-image sample
   of the test set, 3 draws; every protocol tried is reported). Embeds what it needs, cached in
   ``WORKDIR/fewshot_cache``, ``fewshot_images`` and ``fewshot_maps``.
2. scikit-learn digits (all 1,797), 5-fold stratified CV (``StratifiedKFold(5, shuffle=True,
   random_state=0)``). Features: Lite0 cuts blocks.4+7+10+13 (avg-pooled, concatenated, 424-d).
   Candidates: rendering ``plain`` (white digit on black, the 8x8 scan upscaled by the model's
   bicubic resize) or ``inv-pad2`` (dark digit on white, 2 px white border, so the centre crop
   keeps the whole digit), each alone or concatenated with the 64 raw pixels / 255.
   *Nested selection*: inside each outer training fold, a 3-fold inner CV (fixed C = 0.1) picks the
   candidate; ``LinearProbe()`` then chooses C on a 20 % validation split of that training fold,
   refits on all of it and is scored on the outer test fold -- the test fold never takes part in
   a choice. The per-candidate 5-fold figures are reported too (what each step adds).

    python -m benchmarks.transfer_extras [--work-dir runs] [--only digits|fewshot]

Writes benchmarks/results/transfer_extras.json (the section(s) run are replaced, others kept).
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold, cross_val_score

from benchmarks._common import RESULTS, write_result
from featurebank.classical._probe import LinearProbe, cross_validate_probe
from featurebank.datasets import load_digits_images

OUT = RESULTS / "transfer_extras.json"
DIGIT_LAYERS = ["blocks.4", "blocks.7", "blocks.10", "blocks.13"]
DIGIT_RENDERINGS = ("plain", "inv-pad2")


def render_digits(images: np.ndarray, rendering: str) -> np.ndarray:
    if rendering == "inv-pad2":
        return np.pad(255 - images, ((0, 0), (2, 2), (2, 2)), constant_values=255)
    if rendering != "plain":
        raise ValueError(f"unknown rendering {rendering!r}")
    return images


def digit_candidates(images: np.ndarray) -> dict[str, np.ndarray]:
    """Feature matrices of every candidate representation (unsupervised: no label is used)."""
    from featurebank.extractor import Extractor

    extractor = Extractor(layers=DIGIT_LAYERS, batch_size=64)
    pixels = images.reshape(len(images), -1) / 255.0
    out = {}
    for rendering in DIGIT_RENDERINGS:
        feats = extractor.embed(list(render_digits(images, rendering)))
        F = np.hstack([feats[name] for name in DIGIT_LAYERS])
        out[rendering] = F
        out[f"{rendering}+pixels"] = np.hstack([F, pixels])
    return out


def nested_digits(cands: dict[str, np.ndarray], y: np.ndarray) -> tuple[list[float], list[str]]:
    """Outer 5-fold accuracies with the candidate picked by inner CV on each training fold."""
    outer = StratifiedKFold(5, shuffle=True, random_state=0)
    inner = StratifiedKFold(3, shuffle=True, random_state=1)
    scores, picks = [], []
    first = next(iter(cands.values()))
    for tr, te in outer.split(first, y):
        pick = max(cands, key=lambda c: cross_val_score(LinearProbe(Cs=(0.1,)), cands[c][tr], y[tr],
                                                        cv=inner).mean())
        probe = LinearProbe().fit(cands[pick][tr], y[tr])
        scores.append(float(probe.score(cands[pick][te], y[te])))
        picks.append(pick)
    return scores, picks


def digits() -> dict:
    images, y = load_digits_images()
    pixels = images.reshape(len(images), -1) / 255.0
    cands = digit_candidates(images)
    table = {"raw_pixels logreg": float(cross_validate_probe(LinearProbe(), pixels, y).mean()),
             "raw_pixels rbf-svm": float(cross_validate_probe(LinearProbe(classifier="rbf-svm"),
                                                              pixels, y).mean())}
    for name, X in cands.items():
        table[f"{name} logreg"] = float(cross_validate_probe(LinearProbe(), X, y).mean())
    scores, picks = nested_digits(cands, y)
    return {"layers": DIGIT_LAYERS, "per_candidate_5_fold": table,
            "nested_5_fold_accuracy": float(np.mean(scores)), "nested_fold_accuracies": scores,
            "nested_picks": picks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", default="runs")
    ap.add_argument("--only", choices=["digits", "fewshot"])
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    new = {}
    if args.only != "digits":
        from benchmarks.fewshot_fmnist import run

        new["fashion_mnist_10_shot"] = run(Path(args.work_dir))
    if args.only != "fewshot":
        new["digits_5_fold"] = digits()
    results = {**(json.loads(OUT.read_text()) if OUT.exists() else {}), **new}
    print(json.dumps(results, indent=2))
    write_result(OUT, results)


if __name__ == "__main__":
    main()
