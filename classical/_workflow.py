"""Train, evaluate, sweep and few-shot on stored features: what the CLI and demo call."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from featurebank.classical._features import LabelledFeatures, labelled_only, load_features
from featurebank.classical._model import TrainedModel, raw_pixels
from featurebank.classical._probe import LinearProbe, k_shot_indices
from featurebank.classical._report import (
    metrics,
    plot_confusion,
    plot_fewshot,
    plot_sweep,
    write_json,
)
from featurebank.extractor.store._store import FeatureStore
from sklearn.model_selection import train_test_split

from featurebank.errors import FeaturebankError


def train(store, layers=None, classifier: str = "logreg", shots: int | None = None,
          holdout: float = 0.0, baseline: bool = True, random_state: int = 0) -> TrainedModel:
    """Fit a probe on a store's labelled rows (optionally k per class, minus a held-out part)."""
    data = labelled_only(load_features(store, layers), f"store {store}")
    if holdout:
        idx, _ = train_test_split(np.arange(len(data.y)), test_size=holdout, stratify=data.y,
                                  random_state=random_state)
        data = _take(data, np.sort(idx))
    if shots:
        data = _take(data, k_shot_indices(data.y, shots, random_state))
    probe = LinearProbe(classifier=classifier, random_state=random_state).fit(data.X, data.y)
    base = None
    if baseline:
        base = LinearProbe(classifier=classifier, random_state=random_state)
        base.fit(raw_pixels(data.paths), data.y)
    return TrainedModel(probe, data.specs, [str(c) for c in probe.classes_], set(data.keys), base,
                        {"classifier": classifier, "shots": shots, "n_train": int(len(data.y)),
                         "C": probe.C_, "val_scores": {str(k): v for k, v in probe.val_scores_.items()}})


def _take(d: LabelledFeatures, idx) -> LabelledFeatures:
    return LabelledFeatures(d.X[idx], d.y[idx], d.keys[idx], d.paths[idx], d.specs)


def evaluate(model: TrainedModel, store, report_dir: str | Path | None = None) -> dict:
    """Accuracy and more on the store's labelled rows the model was not trained on."""
    data = labelled_only(load_features(store, fingerprints=model.fingerprints, wanted=model.specs), f"store {store}")
    model.check_specs(data.specs)
    fresh = np.array([k not in model.trained_keys for k in data.keys])
    if not fresh.any():
        raise FeaturebankError(f"every labelled image in {store} was used to train this model; "
                               "evaluate on another store or train with --holdout")
    data = _take(data, np.flatnonzero(fresh))
    pred = model.predict(data.X, data.specs)
    result = metrics(data.y, pred, model.classes)
    result["model"] = [s.describe() for s in model.specs]
    if model.baseline is not None:
        base_pred = model.baseline.predict(raw_pixels(data.paths))
        result["raw_pixel_baseline_accuracy"] = metrics(data.y, base_pred, model.classes)["accuracy"]
        result["gain_over_raw_pixels"] = result["accuracy"] - result["raw_pixel_baseline_accuracy"]
    if report_dir:
        out = Path(report_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(result, out / "metrics.json")
        plot_confusion(data.y, pred, model.classes, out / "confusion.png",
                       f"{model.specs[0].describe()} - accuracy {result['accuracy']:.3f}")
        if model.baseline is not None:
            plot_confusion(data.y, base_pred, model.classes, out / "confusion_raw_pixels.png",
                           f"raw pixels - accuracy {result['raw_pixel_baseline_accuracy']:.3f}")
    return result


@lru_cache(maxsize=8)
def _layer_costs(model: str) -> dict[str, float | None]:
    """Catalogue FLOPs shares of a registry model, read once per model (the ONNX is ~20 MB)."""
    from featurebank.export._cache import ensure_exported
    from featurebank.export._metadata import read_onnx_metadata

    return {la.name: la.flops_share for la in read_onnx_metadata(ensure_exported(model)).layers}


def _flops_share(spec) -> float | None:
    try:
        return _layer_costs(spec.model.model).get(spec.layer)
    except Exception:  # foreign or unavailable model: the cost column stays empty
        return None


def sweep(store, test_store=None, classifier: str = "logreg", holdout: float = 0.25,
          concat: bool = True, report_dir=None, random_state: int = 0) -> list[dict]:
    """Accuracy of the same probe on every feature set of a store (and their concatenation)."""
    sets = FeatureStore(store).feature_sets()
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
        if test_store is not None:
            test = labelled_only(load_features(test_store, fingerprints=fps), f"store {test_store}")
            tr, te = data, test
        else:
            i_tr, i_te = train_test_split(np.arange(len(data.y)), test_size=holdout,
                                          stratify=data.y, random_state=random_state)
            tr, te = _take(data, i_tr), _take(data, i_te)
        probe = LinearProbe(classifier=classifier, random_state=random_state).fit(tr.X, tr.y)
        costs = [_flops_share(s) for s in data.specs]
        rows.append({"layer": "+".join(s.layer for s in data.specs), "dim": int(data.X.shape[1]),
                     "accuracy": float(probe.score(te.X, te.y)), "C": probe.C_,
                     "flops_share": max(costs) if None not in costs else None,
                     "fingerprints": fps})
    if report_dir:
        out = Path(report_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json({"rows": rows}, out / "sweep.json")
        plot_sweep(rows, out / "sweep.png", f"layer sweep ({classifier})")
    return rows


def fewshot_curve(train_data: LabelledFeatures, test_data: LabelledFeatures, shots=(1, 2, 5, 10, 20),
                  pixels: bool = True, random_state: int = 0, report_path=None) -> dict:
    """Accuracy with k labelled images per class, features vs raw pixels."""
    curves: dict[str, list] = {"features": [], "raw pixels": []}
    px_test = raw_pixels(test_data.paths) if pixels else None
    for k in shots:
        idx = k_shot_indices(train_data.y, k, random_state)
        probe = LinearProbe(random_state=random_state).fit(train_data.X[idx], train_data.y[idx])
        curves["features"].append((k, float(probe.score(test_data.X, test_data.y))))
        if pixels:
            base = LinearProbe(random_state=random_state).fit(raw_pixels(train_data.paths[idx]),
                                                              train_data.y[idx])
            curves["raw pixels"].append((k, float(base.score(px_test, test_data.y))))
    if not pixels:
        curves.pop("raw pixels")
    if report_path:
        plot_fewshot(curves, Path(report_path))
    return curves
