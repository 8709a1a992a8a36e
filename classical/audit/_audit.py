"""``audit_stores``: one pass over a training store (and test stores) that lists exact and near
duplicates, test images leaked from training, likely label errors and outliers. Near
duplicates are proposed by the features (each row's nearest neighbours) and accepted by the
features' threshold and ratio test, or confirmed by the images' pixel signatures (_pixels.py).

Everything that can be refused is checked first (the stores, their feature sets, the labels,
the report folder), so a refused audit writes nothing."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from featurebank.classical._features import open_store
from featurebank.classical.audit._duplicates import (
    BY_FEATURES,
    BY_PIXELS,
    FOUND_BY,
    exact_duplicates,
    found_by,
    near_groups,
    near_mask,
    near_pairs,
    outlier_ranking,
)
from featurebank.classical.audit._labels import label_issues, out_of_fold_probabilities
from featurebank.classical.audit._options import AUDIT_EXACT_ROWS, AuditOptions
from featurebank.classical.audit._pixels import Signatures
from featurebank.errors import FeaturebankError, OptionError
from featurebank.extractor import (
    FeatureStore,
    NeighbourIndex,
    SearchOptions,
    exact_search,
    self_neighbours,
)
from featurebank.options import renamed_keyword
from featurebank.paths import check_folder

log = logging.getLogger(__name__)
__all__ = ["AuditReport", "audit_stores"]


@dataclass
class _Side:
    """One store of the audit: its feature set, keys, and (path, label) by key."""

    name: str
    store: FeatureStore
    fingerprint: str
    rows: int
    keys: np.ndarray = field(repr=False)
    table: dict[str, tuple[str, str]] = field(repr=False)
    signatures: Signatures | None = field(default=None, repr=False)

    def row(self, i: int, **extra) -> dict:
        key = str(self.keys[i])
        path, label = self.table.get(key, ("", ""))
        return {"store": self.name, "row": int(i), "key": key, "path": path, "label": label, **extra}


@dataclass
class AuditReport:
    """What an audit found (every list is ranked, worst first); :meth:`to_dict` is the JSON."""

    train: str
    tests: list[str]
    spec: str
    fingerprint: str
    options: dict
    rows: dict[str, int]
    exact_duplicates: list[dict] = field(default_factory=list)
    near_duplicates: list[dict] = field(default_factory=list)
    leaks: list[dict] = field(default_factory=list)
    label_issues: list[dict] = field(default_factory=list)
    outliers: list[dict] = field(default_factory=list)
    label_sample: int | None = None
    pixel_check: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["counts"] = {k: len(getattr(self, k)) for k in
                         ("exact_duplicates", "near_duplicates", "leaks", "label_issues", "outliers")}
        return out

    def exclusions(self) -> list[str]:
        """Training content keys worth leaving out of training: suspect labels, training
        copies of leaked test images, and every near-duplicate but the first of a group."""
        keys = [r["key"] for r in self.label_issues]
        keys += [r["train"]["key"] for r in self.leaks]
        keys += [m["key"] for g in self.near_duplicates if g["store"] == self.train
                 for m in g["members"][1:]]
        return list(dict.fromkeys(keys))


def _side(name: str, store: FeatureStore, fingerprint: str, pixels: bool) -> _Side:
    keys = store.set_keys(fingerprint).astype(str)
    side = _Side(name, store, fingerprint, len(keys), keys, store.image_table())
    if pixels:
        side.signatures = Signatures(name, lambda i: side.table.get(str(keys[i]), ("", ""))[0],
                                     len(keys))
    return side


def _pixel_matches(a: _Side, b: _Side, rows_a: np.ndarray, rows_b: np.ndarray,
                   similarity: np.ndarray, options: AuditOptions) -> tuple[np.ndarray, np.ndarray]:
    """Which neighbours ``rows_b`` (``[n, k]`` rows of ``b``) of ``rows_a`` (``[n]`` rows of
    ``a``) the pixel check confirms, and their signature correlations (NaN: not a candidate,
    or an image without a signature). Candidates: feature similarity >= ``pixel_floor``."""
    pix = np.full(rows_b.shape, np.nan, np.float32)
    if a.signatures is None or b.signatures is None:
        return np.zeros(rows_b.shape, bool), pix
    cand = (similarity >= options.pixel_floor) & (rows_b >= 0)
    i, col = np.nonzero(cand)
    a.signatures.ensure(rows_a[i])
    b.signatures.ensure(rows_b[i, col])
    pix[i, col] = a.signatures.similarity(rows_a[i], b.signatures, rows_b[i, col])
    return np.nan_to_num(pix, nan=-1.0) >= options.pixel_threshold, pix


def _resolve(train: FeatureStore, tests: list[FeatureStore], layer: str | None):
    info = train.resolve(layer, parameter="layer")
    if len(info.row_shape) != 1:
        raise FeaturebankError(f"feature set {info.fingerprint} of {train.path} holds unpooled "
                               f"maps; audit a pooled set (layer=LAYER)")
    for t in tests:
        have = {s.fingerprint for s in t.feature_sets()}
        got = info if info.fingerprint in have else t.resolve(layer, parameter="layer")
        if got.fingerprint != info.fingerprint:
            raise FeaturebankError(
                f"test store {t.path} was cut differently from training store {train.path}: "
                f"{got.spec.describe()} there, {info.spec.describe()} here (another layer, "
                "pooling or model); embed both with the same model and layer")
    return info


def _check_labels(side: _Side, options: AuditOptions) -> np.ndarray:
    labels = np.array([side.table.get(k, ("", ""))[1] for k in side.keys], dtype=object)
    if options.label_check and not (labels != "").any():
        raise FeaturebankError(f"training store {side.store.path} has no labels, so its labels "
                               "cannot be checked; embed a folder whose sub-folders are the "
                               "classes, or pass label_check=False")
    return labels.astype(str)


def _self_neighbours(side: _Side, options: AuditOptions):
    method = SearchOptions(index=options.index, block_rows=options.block_rows,
                           index_above=AUDIT_EXACT_ROWS).method(
        side.rows, side.store.resolve(side.fingerprint).dim)
    log.info("%s: %d nearest neighbours of %d rows (%s)", side.name, options.neighbours,
             side.rows, method)
    if method == "exact":
        return self_neighbours(side.store, side.fingerprint, options.neighbours,
                               block_rows=options.block_rows), None
    index = NeighbourIndex(side.store, side.fingerprint, kind=method, block_rows=options.block_rows)
    index.update()
    return index.self_neighbours(options.neighbours), index


def _near_and_outliers(side: _Side, options: AuditOptions, report: AuditReport):
    found, index = _self_neighbours(side, options)
    confirmed, _ = _pixel_matches(side, side, np.arange(side.rows), found.rows, found.similarity,
                                  options)
    pairs = near_pairs(found.rows, found.similarity, options.near_threshold, options.near_ratio,
                       options.near_reference, pixels=confirmed)
    for group, weakest in near_groups(side.rows, pairs):
        report.near_duplicates.append({
            "store": side.name, "size": len(group), "similarity": round(weakest, 6),
            "found_by": found_by(pairs[np.isin(pairs[:, 0], group), 3]),
            "members": [side.row(int(r)) for r in group]})
    if side.rows > options.neighbours:
        rows, dist = outlier_ranking(found.similarity, options.outliers, options.outlier_fence)
        report.outliers += [side.row(int(r), distance=round(float(d), 6)) for r, d in zip(rows, dist, strict=True)]
    return index


def _leaks(train: _Side, test: _Side, index, options: AuditOptions, report: AuditReport) -> None:
    """One leak per test row: its nearest training row when the features accept it (threshold
    and ratio test), else the candidate the pixel check confirms with the highest correlation."""
    from featurebank.extractor.search import iter_blocks

    k = options.near_reference if options.near_ratio < 1.0 else 1
    if options.pixel_check:
        k = max(k, options.neighbours)
    for first, X, _ in iter_blocks(test.store, test.fingerprint, options.block_rows):
        found = (index.search(X, k, keys=False) if index is not None else
                 exact_search(train.store, train.fingerprint, X, k, block_rows=options.block_rows))
        by_features = near_mask(found.similarity, options.near_threshold, options.near_ratio,
                                options.near_reference)[:, 0]
        confirmed, pix = _pixel_matches(test, train, first + np.arange(len(X)), found.rows,
                                        found.similarity, options)
        for i in np.flatnonzero(by_features | confirmed.any(axis=1)):
            col = 0 if by_features[i] else int(np.nanargmax(np.where(confirmed[i], pix[i], np.nan)))
            code = BY_FEATURES * bool(by_features[i]) + BY_PIXELS * bool(confirmed[i, col])
            report.leaks.append({"similarity": round(float(found.similarity[i, col]), 6),
                                 "pixel_similarity": _rounded(pix[i, col]),
                                 "found_by": FOUND_BY[code],
                                 "test": test.row(first + int(i)),
                                 "train": train.row(int(found.rows[i, col]))})
    report.leaks.sort(key=lambda r: -r["similarity"])


def _rounded(value: float) -> float | None:
    return None if np.isnan(value) else round(float(value), 6)


def _pixel_summary(sides: list[_Side], options: AuditOptions) -> dict:
    """What the pixel check read: signatures computed, images it could not read."""
    if not options.pixel_check:
        return {"on": False}
    sigs = [s.signatures for s in sides if s.signatures is not None]
    unreadable = [u for s in sigs for u in s.unreadable]
    if unreadable:
        log.warning("pixel check: %d image(s) could not be read; their pairs were judged by the "
                    "features alone (report: pixel_check.unreadable)", len(unreadable))
    return {"on": True, "signatures": sum(s.computed for s in sigs),
            "unreadable_count": len(unreadable), "unreadable": unreadable}


def _label_issues(side: _Side, labels: np.ndarray, options: AuditOptions, report: AuditReport) -> None:
    rows = np.flatnonzero(labels != "")
    if options.label_sample and options.label_sample < len(rows):
        from sklearn.model_selection import train_test_split

        rows, _ = train_test_split(rows, train_size=options.label_sample, stratify=labels[rows],
                                   random_state=options.seed)
        rows = np.sort(rows)
        report.label_sample = int(len(rows))
    log.info("%s: out-of-fold probabilities of %d labelled rows (%d folds)", side.name,
             len(rows), options.folds)
    X = side.store.rows(side.fingerprint, rows)
    classes, proba = out_of_fold_probabilities(X, labels[rows], folds=options.folds, seed=options.seed,
                                               c=options.probe_c)
    issues = label_issues(np.searchsorted(classes, labels[rows]), proba, options.label_rule)
    report.label_issues = [side.row(int(rows[r]), given=str(classes[g]), suggested=str(classes[s]),
                                    score=round(float(sc), 6))
                           for r, g, s, sc in zip(issues.rows, issues.given, issues.suggested,
                                                  issues.score, strict=True)]


def audit_stores(train: str | Path, tests=(), layer: str | None = None, *,
                 options: AuditOptions | None = None, report: str | Path | None = None,
                 report_dir: str | Path | None = None) -> AuditReport:
    """Audit a training store and test stores at one cut.

    Parameters
    ----------
    train : path
        The training store (its labels are checked).
    tests : paths
        Held-out stores: leaks are their rows with a near-duplicate in ``train``.
    layer : str, optional
        The cut (layer name or fingerprint) of both; needed when a store holds several sets.
    options : AuditOptions
    report : path, optional
        Write ``report.json``, a CSV per finding, ``exclude.txt`` and ``contact_sheet.png``
        there (``--report``; the former keyword ``report_dir`` still works, with a
        ``DeprecationWarning``).

    Raises
    ------
    FeaturebankError
        Before any file is written: a missing store, stores cut at different layers or by
        different models, an unlabelled training store with label checks on, too few images
        of a class for the folds, a report folder that cannot be written.
    """
    options = options or AuditOptions()
    folder = renamed_keyword("audit_stores", "report_dir", "report", report_dir, report)
    if folder is not None:
        check_folder(folder, what="report")
    tests = [str(t) for t in tests]
    train_store, test_stores = open_store(train), [open_store(t) for t in tests]
    info = _resolve(train_store, test_stores, layer)
    fp = info.fingerprint
    main = _side(str(train), train_store, fp, options.pixel_check)
    labels = _check_labels(main, options)
    if options.label_check:
        counts = np.unique(labels[labels != ""], return_counts=True)[1]
        if counts.min() < options.folds:
            raise OptionError("folds", f"is {options.folds}, but a class of training store "
                              f"{train} has {counts.min()} labelled images; lower it or pass "
                              "label_check=False", owner="AuditOptions")
    sides = [_side(t, s, fp, options.pixel_check) for t, s in zip(tests, test_stores, strict=True)]
    found = AuditReport(str(train), tests, info.spec.describe(), fp, asdict(options),
                        {s.name: s.rows for s in [main, *sides]})
    found.exact_duplicates = exact_duplicates({s.name: s.store.path_table() for s in [main, *sides]})
    index = _near_and_outliers(main, options, found)
    for side in sides:
        _near_and_outliers(side, options, found)
        _leaks(main, side, index, options, found)
    found.pixel_check = _pixel_summary([main, *sides], options)
    if options.label_check:
        _label_issues(main, labels, options, found)
    if folder is not None:
        from featurebank.classical.audit._report import write_report

        write_report(found, folder, options)
    return found
