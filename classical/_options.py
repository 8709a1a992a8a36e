"""The classical stage's choices, light (no scikit-learn): the command line offers them."""

#: Classifiers of :class:`featurebank.classical.LinearProbe` (and ``featurebank train``).
CLASSIFIERS = ("logreg", "linear-svm", "rbf-svm", "knn")
