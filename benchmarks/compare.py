"""``featurebank compare`` against the exhaustive baseline, on several labelled image sets.

    python -m benchmarks.compare [--train 200] [--test 300] [--datasets fashion-mnist digits textures]

Per data set: ``compare`` (LogME ranking, successive halving on 5-fold CV of TRAIN, TEST read
once) and the exhaustive baseline (every feature set x every classifier kind x every C
cross-validated, the best CV figure chosen). Each side's embedding is counted on its side.
Reported: the TEST accuracy of each side's choice,
the best TEST figure any feature set reaches (each with its own CV-chosen classifier), the wall
time ratio, and Kendall's tau between LogME (on all TRAIN rows) and CV accuracy over every
feature set. ``compare`` screens (``CompareOptions.screen``): every backbone embeds a slice of
TRAIN, and only those holding the LogME shortlist embed the rest; the baseline embeds all of
TRAIN with every backbone in its own work folder, timed on its side.
Backbones: EfficientNet-Lite0/1/2 (registry) and Lite0 exported at 160 px as an ONNX file (the
file form of a backbone).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks._common import markdown, write_result

CUTS = ("blocks.11", "blocks.13", "blocks.15", "head")
FOLDS = 5


def _textures(n_train: int, n_test: int):
    """scikit-image's brick, grass, gravel and moon photos as 4 texture classes: 64 px crops
    (rotated by multiples of 90 degrees) from the upper half for TRAIN, the lower half for TEST,
    so no pixel is in both."""
    from skimage import data

    rng = np.random.default_rng(0)
    classes = ("brick", "grass", "gravel", "moon")
    out = {}
    for split, n, rows in (("train", n_train, (0, 192)), ("test", n_test, (256, 448))):
        images, labels = [], []
        for label, name in enumerate(classes):
            photo = getattr(data, name)()
            for _ in range(n // len(classes)):
                r, c = rng.integers(*rows), rng.integers(0, photo.shape[1] - 64)
                images.append(np.rot90(photo[r:r + 64, c:c + 64], rng.integers(4)))
                labels.append(label)
        out[split] = (np.stack(images), np.array(labels))
    return out, list(classes)


def _dataset(name: str, n_train: int, n_test: int):
    from featurebank.datasets import (
        FASHION_CLASSES,
        load_digits_images,
        load_fashion_mnist,
        subsample,
    )

    if name == "textures":
        return _textures(n_train, n_test)
    if name == "fashion-mnist":
        tr, te = load_fashion_mnist("train"), load_fashion_mnist("test")
        classes = FASHION_CLASSES
    else:
        from sklearn.model_selection import train_test_split

        X, y = load_digits_images()
        a, b = train_test_split(np.arange(len(y)), test_size=0.5, stratify=y, random_state=0)
        tr, te = (X[a], y[a]), (X[b], y[b])
        classes = None
    i, j = subsample(tr[1], n_train), subsample(te[1], n_test)
    return {"train": (tr[0][i], tr[1][i]), "test": (te[0][j], te[1][j])}, classes


def _exhaustive(result, train_root: Path, work: Path, test_root: Path, seed: int) -> dict:
    """Every feature set x kind x C by 5-fold CV on all of TRAIN; the test figure of every set
    with its CV-best classifier (oracle: TEST is read for every set here).

    Its own work folder: every backbone embeds all of TRAIN (timed), as it would without
    ``compare``'s screening, and LogME ranks every set on all rows (the two best cuts of each
    pass concatenated, as ``compare`` does)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from threadpoolctl import threadpool_limits

    from featurebank import embed_collection
    from featurebank.classical import load_features
    from featurebank.classical.selection import default_candidates
    from featurebank.compare._select import rank_by_logme
    from featurebank.compare._stores import embed_passes, load_matrices

    opts = result.options
    start = time.perf_counter()
    pairs = list(dict.fromkeys((s.backbone, s.pool) for s in result.sets))
    passes = embed_passes(str(train_root), pairs, work, opts.batch_size, False)
    t_embed = time.perf_counter() - start
    mats = load_matrices(passes)
    rows, t_cv = [], 0.0
    for s in rank_by_logme(passes, mats, opts.concat):
        X, y = mats.X[s.key], mats.y
        start = time.perf_counter()
        scores = {}
        folds = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
        for c in default_candidates(["X"], opts.classifiers):
            with warnings.catch_warnings(), threadpool_limits(1):
                warnings.simplefilter("ignore")
                cv = cross_val_score(c.estimator(seed), X, y, cv=folds)
            scores[c] = (float(cv.mean()), float(cv.std()))
        best = max(scores, key=lambda c: scores[c][0])
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore")
            fitted = best.estimator(seed).fit(X, y)
        t_cv += time.perf_counter() - start
        test_store = work / f"oracle-test-{s.backbone.label}-{s.pool}.h5"
        embed_collection([str(test_root)], test_store, s.backbone.model, layers=s.cuts,
                         pool=s.pool, progress=False)
        test = load_features(test_store, fingerprints=[sp.fingerprint() for sp in s.specs])
        rows.append({"feature_set": s.name, "logme": s.logme, "cv_accuracy": scores[best][0],
                     "cv_std": scores[best][1], "classifier": best.classifier, "C": best.C,
                     "test_accuracy": float(fitted.score(test.X, test.y))})
    return {"rows": rows, "cv_seconds": t_cv, "embed_seconds": t_embed}


def _compare(folders: dict, models: list[str], seed: int, screen: int, work: Path,
             output: Path):
    """One ``compare`` run, timed: the result, its seconds without TEST, its embedding."""
    from featurebank.compare import CompareOptions, compare

    options = CompareOptions(models=tuple(models), layers=CUTS, seed=seed, screen=screen)
    started = time.perf_counter()
    result = compare(folders["train"], folders["test"], options=options, work_dir=work,
                     output=output, progress=False)
    wall = time.perf_counter() - started
    # TEST is scored once on either side: left out of both
    compare_s = wall - result.seconds.get("test", 0.0)
    # the screening slice (every pass) and the rest of TRAIN (the kept passes)
    embed_s = result.seconds.get("screen", 0.0) + result.seconds["embed"]
    return result, compare_s, embed_s


def _figures(result, compare_s: float, embed_s: float) -> dict:
    return {"chosen": result.chosen.name, "classifier": result.selection.classifier,
            "C": result.selection.C, "cv_accuracy": result.chosen.cv["accuracy"],
            "test_accuracy": result.test["accuracy"], "test_interval": result.test["interval"],
            "seconds": round(compare_s, 1), "selection_seconds": round(compare_s - embed_s, 1),
            "steps_seconds": {k: round(v, 1) for k, v in result.seconds.items()},
            "halving_skipped": sum(1 for h in result.selection.history if h.get("skipped"))}


def _screened(result, compare_s: float, embed_s: float, chosen_base: dict,
              baseline_s: float) -> dict:
    """The figures of a run with screening, against the same baseline."""
    sc = result.screening.to_dict() if result.screening else None
    return {**_figures(result, compare_s, embed_s),
            "screening": sc and {
                "images": sc["images"], "per_class": sc["per_class"],
                "seconds": round(sc["seconds"], 1), "kept_passes": len(sc["kept_passes"]),
                "screened_out_passes": len(sc["screened_out_passes"]),
                "screened_out_sets": len(sc["screened_out_sets"]),
                "exhaustive_chosen_screened_out": any(
                    chosen_base["feature_set"].startswith(f"{s.backbone.label} ")
                    for s in result.screening.dropped)},
            "test_gap_points": round(100 * (chosen_base["test_accuracy"]
                                            - result.test["accuracy"]), 2),
            "wall_time_ratio": round(baseline_s / compare_s, 2)}


def run_one(name: str, n_train: int, n_test: int, models: list[str], root: Path,
            seed: int, screen: int) -> dict:
    from scipy.stats import kendalltau, weightedtau

    from featurebank.compare import CompareOptions
    from featurebank.datasets import write_image_folder

    splits, classes = _dataset(name, n_train, n_test)
    folders = {}
    for split, (X, y) in splits.items():
        folders[split] = write_image_folder(X, y, root / name / split, classes)
    default = CompareOptions().screen
    result, compare_s, embed_s = _compare(folders, models, seed, default, root / name / "work",
                                          root / name / "chosen.joblib")
    other = None
    if screen != default:
        other = _compare(folders, models, seed, screen, root / name / "work-screen",
                         root / name / "chosen-screen.joblib")
    exhaustive_work = root / name / "work-exhaustive"
    exhaustive_work.mkdir()
    base = _exhaustive(result, folders["train"], exhaustive_work, folders["test"], seed)
    rows = base["rows"]
    chosen_base = max(rows, key=lambda r: r["cv_accuracy"])
    logme = [r["logme"] for r in rows]
    cv = [r["cv_accuracy"] for r in rows]
    baseline_s = base["embed_seconds"] + base["cv_seconds"]
    out = {
        "dataset": name, "train_images": int(len(splits["train"][1])),
        "test_images": int(len(splits["test"][1])), "classes": int(len(set(splits["train"][1]))),
        "feature_sets": len(rows),
        "candidates_per_set": len(result.selection.history) // max(
            1, sum(1 for s in result.sets if s.cv)),
        "compare": {**_figures(result, compare_s, embed_s), "screen": default},
        "exhaustive": {"chosen": chosen_base["feature_set"],
                       "classifier": chosen_base["classifier"], "C": chosen_base["C"],
                       "cv_accuracy": chosen_base["cv_accuracy"],
                       "test_accuracy": chosen_base["test_accuracy"],
                       "seconds": round(baseline_s, 1),
                       "selection_seconds": round(base["cv_seconds"], 1),
                       "embed_seconds": round(base["embed_seconds"], 1)},
        "embed_seconds": round(embed_s, 1),
        "best_test_any_feature_set": max(r["test_accuracy"] for r in rows),
        "test_gap_points": round(100 * (chosen_base["test_accuracy"]
                                        - result.test["accuracy"]), 2),
        "wall_time_ratio": round(baseline_s / compare_s, 2),
        "selection_time_ratio": round(base["cv_seconds"] / max(compare_s - embed_s, 1e-9), 2),
        "kendall_tau_logme_cv": round(float(kendalltau(logme, cv).statistic), 3),
        "weighted_tau_logme_cv": round(float(weightedtau(logme, cv).statistic), 3),
        # compare with --screen SCREEN (when it is not the default), against the same baseline
        "with_screen": (_screened(*other, chosen_base, baseline_s) | {"screen": screen}
                        if other else None),
        "rows": rows,
    }
    print(markdown([{k: out[k] for k in ("dataset", "test_gap_points", "wall_time_ratio",
                                         "kendall_tau_logme_cv", "best_test_any_feature_set")}],
                   ["dataset", "test_gap_points", "wall_time_ratio", "kendall_tau_logme_cv",
                    "best_test_any_feature_set"]), flush=True)
    if other:
        print(f"with --screen {screen}:", {k: out["with_screen"][k] for k in (
            "test_gap_points", "wall_time_ratio", "screening")}, flush=True)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=200, help="TRAIN images per data set")
    ap.add_argument("--test", type=int, default=300, help="TEST images per data set")
    ap.add_argument("--datasets", nargs="+", default=["fashion-mnist", "digits"],
                    choices=["fashion-mnist", "digits", "textures"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--screen", type=int, default=5,
                    help="also run compare with this --screen, when it is not the default")
    ap.add_argument("--out", default="compare")
    args = ap.parse_args(argv)
    from featurebank.export import ensure_exported

    models = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
              str(ensure_exported("efficientnet_lite0", input_size=160))]
    root = Path(tempfile.mkdtemp(prefix="fb-compare-bench-"))
    try:
        results = [run_one(name, args.train, args.test, models, root, args.seed, args.screen)
                   for name in args.datasets]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_result(args.out, {
        "backbones": ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
                      "efficientnet_lite0 at 160 px (exported ONNX file)"],
        "cuts": list(CUTS), "folds": FOLDS, "seed": args.seed, "screen": args.screen,
        "datasets": results,
        "mean": {k: round(float(np.mean([r[k] for r in results])), 3)
                 for k in ("test_gap_points", "wall_time_ratio", "selection_time_ratio",
                           "kendall_tau_logme_cv")},
        "goals": {"test_gap_points": "<= 1", "wall_time_ratio": ">= 5"}})


if __name__ == "__main__":
    main()
