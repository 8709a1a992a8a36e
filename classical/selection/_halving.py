"""Successive halving across feature sets and classifiers, on cross-validation of TRAIN only.

Jamieson and Talwalkar (2016), as in scikit-learn's ``HalvingGridSearchCV``: every candidate is
cross-validated on a small stratified part of the training rows, the best ``1/factor`` of them
go on to a part ``factor`` times larger, until the last round uses every row. scikit-learn's
version searches the parameters of one estimator on one X; here each candidate brings its own
feature matrix (a backbone's cut and pooling), so the rounds are written on scikit-learn's CV
primitives (``StratifiedKFold``, ``cross_val_score``). Every round's parts are nested (the
first n rows of one stratified order), so a survivor is never judged on fewer rows than before.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.model_selection import StratifiedKFold, cross_val_score
from threadpoolctl import threadpool_limits

from featurebank.classical._probe import DEFAULT_CS, LinearProbe
from featurebank.errors import FeaturebankError


@dataclass(frozen=True)
class Candidate:
    """One configuration halving compares: a feature matrix (by name), a classifier kind and
    its regularisation (C, or k for ``knn``)."""

    features: str
    classifier: str
    C: float

    @property
    def name(self) -> str:
        reg = "k" if self.classifier == "knn" else "C"
        return f"{self.features} | {self.classifier} {reg}={self.C:g}"

    def estimator(self, random_state: int = 0) -> LinearProbe:
        return LinearProbe(self.classifier, Cs=(self.C,), random_state=random_state)


@dataclass
class HalvingResult:
    """Each candidate's cross-validation record per round it reached, and the winner."""

    candidates: list[Candidate]
    #: per candidate: [(n_rows, mean accuracy, std across folds), ...] for the rounds it ran
    history: dict[Candidate, list[tuple[int, float, float]]] = field(default_factory=dict)
    n_rows: int = 0
    factor: int = 3
    #: candidates left out of a round, and why: a larger C of a saturated linear SVM
    skipped: dict[Candidate, str] = field(default_factory=dict)

    def ranking(self) -> list[Candidate]:
        """Best first: the furthest round reached, then its mean accuracy, then the smaller
        spread, then the order the candidates were given in (earlier: simpler or higher-scored)."""
        order = {c: i for i, c in enumerate(self.candidates)}
        ran = [c for c in self.candidates if self.history[c]]  # a skipped one may have none
        return sorted(ran, key=lambda c: (-len(self.history[c]),
                                                      -self.history[c][-1][1],
                                                      self.history[c][-1][2], order[c]))

    @property
    def best(self) -> Candidate:
        return self.ranking()[0]

    def last(self, c: Candidate) -> tuple[int, float, float]:
        return self.history[c][-1]


#: kinds whose score stops changing once C is large enough: with more dimensions than rows
#: (a backbone's 1280 on a few hundred images) the classes are linearly separable, LinearSVC
#: approaches the hard-margin solution, and a larger C fits nearly the same hyperplane (and
#: takes longest: about 60 % of halving's time on Fashion-MNIST, profiled). When the folds
#: score exactly as at the next smaller C, the larger C are skipped for that round.
SATURATING = frozenset({"linear-svm"})


def default_candidates(features: Sequence[str], classifiers: Sequence[str]) -> list[Candidate]:
    """Every feature set with every classifier kind and each of its default C (or k) values."""
    return [Candidate(f, kind, float(C)) for f in features for kind in classifiers
            for C in DEFAULT_CS[kind]]


def stratified_order(y: np.ndarray, random_state: int = 0) -> np.ndarray:
    """A row order whose every prefix holds the classes in their overall proportions (as
    nearly as counts allow): shuffled within each class, then interleaved by rank fraction."""
    rng = np.random.default_rng(random_state)
    position = np.empty(len(y))
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        rank = rng.permutation(len(idx))
        position[idx] = (rank + rng.random(len(idx))) / len(idx)
    return np.argsort(position, kind="stable")


def successive_halving(matrices: Mapping[str, np.ndarray], y: np.ndarray,
                       candidates: Sequence[Candidate], *, factor: int = 3, folds: int = 5,
                       min_rows: int | None = None, random_state: int = 0,
                       progress: Callable[[str], None] | None = None,
                       names: Mapping[str, str] | None = None) -> HalvingResult:
    """Cross-validate candidates on growing stratified parts of the rows, keeping the best.

    Parameters
    ----------
    matrices : mapping of str to array (n_samples, n_features)
        Feature matrices on the same rows (the same images, in the order of ``y``).
    y : array (n_samples,)
        Labels.
    candidates : sequence of Candidate
        What to compare; ``Candidate.features`` names a matrix.
    factor : int
        Each round keeps ``ceil(n / factor)`` candidates on ``factor`` times more rows.
    folds : int
        Stratified folds per evaluation (capped at the smallest class count of the part).
    min_rows : int, optional
        Rows of the first round (default: the full rows divided by ``factor`` once per round
        needed, and at least ``2 * folds`` per class).
    random_state : int
        Seeds the row order and the folds.
    progress : callable, optional
        Called with one line per round.
    names : mapping, optional
        Matrix name -> what the progress lines call it.

    Returns
    -------
    HalvingResult
    """
    y = np.asarray(y)
    n = len(y)
    missing = sorted({c.features for c in candidates} - set(matrices))
    if missing:
        raise FeaturebankError(f"successive halving: no feature matrix named {missing}")
    if not candidates:
        raise FeaturebankError("successive halving: no candidate to compare")
    if factor < 2:
        raise FeaturebankError(f"successive halving: factor must be >= 2, got {factor}")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2 or counts.min() < 2:
        raise FeaturebankError("successive halving needs at least 2 classes with 2 images each; "
                               f"got {dict(zip(classes.tolist(), counts.tolist(), strict=True))}")
    # rounds so that the last one, on every row, compares at most `factor` candidates
    rounds = max(1, math.ceil(math.log(len(candidates), factor) - 1e-9))
    # two images per class in every fold's held-out part: with one, a round's scores are too
    # noisy to drop candidates on (measured: benchmarks/results/compare.json, digits)
    floor = min(n, 2 * folds * len(classes))
    first = min_rows or max(floor, n // factor ** (rounds - 1))
    order = stratified_order(y, random_state)
    result = HalvingResult(list(candidates), {c: [] for c in candidates}, n, factor)
    alive = list(candidates)
    for r in range(rounds):
        rows = n if r == rounds - 1 else min(n, first * factor ** r)
        part = np.sort(order[:rows])
        yp = y[part]
        k = int(min(folds, np.unique(yp, return_counts=True)[1].min()))
        splits = StratifiedKFold(max(k, 2), shuffle=True, random_state=random_state)
        below: dict[tuple[str, str], np.ndarray] = {}  # the fold scores at the C just below
        for c in sorted(alive, key=lambda c: (c.features, c.classifier, c.C)):
            group = (c.features, c.classifier)
            if group in below and below[group].size == 0:
                result.skipped[c] = f"saturated on {rows} rows"
                continue
            # one BLAS/OpenMP thread per fit: these fits are small, and several threads each
            # on a shared machine made logistic regression 20-50x slower (measured on 2 cores)
            with warnings.catch_warnings(), threadpool_limits(1):
                warnings.simplefilter("ignore")  # convergence notes: the CV score says it
                scores = cross_val_score(c.estimator(random_state), matrices[c.features][part],
                                         yp, cv=splits, error_score="raise")
            result.history[c].append((rows, float(scores.mean()), float(scores.std())))
            if c.classifier in SATURATING and group in below and np.array_equal(below[group],
                                                                               scores):
                below[group] = np.empty(0)  # a larger C would score the same: skip the rest
            else:
                below[group] = scores
        alive = [c for c in alive if c not in result.skipped]
        if progress:
            best = max(alive, key=lambda c: result.history[c][-1][1])
            progress(f"halving round {r + 1}/{rounds}: {len(alive)} candidates on {rows} images, "
                     f"best {(names or {}).get(best.features, best.features)} "
                     f"{best.name.split(' | ')[1]} at {result.history[best][-1][1]:.4f}")
        if rows == n:  # more rounds on the same rows would only repeat these scores
            break
        keep = max(1, math.ceil(len(alive) / factor))
        alive = [c for c in result.ranking() if c in alive][:keep]
    return result


def choose_classifier(X: np.ndarray, y: np.ndarray, classifiers: Sequence[str] | None = None, *,
                      folds: int = 5, factor: int = 3,
                      random_state: int = 0) -> tuple[Candidate, HalvingResult]:
    """The classifier kind and its C (or k) chosen by successive halving with cross-validation
    on ``(X, y)`` alone: what ``featurebank train --classifier auto`` fits."""
    from featurebank.classical._options import CLASSIFIERS

    kinds = tuple(classifiers or CLASSIFIERS)
    result = successive_halving({"X": X}, y, default_candidates(["X"], kinds), factor=factor,
                                folds=folds, random_state=random_state)
    return result.best, result
