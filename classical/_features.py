"""Stored features for classifiers: one or several layers, aligned by content key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurebank.errors import FeaturebankError
from featurebank.extractor.store import FeatureStore
from featurebank.spec import FeatureSpec


class SpecMismatchError(FeaturebankError):
    """Features of another spec than the classifier was trained on."""


def check_same_specs(expected: list[FeatureSpec], got: list[FeatureSpec], trained_on: str,
                     advice: str) -> None:
    """Raise :class:`SpecMismatchError` naming both spec lists unless their fingerprints agree.

    ``trained_on`` says what ``expected`` is ("the classifier was trained on features"),
    ``advice`` what to do instead."""
    want, have = [s.fingerprint() for s in expected], [s.fingerprint() for s in got]
    if have != want:
        mine = ", ".join(s.describe() for s in expected)
        theirs = ", ".join(s.describe() for s in got)
        raise SpecMismatchError(f"{trained_on} [{mine}] (fingerprints {want}) but got "
                                f"[{theirs}] ({have}); {advice}")


def open_store(path: str | Path) -> FeatureStore:
    """The feature store at ``path``, read-only; a folder of images is named as such (people
    give the folder they embedded instead of its store)."""
    if Path(path).is_dir():
        raise FeaturebankError(f"{path} is a folder, not a feature store; embed it first "
                               f"('featurebank embed {path} --store STORE.h5') and give the store")
    return FeatureStore(path)


@dataclass
class LabelledFeatures:
    X: np.ndarray
    y: np.ndarray
    keys: np.ndarray
    paths: np.ndarray
    specs: list[FeatureSpec]


def load_features(store: str | Path | FeatureStore, layers=None,
                  fingerprints: list[str] | None = None,
                  wanted: list[FeatureSpec] | None = None,
                  wanted_by: str = "the classifier") -> LabelledFeatures:
    """Features of one or several feature sets, concatenated column-wise on common keys.

    ``layers`` names feature sets by layer or fingerprint (default: the only one);
    ``fingerprints`` demands exact specs and raises :class:`SpecMismatchError` when the store
    lacks one of them (``wanted``, the specs ``wanted_by`` needs, are named in that message).
    """
    fs = store if isinstance(store, FeatureStore) else open_store(store)
    if fingerprints is not None:
        have = {s.fingerprint: s for s in fs.feature_sets()}
        missing = [fp for fp in fingerprints if fp not in have]
        if missing:
            listed = "; ".join(f"{fp} = {s.spec.describe()}" for fp, s in have.items()) or "none"
            need = ", ".join(s.describe() for s in wanted or [] if s.fingerprint() in missing)
            spec = f" ({wanted_by} needs {need})" if need else ""
            raise SpecMismatchError(
                f"store {fs.path} has no feature set with fingerprint {', '.join(missing)}"
                f"{spec}; it has: {listed}. Embed the images with that spec first (same model, "
                "weights, layer and pooling).")
    names: list[str | None] = (list(fingerprints) if fingerprints is not None
                               else list(layers) if layers else [None])  # None: the only set
    parts = [fs.read(name, parameter="layers") for name in names]
    first = parts[0]
    if len(parts) == 1:
        return LabelledFeatures(first.X, first.y, first.keys, first.paths, [first.spec])
    common = set(first.keys)
    for p in parts[1:]:
        common &= set(p.keys)
    order = [i for i, k in enumerate(first.keys) if k in common]
    keys = first.keys[order]
    blocks = []
    for p in parts:
        pos = {k: i for i, k in enumerate(p.keys)}
        blocks.append(p.X[[pos[k] for k in keys]])
    return LabelledFeatures(np.hstack(blocks), first.y[order], keys, first.paths[order],
                            [p.spec for p in parts])


def labelled_only(data: LabelledFeatures, what: str) -> LabelledFeatures:
    """Rows with a label; rows without one can't train or score, and are dropped with a note."""
    mask = data.y != ""
    if not mask.any():
        raise FeaturebankError(
            f"{what}: no row has a label; embed a folder whose sub-folders are the class names "
            "(ImageFolder layout) or a list file with 'path,label' lines")
    return LabelledFeatures(data.X[mask], data.y[mask], data.keys[mask], data.paths[mask], data.specs)
