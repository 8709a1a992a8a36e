"""The classical stage's choices and options, light (no scikit-learn): the command line builds
``train``'s and ``sweep``'s flags from them (``featurebank.cli.flags``)."""

from __future__ import annotations

from dataclasses import dataclass

from featurebank.options import Interval, Items, Options, check_options, option

#: Classifier kinds of :class:`featurebank.classical.LinearProbe` (``featurebank train
#: --classifier``): the generated flags offer exactly these.
CLASSIFIERS = ("logreg", "linear-svm", "rbf-svm", "knn")
#: What each kind's ``predict_proba`` is (``train`` and ``predict`` say it)
PROBABILITIES = {
    "logreg": "logistic regression's own probabilities",
    "linear-svm": "a softmax of the SVM's decision scores (a ranking, not calibrated "
                  "probabilities)",
    "rbf-svm": "a softmax of the SVM's decision scores (a ranking, not calibrated "
               "probabilities)",
    "knn": "distance-weighted votes of the k nearest training images",
}
#: ``train``'s classifier that is no kind: the kind and its C chosen by cross-validation
AUTO = "auto"
#: What ``evaluate`` does with labels the classifier never saw.
UNSEEN = ("error", "wrong")

#: A seed: what numpy and scikit-learn accept as an int.
SEED = Interval(int, 0, 2**32 - 1)


@dataclass(frozen=True)
class TrainOptions:
    """How a classifier is trained on stored features (``featurebank train`` and ``sweep``).

    Parameters
    ----------
    layers : tuple of str, optional
        Feature sets by layer or fingerprint; several are concatenated. None: the store's only
        feature set.
    classifier : str
        The classifier kind, one of :data:`CLASSIFIERS`, or ``'auto'``: the kind and its C (k
        for knn) chosen by successive halving with 5-fold cross-validation on the training
        rows.
    shots : int, optional
        Use only this many labelled images per class (k-shot). None: all of them.
    holdout : float
        Keep this fraction of the labelled images out of training (evaluate them later on the
        same store); ``sweep`` scores on it.
    baseline : bool
        Also fit a classifier on raw pixels of the same images (re-reads them).
    random_state : int
        Seed of every split and draw.
    """

    layers: tuple[str, ...] | None = option(None, Items(str), None, help="feature set by layer "
                                            "or fingerprint; repeat to concatenate")
    classifier: str = option(AUTO, Options((AUTO, *CLASSIFIERS)),
                             help="the classifier kind, or auto: chosen by cross-validation")
    shots: int | None = option(None, Interval(int, 1, None), None,
                               help="use only N labelled images per class")
    holdout: float = option(0.0, Interval(float, 0, 1, "left"))
    baseline: bool = option(True, bool, help="also fit a raw-pixel classifier (re-reads the "
                            "images)")
    random_state: int = option(0, SEED)

    def __post_init__(self) -> None:
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        check_options(self)
