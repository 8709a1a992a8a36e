"""A trained probe as plain ONNX tensor ops (``featurebank.classical.classifier_as_onnx``): the
graph's probabilities equal ``LinearProbe.predict_proba`` on real features (scikit-learn's
digits), for every deployable kind, binary and multi-class, with and without l2 rows; other
kinds are refused with the reason."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from sklearn.datasets import load_digits

from featurebank.classical import ONNX_KINDS, LinearProbe, classifier_as_onnx
from featurebank.errors import FeaturebankError


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.data.astype(np.float32), d.target


def _fit(X, y, kind, normalize=False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings of a short fit
        return LinearProbe(kind, Cs=[1.0], normalize=normalize).fit(X, y)


def _run(model: onnx.ModelProto, X: np.ndarray):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["probabilities", "label"], {"features": X})


@pytest.mark.parametrize("kind", ONNX_KINDS)
@pytest.mark.parametrize(("n_classes", "normalize"), [(2, False), (3, False), (10, False),
                                                      (2, True), (3, True)])
def test_probabilities_equal_predict_proba(digits, kind, n_classes, normalize):
    X, y = digits
    keep = y < n_classes
    train, test = np.flatnonzero(keep)[::2], np.flatnonzero(keep)[1::2]  # scored unseen
    probe = _fit(X[train], y[train], kind, normalize)
    proba, label = _run(classifier_as_onnx(probe).model(), X[test])
    reference = probe.predict_proba(X[test])
    assert proba.dtype == np.float32 and proba.shape == reference.shape
    assert label.dtype == np.int64 and label.shape == (len(test),)
    np.testing.assert_allclose(proba, reference, rtol=0, atol=2e-6)  # float32 ops vs float64 scikit-learn
    np.testing.assert_array_equal(label, reference.argmax(1))
    # the probe really separates the classes, so the parity above is not between constants
    assert (label == y[test]).mean() > 0.8


def test_multiclass_svm_uses_votes_not_only_scores(digits):
    """The one-vs-one votes decide the RBF SVM's ranking: a softmax of the raw pair
    decisions would not give scikit-learn's answer; the graph does."""
    X, y = digits
    probe = _fit(X[::3], y[::3], "rbf-svm")
    proba, _ = _run(classifier_as_onnx(probe).model(), X)
    reference = probe.predict_proba(X)
    np.testing.assert_allclose(proba, reference, atol=1e-5)
    # votes put a whole number between classes: the largest probability is far from uniform
    assert reference.max(1).min() > 2.5 / 10


def test_only_default_domain_tensor_ops(digits):
    """No ZipMap, no ai.onnx.ml op, no sequence or map type anywhere: the outputs are tensors."""
    X, y = digits
    for kind in ONNX_KINDS:
        model = classifier_as_onnx(_fit(X[:400], y[:400], kind)).model()
        assert {n.domain for n in model.graph.node} <= {""}, kind
        assert {o.domain for o in model.opset_import} == {""}
        assert "ZipMap" not in {n.op_type for n in model.graph.node}
        for vi in model.graph.output:
            assert vi.type.WhichOneof("value") == "tensor_type", vi.name


@pytest.mark.parametrize("opset", [13, 21])
def test_the_ops_mean_the_same_at_old_and_new_opsets(digits, opset):
    """Feature graphs come at their own opset (foreign files at 13-17, exports at 18+); the
    classifier's ops are the same there."""
    X, y = digits
    probe = _fit(X[:600], y[:600], "logreg", "l2")
    proba, _ = _run(classifier_as_onnx(probe).model(opset), X[600:])
    np.testing.assert_allclose(proba, probe.predict_proba(X[600:]), atol=1e-5)


def test_kinds_without_a_tensor_form_are_refused_by_name(digits):
    X, y = digits
    probe = _fit(X[:200], y[:200], "logreg")
    probe.classifier = "knn"  # what issue 30's k-NN kind is called
    with pytest.raises(FeaturebankError, match=r"'knn'.*TopK.*deployable kinds: logreg"):
        classifier_as_onnx(probe)
    probe.classifier = "gbdt"
    with pytest.raises(FeaturebankError, match=r"kind 'gbdt' cannot be deployed"):
        classifier_as_onnx(probe)
    from sklearn.neighbors import KNeighborsClassifier

    with pytest.raises(FeaturebankError, match="KNeighborsClassifier cannot be written"):
        classifier_as_onnx(KNeighborsClassifier(3).fit(X[:50], y[:50]))


def test_a_pipeline_probe_did_not_build_is_refused(digits):
    X, y = digits
    probe = _fit(X[:300], y[:300], "rbf-svm")
    probe.pipeline_.steps[-1][1].kernel = "poly"
    with pytest.raises(FeaturebankError, match="kernel='poly'"):
        classifier_as_onnx(probe)
    probe = _fit(X[:300], y[:300], "logreg")
    del probe.pipeline_.steps[0]
    with pytest.raises(FeaturebankError, match="LogisticRegression is not the one"):
        classifier_as_onnx(probe)
