"""LogME against the authors' reference code, successive halving, the knn classifier kind."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import StratifiedKFold, cross_val_score

from featurebank.classical import CLASSIFIERS, LinearProbe
from featurebank.classical.selection import (
    Candidate,
    default_candidates,
    logme_score,
    stratified_order,
    successive_halving,
)
from featurebank.errors import FeaturebankError


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.data.astype(np.float64), d.target


@pytest.fixture(scope="module")
def reference():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from tests._logme_reference import LogME  # the authors' code, run as the oracle
    return LogME


def test_logme_equals_the_reference_on_full_rank_features(digits, reference):
    """N > D, full rank: the same fixed-point iteration as the reference, the same value."""
    X, y = digits
    X = X[:300, X[:300].std(0) > 0]  # 56 columns of real pixel intensities, rank 56
    assert np.linalg.matrix_rank(X) == X.shape[1]
    expected = reference().fit(X, y[:300])
    assert logme_score(X, y[:300]) == pytest.approx(expected, rel=1e-9)
    rng = np.random.default_rng(3)
    noise = rng.normal(size=(200, 30))
    assert logme_score(noise, y[:200]) == pytest.approx(reference().fit(noise, y[:200]), rel=1e-9)


def test_logme_is_the_exact_evidence_with_fewer_rows_than_dimensions(digits, reference):
    """N < D or constant columns: the exact evidence, as the paper's ICML computation (all D
    eigenvalues) gives it; a constant column changes nothing."""
    X, y = digits
    few = X[:40]  # 40 rows, 64 columns, 8 of them constant
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        icml = reference()._fit_icml(few, y[:40])
    assert logme_score(few, y[:40]) == pytest.approx(icml, abs=5e-3)
    wide = np.hstack([X[:300], np.zeros((300, 5))])
    assert logme_score(wide, y[:300]) == pytest.approx(logme_score(X[:300], y[:300]), rel=1e-9)


def test_logme_ranks_real_features_above_noise_and_refuses_bad_input(digits):
    X, y = digits
    rng = np.random.default_rng(0)
    assert logme_score(X[:500], y[:500]) > logme_score(rng.normal(size=(500, 64)), y[:500])
    with pytest.raises(FeaturebankError, match="2 classes"):
        logme_score(X[:10], np.zeros(10))
    with pytest.raises(FeaturebankError, match="NaN"):
        logme_score(np.full((10, 3), np.nan), y[:10])
    with pytest.raises(FeaturebankError, match="shape"):
        logme_score(X[:10], y[:9])


def test_knn_is_a_classifier_kind(digits):
    X, y = digits
    assert "knn" in CLASSIFIERS
    probe = LinearProbe("knn", cv=3).fit(X[:1000], y[:1000])
    assert probe.C_ in (1, 3, 5, 10, 20) and len(probe.val_scores_) == 5
    # the same as scikit-learn's own pipeline with the chosen k, and far above chance
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ref = make_pipeline(StandardScaler(), KNeighborsClassifier(int(probe.C_), weights="distance"))
    accuracy = probe.score(X[1000:], y[1000:])
    assert accuracy == ref.fit(X[:1000], y[:1000]).score(X[1000:], y[1000:])
    assert accuracy > 0.9
    proba = probe.predict_proba(X[1000:1100])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(probe.classes_[proba.argmax(axis=1)], probe.predict(X[1000:1100]))
    # k beyond the training rows is capped, not an error; clones keep the kind
    tiny = LinearProbe("knn", Cs=(50,)).fit(X[:12], y[:12] % 2)
    assert tiny.pipeline_[-1].n_neighbors == 12
    assert clone(probe).get_params()["classifier"] == "knn"


def test_stratified_order_keeps_class_proportions_in_every_prefix(digits):
    _, y = digits
    order = stratified_order(y, random_state=1)
    assert sorted(order) == list(range(len(y)))
    overall = np.bincount(y) / len(y)
    for n in (100, 300, 900):
        part = np.bincount(y[order[:n]], minlength=10) / n
        assert np.abs(part - overall).max() < 2 / n + 1e-9


def test_halving_keeps_the_best_and_records_real_cv_scores(digits):
    X, y = digits
    X, y = X[:600], y[:600]
    rng = np.random.default_rng(0)
    matrices = {"pixels": X, "noise": rng.normal(size=X.shape)}
    candidates = default_candidates(list(matrices), ["logreg", "knn"])
    assert len(candidates) == 20
    lines: list[str] = []
    result = successive_halving(matrices, y, candidates, factor=3, random_state=0,
                                progress=lines.append)
    best = result.best
    assert best.features == "pixels"
    rounds = math.ceil(math.log(20, 3))
    assert len(lines) == rounds == 3
    # round sizes grow by the factor and the last uses every row; survivors shrink by it
    sizes = [result.history[best][r][0] for r in range(len(result.history[best]))]
    assert sizes == [100, 300, 600]  # 600 // 9 is below 2 x 5 folds x 10 classes
    reached = [sum(len(h) > r for h in result.history.values()) for r in range(rounds)]
    assert reached == [20, 7, 3]
    assert all(not h or h[0][0] == sizes[0] for h in result.history.values())
    # no noise candidate survives the first round
    assert all(c.features == "pixels" for c in result.candidates if len(result.history[c]) > 1)
    # the recorded score is plain stratified CV of that candidate on all the rows
    n, mean, std = result.last(best)
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = cross_val_score(best.estimator(0), X, y, cv=folds)
    assert (n, mean, std) == (600, pytest.approx(scores.mean()), pytest.approx(scores.std()))
    assert mean > 0.95


def test_halving_skips_a_linear_svm_whose_larger_c_repeats_its_fold_scores(digits, monkeypatch):
    """Once a linear SVM's folds score exactly as at the next smaller C (more dimensions than
    rows: the classes separate, and a larger C fits nearly the same hyperplane), the larger C of that
    feature set are skipped for the round; the choice is the full search's."""
    from sklearn.preprocessing import PolynomialFeatures

    import featurebank.classical.selection._halving as halving

    X, y = digits
    # the pixels' pairwise products: 2144 dimensions on 300 images, as a backbone's 1280 are
    X, y = PolynomialFeatures(2, include_bias=False).fit_transform(X[:300]), y[:300]
    candidates = default_candidates(["pixels"], ["linear-svm"])
    result = successive_halving({"pixels": X}, y, candidates, factor=3, random_state=0)
    monkeypatch.setattr(halving, "SATURATING", frozenset())
    full = successive_halving({"pixels": X}, y, candidates, factor=3, random_state=0)
    assert result.skipped and not full.skipped
    assert all(c.classifier == "linear-svm" for c in result.skipped)
    assert result.best == full.best and result.last(result.best) == full.last(full.best)
    for c, why in result.skipped.items():
        r = len(result.history[c])  # the round it was skipped in
        lower = [d for d in result.history if d.classifier == c.classifier and d.C < c.C
                 and len(result.history[d]) > r]
        # it would have scored as the largest C below it that ran: skipping lost nothing
        assert full.history[c][r][1:] == result.history[max(lower, key=lambda d: d.C)][r][1:]
        assert why.startswith("saturated") and c not in result.ranking()[:1]


def test_halving_refuses_what_it_cannot_compare(digits):
    X, y = digits
    with pytest.raises(FeaturebankError, match="no feature matrix named"):
        successive_halving({"a": X}, y, [Candidate("b", "logreg", 1.0)])
    with pytest.raises(FeaturebankError, match="2 classes"):
        successive_halving({"a": X[:20]}, np.zeros(20), [Candidate("a", "logreg", 1.0)])
