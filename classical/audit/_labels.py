"""Likely label errors by confident learning (Northcutt, Jiang and Chuang, JAIR 2021) on
out-of-fold probabilities from scikit-learn.

The rule (cleanlab's ``filter_by='confident_learning'``, written here because cleanlab is
AGPL-3.0 and never a dependency): the threshold of class j is the mean probability of j over
the rows *labelled* j. A row is counted for class j when its probability of j reaches that
threshold (the most probable of several such classes). The rows counted off the diagonal of
this confident joint (labelled i, confidently j != i) are the label issues, except those whose
most probable class is the given one. Issues are ranked by self-confidence (the probability of
the given label), least confident first; ``tests/test_audit.py`` checks this against cleanlab.

:func:`ranked_label_issues` keeps the rule's *count* (cleanlab's ``num_label_issues``,
``'off_diagonal'``) as the estimated number of wrong labels and flags that many rows of lowest
self-confidence over all rows (cleanlab's ``get_label_quality_scores``, ``'self_confidence'``):
the pairing cleanlab's documentation recommends. The rule's own rows miss wrong labels for
which no other class is confident (an ambiguous garment given a wrong label); the ranking
catches them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featurebank.classical.audit._options import LABEL_RULES, PROBE_C
from featurebank.errors import FeaturebankError

__all__ = ["LABEL_RULES", "LabelIssues", "confident_learning",
           "label_issues", "out_of_fold_probabilities", "ranked_label_issues"]





@dataclass
class LabelIssues:
    """Rows flagged by :func:`confident_learning`, least self-confident first."""

    rows: np.ndarray  # positions in the labels given
    given: np.ndarray  # class indices
    suggested: np.ndarray
    score: np.ndarray  # 1 - probability of the given label: 1 is surely wrong


def confident_learning(labels: np.ndarray, probabilities: np.ndarray) -> LabelIssues:
    """The label issues among ``labels`` (class indices ``0..K-1``) given out-of-fold
    ``probabilities`` ``[n, K]``."""
    labels = np.asarray(labels)
    p = np.asarray(probabilities, np.float64)
    k = p.shape[1]
    if len(labels) != len(p) or labels.min() < 0 or labels.max() >= k:
        raise FeaturebankError(f"labels must be class indices 0..{k - 1}, one per row of the "
                               f"probabilities {p.shape}")
    thresholds = np.array([p[labels == j, j].mean() if (labels == j).any() else 1.0 for j in range(k)])
    confident = p >= thresholds - 1e-6  # cleanlab's tolerance for float equality
    n_confident = confident.sum(axis=1)
    guess = np.where(n_confident > 1, p.argmax(axis=1), confident.argmax(axis=1))
    flagged = (n_confident > 0) & (guess != labels) & (p.argmax(axis=1) != labels)
    rows = np.flatnonzero(flagged)
    self_confidence = p[rows, labels[rows]]
    order = np.argsort(self_confidence, kind="stable")
    rows = rows[order]
    return LabelIssues(rows, labels[rows], guess[rows], 1.0 - self_confidence[order])


def ranked_label_issues(labels: np.ndarray, probabilities: np.ndarray) -> LabelIssues:
    """As many rows as :func:`confident_learning` flags, but the least self-confident of all
    rows (ties in row order); the suggested label is the most probable other class."""
    p = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels)
    count = len(confident_learning(labels, p).rows)
    self_confidence = p[np.arange(len(p)), labels]
    rows = np.argsort(self_confidence, kind="stable")[:count]
    others = p[rows].copy()
    others[np.arange(len(rows)), labels[rows]] = -np.inf
    return LabelIssues(rows, labels[rows], others.argmax(axis=1), 1.0 - self_confidence[rows])


def label_issues(labels: np.ndarray, probabilities: np.ndarray, rule: str = "ranked") -> LabelIssues:
    """The issues by ``rule`` (one of :data:`LABEL_RULES`)."""
    if rule not in LABEL_RULES:
        raise FeaturebankError(f"label rule must be one of {LABEL_RULES}, got {rule!r}")
    return (ranked_label_issues if rule == "ranked" else confident_learning)(labels, probabilities)


def out_of_fold_probabilities(X: np.ndarray, y: np.ndarray, *, folds: int = 5, seed: int = 0,
                              c: float = PROBE_C) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities of every row from a probe that never saw it (stratified folds): a
    standardised logistic regression, as the linear probe, with inverse regularisation ``c``
    per 1000 training rows (scikit-learn's C sums the loss over rows, so a fixed C would weaken
    the regularisation as rows grow). Returns (classes, ``[n, K]``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise FeaturebankError(f"label checks need at least 2 classes, got {list(classes)}")
    if counts.min() < folds:
        small = ", ".join(f"{c!r} ({n})" for c, n in zip(classes, counts, strict=True) if n < folds)
        raise FeaturebankError(f"label checks with {folds} folds need {folds} images of each "
                               f"class; too few of {small}: lower folds=N or pass "
                               "label_check=False")
    rows_per_fold = len(y) * (folds - 1) / folds
    probe = make_pipeline(StandardScaler(),
                          LogisticRegression(C=c * 1000 / rows_per_fold, max_iter=300))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    proba = cross_val_predict(probe, X, np.searchsorted(classes, y), cv=cv, method="predict_proba")
    return classes, proba
