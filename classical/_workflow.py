"""Train, evaluate, sweep and few-shot on stored features: what the CLI and demo call.

Checks that can fail run before the long work: a baseline whose images are gone is reported
before any classifier is fitted.
"""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from featurebank.classical._features import (
    LabelledFeatures,
    labelled_only,
    load_features,
    open_store,
)
from featurebank.classical._model import TrainedClassifier, check_images, raw_pixels
from featurebank.classical._options import AUTO, CLASSIFIERS, UNSEEN, TrainOptions
from featurebank.classical._probe import LinearProbe, k_shot_indices
from featurebank.classical._report import (
    metrics,
    plot_confusion,
    plot_fewshot,
    plot_sweep,
)
from featurebank.errors import FeaturebankError
from featurebank.options import Interval, Options, check_value, renamed_keyword
from featurebank.paths import check_folder, write_json


def train(store, layers=None, classifier: str = AUTO, shots: int | None = None,
          holdout: float = 0.0, baseline: bool = True, random_state: int = 0,
          exclude: Iterable[str] = ()) -> TrainedClassifier:
    """Fit a probe on a store's labelled rows (optionally k per class, minus a held-out part).

    With ``baseline``, a raw-pixel classifier is fitted on the same images, re-read from the
    paths the store holds; missing images are reported before anything is fitted. The
    parameters are those of :class:`~featurebank.classical.TrainOptions` (checked there).
    ``classifier="auto"`` chooses the kind and its C (k for knn) by successive halving with
    5-fold cross-validation on the training rows (``info["auto"]`` keeps every candidate's
    score); the baseline then uses the chosen kind.
    Rows whose content key is in ``exclude`` (:func:`read_exclusions`, ``--exclude``) are left
    out; those of the store are recorded in the classifier, and :func:`evaluate` skips them.
    """
    TrainOptions(layers=layers, classifier=classifier, shots=shots, holdout=holdout,
                 baseline=baseline, random_state=random_state)
    data = labelled_only(load_features(store, layers), f"store {store}")
    data, excluded = _without(data, frozenset(exclude))
    if holdout:
        idx, _ = train_test_split(np.arange(len(data.y)), test_size=holdout, stratify=data.y,
                                  random_state=random_state)
        data = _take(data, np.sort(idx))
    if shots:
        data = _take(data, k_shot_indices(data.y, shots, random_state))
    if baseline:
        check_images(data.paths, f"store {store}")
    info: dict = {"classifier": classifier, "shots": shots, "n_train": int(len(data.y))}
    Cs = None
    if classifier == AUTO:
        classifier, Cs, info["auto"] = _auto(data.X, data.y, random_state)
        info.update(classifier=classifier, chosen_by="auto")
    probe = _quiet_fit(LinearProbe(classifier=classifier, Cs=Cs, random_state=random_state),
                       data.X, data.y)
    base = None
    if baseline:  # the same kind, its C chosen on the pixels
        base = _quiet_fit(LinearProbe(classifier=classifier, random_state=random_state),
                          raw_pixels(data.paths), data.y)
    info.update(C=probe.C_, val_scores={str(k): v for k, v in probe.val_scores_.items()},
                excluded=len(excluded))
    return TrainedClassifier(probe, data.specs, [str(c) for c in probe.classes_], set(data.keys),
                             base, info, excluded)


def _without(data: LabelledFeatures, exclude: frozenset[str]) -> tuple[LabelledFeatures, set[str]]:
    """``data`` less the rows whose content key is excluded, and the keys left out."""
    if not exclude:
        return data, set()
    drop = np.array([k in exclude for k in data.keys], dtype=bool)
    if drop.all():
        raise FeaturebankError(f"exclude leaves out all {len(drop)} labelled rows; nothing "
                               "is left to train on")
    return _take(data, np.flatnonzero(~drop)), set(data.keys[drop])


def _auto(X, y, random_state: int) -> tuple[str, tuple[float] | None, dict]:
    """The kind and C chosen by successive halving on cross-validation of the training rows,
    with the evidence a saved model keeps (each candidate's last round). A class with a single
    image leaves nothing to cross-validate: logistic regression then, as before ``auto``."""
    from featurebank.classical.selection import choose_classifier

    if np.unique(y, return_counts=True)[1].min() < 2:
        return "logreg", None, {"fallback": "a class has one image: nothing to cross-validate"}
    best, result = choose_classifier(X, y, random_state=random_state)
    evidence = [{"classifier": c.classifier, "C": c.C, "n": n, "cv_accuracy": m, "cv_std": sd}
                for c in result.ranking() for n, m, sd in [result.last(c)]]
    return best.classifier, (best.C,), {"folds": 5, "candidates": evidence}


def _quiet_fit(probe: LinearProbe, X, y) -> LinearProbe:
    # scikit-learn's convergence and metric warnings are not the user's to read: the probe's
    # validation scores say how good the fit is.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return probe.fit(X, y)


def _take(d: LabelledFeatures, idx) -> LabelledFeatures:
    return LabelledFeatures(d.X[idx], d.y[idx], d.keys[idx], d.paths[idx], d.specs)


def features_title(specs) -> str:
    """Every feature set a classifier reads, for titles: ``model:a/avg + model:b/avg``."""
    return " + ".join(s.describe() for s in specs)


def evaluate(classifier: TrainedClassifier, store, report: str | Path | None = None,
             baseline: bool = True, unseen: str = "error", *,
             report_dir: str | Path | None = None) -> dict:
    """Accuracy and more on the store's labelled rows the classifier was not trained on.

    Parameters
    ----------
    classifier : TrainedClassifier or TunedClassifier
        A :func:`featurebank.predict.load_classifier` result. A tuned network reads its own
        ``logits`` (embed the images with ``model=TUNED.onnx, layers=['logits']``); it does not
        record its training images, so the result notes that they cannot be left out.
    store : path or FeatureStore
    report : path, optional
        Write ``metrics.json`` and confusion matrices (PNG) there (``--report``; the former
        keyword ``report_dir`` still works, with a ``DeprecationWarning``).
    baseline : bool
        Score the raw-pixel baseline too (re-reads the images); missing images are an error
        that names them, before anything is scored.
    unseen : {'error', 'wrong'}
        Labels in the store that the classifier never saw: an error naming them, or
        (``'wrong'``) scored as wrong predictions and listed under ``unseen_labels``.
    """
    check_value("unseen", unseen, Options(UNSEEN), owner="evaluate")
    report = renamed_keyword("evaluate", "report_dir", "report", report_dir, report)
    if report:
        check_folder(report)  # before anything is scored
    data = labelled_only(load_features(store, fingerprints=classifier.fingerprints, wanted=classifier.specs),
                         f"store {store}")
    classifier.check_specs(data.specs)
    excluded = classifier.excluded_keys
    known = classifier.trained_keys if classifier.trained_keys is not None else set()
    fresh = np.array([k not in known and k not in excluded for k in data.keys])
    skipped = int(sum(k in excluded for k in data.keys))
    if not fresh.any():
        raise FeaturebankError(f"every labelled image in {store} was used to train this "
                               "classifier; evaluate on another store or train with a holdout")
    data = _take(data, np.flatnonzero(fresh))
    new_labels = sorted(set(data.y) - set(classifier.classes))
    counts = {lab: int(np.sum(data.y == lab)) for lab in new_labels}
    if new_labels and unseen == "error":
        listed = ", ".join(f"{lab} ({n})" for lab, n in counts.items())
        raise FeaturebankError(
            f"store {store} has labels the classifier never saw: {listed}; it knows "
            f"{', '.join(classifier.classes)}. Check the folder (the same class names as in "
            "training?), or pass unseen='wrong' to score them as errors")
    use_baseline = baseline and classifier.baseline is not None
    if use_baseline:
        check_images(data.paths, f"store {store}")
    pred = classifier.predict(data.X, data.specs)
    labels = [*classifier.classes, *new_labels]
    result = metrics(data.y, pred, labels)
    result["model"] = [s.describe() for s in classifier.specs]
    if skipped:  # left out of training on purpose: neither trained on nor a fair test
        result["excluded_skipped"] = skipped
    if new_labels:
        result["unseen_labels"] = counts
        result["note"] = (f"{sum(counts.values())} images of labels the classifier never saw "
                          f"({', '.join(new_labels)}) are counted as wrong")
    if classifier.trained_keys is None:
        result["note"] = " ".join([result.get("note", ""), "the classifier does not record "
                                   "which images trained it: this store must hold none of "
                                   "them"]).strip()
    if use_baseline:
        base_pred = classifier.baseline.predict(raw_pixels(data.paths))
        result["raw_pixel_baseline_accuracy"] = metrics(data.y, base_pred, labels)["accuracy"]
        result["gain_over_raw_pixels"] = result["accuracy"] - result["raw_pixel_baseline_accuracy"]
    if report:
        out = Path(report)
        out.mkdir(exist_ok=True)
        write_json(result, out / "metrics.json")
        title = textwrap.fill(f"{features_title(classifier.specs)} - accuracy {result['accuracy']:.3f}",
                              70)
        plot_confusion(data.y, pred, labels, out / "confusion.png", title)
        if use_baseline:
            plot_confusion(data.y, base_pred, labels, out / "confusion_raw_pixels.png",
                           f"raw pixels - accuracy {result['raw_pixel_baseline_accuracy']:.3f}")
    return result


@lru_cache(maxsize=8)
def _layer_costs(model: str, digest: str) -> dict[str, tuple[int, float | None]]:
    """Depth (catalogue position) and FLOPs share of each layer of a model, read once per model
    (the ONNX is ~20 MB): a registry model from the export cache, any other (adopted, tuned)
    found by its weights digest."""
    from featurebank.export import (
        ensure_exported,
        find_model_by_digest,
        get_model_entry,
        read_onnx_metadata,
    )

    try:
        get_model_entry(model)
        path = ensure_exported(model)
    except FeaturebankError:  # not in the registry: adopted or fine-tuned, found by content
        path, _ = find_model_by_digest(digest)
    layers = read_onnx_metadata(path).layers
    return {la.name: (i, la.flops_share) for i, la in enumerate(layers)}


def _depth_cost(spec) -> tuple[int | None, float | None]:
    try:
        return _layer_costs(spec.model.model, spec.model.weights_sha256).get(spec.layer,
                                                                              (None, None))
    except Exception:  # foreign or unavailable model: no depth, no cost
        return None, None


def _by_depth(sets) -> list:
    """Feature sets shallow to deep (catalogue order); unknown depths last, by layer name."""
    def key(s):
        depth, _ = _depth_cost(s.spec)
        return (depth is None, depth or 0, s.spec.layer, s.fingerprint)
    return sorted(sets, key=key)


def sweep(store, test=None, classifier: str = "logreg", holdout: float = 0.25,
          concat: bool = True, report=None, random_state: int = 0, *, test_store=None,
          report_dir=None) -> list[dict]:
    """Accuracy of the same probe on every feature set of a store (and their concatenation).

    Rows come shallow to deep (then the concatenations of the deepest two and of all sets), so
    the cost grows along the table and the plot. ``test``: a held-out store scored instead of a
    ``holdout`` split; ``report``: a folder for ``sweep.json`` and ``sweep.png`` (the former
    keywords ``test_store`` and ``report_dir`` still work, with a ``DeprecationWarning``).
    """
    test = renamed_keyword("sweep", "test_store", "test", test_store, test)
    report = renamed_keyword("sweep", "report_dir", "report", report_dir, report)
    if report:
        check_folder(report)
    TrainOptions(classifier=classifier, random_state=random_state)
    # one kind for every row: 'auto' would choose per row and compare unlike probes
    check_value("classifier", classifier, Options(CLASSIFIERS), owner="sweep")
    if test is None:  # scored on a split: it must hold images
        check_value("holdout", holdout, Interval(float, 0, 1, "neither"), owner="sweep")
    sets = _by_depth(open_store(store).feature_sets())
    if not sets:
        raise FeaturebankError(f"store {store} holds no feature set")
    candidates = [[s.fingerprint] for s in sets]
    if concat and len(sets) > 1:
        candidates.append([s.fingerprint for s in sets[-2:]])
        if len(sets) > 2:
            candidates.append([s.fingerprint for s in sets])
    rows = []
    for fps in candidates:
        data = labelled_only(load_features(store, fingerprints=fps), f"store {store}")
        if test is not None:
            tr = data
            te = labelled_only(load_features(test, fingerprints=fps, wanted=data.specs,
                                             wanted_by=f"the sweep of {store}"), f"store {test}")
        else:
            i_tr, i_te = train_test_split(np.arange(len(data.y)), test_size=holdout,
                                          stratify=data.y, random_state=random_state)
            tr, te = _take(data, i_tr), _take(data, i_te)
        probe = _quiet_fit(LinearProbe(classifier=classifier, random_state=random_state), tr.X, tr.y)
        costs = [c for c in (_depth_cost(s)[1] for s in data.specs) if c is not None]
        rows.append({"layer": "+".join(s.layer for s in data.specs), "dim": int(data.X.shape[1]),
                     "accuracy": float(probe.score(te.X, te.y)), "C": probe.C_,
                     "flops_share": max(costs) if len(costs) == len(data.specs) else None,
                     "fingerprints": fps})
    if report:
        out = Path(report)
        out.mkdir(exist_ok=True)
        write_json({"rows": rows}, out / "sweep.json")
        plot_sweep(rows, out / "sweep.png", f"layer sweep ({classifier})")
    return rows


def fewshot_curve(train_data: LabelledFeatures, test_data: LabelledFeatures, shots=(1, 2, 5, 10, 20),
                  pixels: bool = True, random_state: int = 0, report_path=None) -> dict:
    """Accuracy with k labelled images per class, features vs raw pixels."""
    curves: dict[str, list] = {"features": [], "raw pixels": []}
    if pixels:
        check_images([*train_data.paths, *test_data.paths], "few-shot curve")
    px_test = raw_pixels(test_data.paths) if pixels else None
    for k in shots:
        idx = k_shot_indices(train_data.y, k, random_state)
        probe = _quiet_fit(LinearProbe(random_state=random_state), train_data.X[idx], train_data.y[idx])
        curves["features"].append((k, float(probe.score(test_data.X, test_data.y))))
        if pixels:
            base = _quiet_fit(LinearProbe(random_state=random_state),
                              raw_pixels(train_data.paths[idx]), train_data.y[idx])
            curves["raw pixels"].append((k, float(base.score(px_test, test_data.y))))
    if not pixels:
        curves.pop("raw pixels")
    if report_path:
        plot_fewshot(curves, Path(report_path))
    return curves
