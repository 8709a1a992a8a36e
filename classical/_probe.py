"""Linear probes and SVMs on frozen features, with the transfer-learning evaluation protocol.

The protocol of Kornblith et al. (2019) and CLIP: standardise features, pick the regularisation
strength C on a held-out validation split from a log-spaced sweep, then refit on train+val.
With few labels (k-shot), ``cv=5`` chooses C by stratified cross-validation over all training
images instead of one small split, and ``normalize=True`` puts every row on the unit sphere first
(SimpleShot, Wang et al. 2019), which removes the image-to-image scale of pooled activations.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.utils.multiclass import unique_labels
from sklearn.utils.validation import check_is_fitted, validate_data

from featurebank.classical._options import CLASSIFIERS, SEED
from featurebank.errors import OptionError
from featurebank.options import Interval, Items, Options, check_params

DEFAULT_CS = {"logreg": (1e-3, 1e-2, 1e-1, 1.0, 10.0), "linear-svm": (1e-4, 1e-3, 1e-2, 1e-1, 1.0),
              "rbf-svm": (1.0, 3.0, 10.0, 30.0),
              "knn": (1, 3, 5, 10, 20)}  # for knn the "C" is the number of neighbours


class LinearProbe(ClassifierMixin, BaseEstimator):
    """Standardised features + a linear (or RBF) classifier, C chosen on a validation split.

    Parameters
    ----------
    classifier : {'logreg', 'linear-svm', 'rbf-svm', 'knn'}
        L-BFGS logistic regression, ``LinearSVC``, ``SVC(kernel='rbf')``, or k-nearest
        neighbours (Euclidean on the standardised features, votes weighted by distance).
    Cs : sequence of float, optional
        Candidate C values (log-spaced defaults per classifier). One value skips the sweep.
        For ``knn`` they are numbers of neighbours k (its regularisation: larger is smoother),
        capped at the number of training rows.
    val_size : float
        Fraction of the training data held out to choose C (stratified); unused with ``cv``.
    cv : int, optional
        Choose C by stratified ``cv``-fold cross-validation on the training data (folds capped at
        the smallest class count) instead of one validation split: every image validates once,
        which is what a 10-shot problem needs (a 20 % split holds out 2 images per class).
    normalize : bool
        L2-normalise each row (feature vector) before standardisation: the word means what it
        means in a :class:`~featurebank.spec.FeatureSpec` (``--l2``). The former values
        ``'l2'`` and ``None`` still work (``'l2'`` with a ``FutureWarning``), so classifiers
        saved with them load and predict as before.
    class_weight : None or 'balanced' or dict
    max_iter : int
    random_state : int

    Attributes
    ----------
    C_ : float
        The chosen C.
    val_scores_ : dict
        Validation (or mean cross-validation) accuracy per candidate C.
    pipeline_ : Pipeline
        (Normalizer +) scaler + classifier refit on all training data with ``C_``.
    classes_ : ndarray
    """

    #: checked in ``fit`` (scikit-learn's estimators validate there, never in ``__init__``)
    _parameter_constraints: dict = {
        "classifier": [Options(CLASSIFIERS)],
        "Cs": [Items(Interval(float, 0, None, "neither")), None],
        "val_size": [Interval(float, 0, 1, "neither")],
        "class_weight": [Options(("balanced",)), dict, None],
        "max_iter": [Interval(int, 1, None)],
        "random_state": [SEED, None],
        "cv": [Interval(int, 2, None), None],
        "normalize": [bool, Options(("l2",)), None],  # 'l2' and None: featurebank 0.1's values
    }

    def __init__(self, classifier: str = "logreg", *, Cs=None, val_size: float = 0.2,
                 class_weight=None, max_iter: int = 1000, random_state: int = 0,
                 cv: int | None = None, normalize: bool = False):
        self.classifier = classifier
        self.Cs = Cs
        self.val_size = val_size
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.random_state = random_state
        self.cv = cv
        self.normalize = normalize

    def _make(self, C: float, n_train: int | None = None):
        if self.classifier == "logreg":
            clf = LogisticRegression(C=C, max_iter=self.max_iter, class_weight=self.class_weight)
        elif self.classifier == "linear-svm":
            clf = LinearSVC(C=C, max_iter=self.max_iter, class_weight=self.class_weight,
                            random_state=self.random_state)
        elif self.classifier == "rbf-svm":
            clf = SVC(C=C, kernel="rbf", gamma="scale", class_weight=self.class_weight,
                      random_state=self.random_state)
        elif self.classifier == "knn":
            if self.class_weight is not None:
                raise OptionError("class_weight", "does not apply to knn; leave it None",
                                  owner=type(self).__name__)
            k = max(1, int(round(C)))
            clf = KNeighborsClassifier(n_neighbors=min(k, n_train or k), weights="distance")
        else:  # fit checked it against CLASSIFIERS: a kind added there needs a branch here
            raise OptionError("classifier", f"{self.classifier!r} has no implementation",
                              owner=type(self).__name__)
        steps = [Normalizer("l2")] if self.normalize in (True, "l2") else []
        return make_pipeline(*steps, StandardScaler(), clf)

    def fit(self, X, y):
        check_params(self)
        if self.normalize == "l2":
            warnings.warn("LinearProbe(normalize='l2') is deprecated: use normalize=True (the "
                          "same L2 normalisation of each row)", FutureWarning, stacklevel=2)
        X, y = validate_data(self, X, y, dtype=np.float32)
        self.classes_ = unique_labels(y)
        if len(self.classes_) < 2:
            raise ValueError(f"need at least 2 classes to train, got {len(self.classes_)} class: "
                             f"{list(self.classes_)}")
        Cs = list(self.Cs) if self.Cs is not None else list(DEFAULT_CS.get(self.classifier, (1.0,)))
        self.val_scores_ = {}
        counts = np.unique(y, return_counts=True)[1]
        n_val = int(round(self.val_size * len(y)))
        folds = min(self.cv or 0, counts.min())
        if len(Cs) > 1 and self.cv is not None and folds >= 2:
            splits = StratifiedKFold(folds, shuffle=True, random_state=self.random_state)
            for C in Cs:
                n_fit = len(y) - int(np.ceil(len(y) / folds))  # the smallest training fold
                self.val_scores_[C] = float(cross_val_score(self._make(C, n_fit), X, y,
                                                            cv=splits).mean())
        elif len(Cs) > 1 and self.cv is None and counts.min() >= 2 and n_val >= len(self.classes_):
            Xtr, Xval, ytr, yval = train_test_split(X, y, test_size=n_val, stratify=y,
                                                    random_state=self.random_state)
            for C in Cs:
                self.val_scores_[C] = float(self._make(C, len(ytr)).fit(Xtr, ytr).score(Xval, yval))
        if self.val_scores_:  # ties: the C nearest 1
            self.C_ = max(Cs, key=lambda c: (self.val_scores_[c], -abs(np.log10(c))))
        else:  # too few samples to hold any out: the middle of the sweep
            self.C_ = Cs[len(Cs) // 2]
        self.pipeline_ = self._make(self.C_, len(y)).fit(X, y)
        self.n_iter_ = int(np.max(getattr(self.pipeline_[-1], "n_iter_", 1)))
        return self

    def decision_function(self, X):
        check_is_fitted(self)
        return self.pipeline_.decision_function(validate_data(self, X, reset=False, dtype=np.float32))

    def predict(self, X):
        check_is_fitted(self)
        return self.pipeline_.predict(validate_data(self, X, reset=False, dtype=np.float32))

    def predict_proba(self, X):
        """Class probabilities: logistic regression's own, k-nearest neighbours' distance-weighted
        votes; for SVMs a softmax of the decision scores (a ranking, not calibrated
        probabilities)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float32)
        if self.classifier in ("logreg", "knn"):
            return self.pipeline_.predict_proba(X)
        scores = self.pipeline_.decision_function(X)
        if scores.ndim == 1:
            scores = np.stack([-scores, scores], axis=1)
        scores = scores - scores.max(axis=1, keepdims=True)
        e = np.exp(scores)
        return e / e.sum(axis=1, keepdims=True)


def k_shot_indices(y: np.ndarray, k: int, random_state: int = 0) -> np.ndarray:
    """Indices of k examples per class (all of a class with fewer), for data-efficiency curves."""
    rng = np.random.default_rng(random_state)
    picked = []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        picked.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(picked))


def cross_validate_probe(estimator, X, y, folds: int = 5, random_state: int = 0) -> np.ndarray:
    """Stratified k-fold accuracies of a (cloned) estimator."""
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=random_state)
    return cross_val_score(clone(estimator), X, y, cv=cv, scoring="accuracy")
