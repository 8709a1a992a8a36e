"""A trained :class:`LinearProbe` as plain ONNX tensor ops: features in, probabilities out.

What ``LinearProbe.predict_proba`` computes, op for op, in float32 and in the default ONNX
domain only (no ``ai.onnx.ml``, no ZipMap, no sequence or map types), so the graph runs in any
ONNX runtime (Triton, onnxruntime-web, mobile builds) and can be appended to a feature graph:

- ``Normalizer('l2')`` (``normalize=True``): rows divided by their norm, a norm below
  ``10 * eps`` taken as 1, as scikit-learn's ``normalize`` does;
- ``StandardScaler``: ``(x - mean_) / scale_``;
- logistic regression: ``Gemm`` scores; binary is a softmax of ``[0, z]`` (== scikit-learn's
  ``[1 - expit(z), expit(z)]``), multi-class a softmax of the scores;
- linear SVM: ``Gemm`` scores; softmax of ``[-s, s]`` (binary) or of the one-vs-rest scores;
- RBF SVM: kernel rows ``exp(-gamma * |x - sv|^2)`` against the support vectors, one decision
  per class pair from ``dual_coef_`` (libsvm's layout), and for more than two classes
  scikit-learn's one-vs-one votes plus its confidence transform
  (``sklearn.utils.multiclass._ovr_decision_function``) before the softmax.

``label`` is the first class of highest probability (``ArgMax``), as ``featurebank predict``
ranks. Any other estimator (a k-NN, a kernel other than RBF) is refused by name, with why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from featurebank.errors import FeaturebankError

#: LinearProbe kinds that become plain tensor ops
ONNX_KINDS = ("logreg", "linear-svm", "rbf-svm")
PROBABILITIES = "probabilities"
LABEL = "label"
_WHY_NOT = {"knn": "a k-NN answers by sorting distances to every stored training row (TopK), "
                   "which would put the whole training set into the file; it is not written "
                   "as tensor ops"}


@dataclass
class OnnxClassifier:
    """Nodes and weights that turn float32 ``features`` ``[N, D]`` into ``probabilities``
    ``[N, C]`` (float32) and ``label`` ``[N]`` (int64, an index into ``classes``)."""

    kind: str
    n_features: int
    n_classes: int
    features: str
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)

    def model(self, opset: int = 17) -> onnx.ModelProto:
        """A graph of its own (input ``features``), checked by ``onnx.checker``."""
        graph = helper.make_graph(
            self.nodes, f"featurebank_{self.kind}",
            [helper.make_tensor_value_info(self.features, TensorProto.FLOAT,
                                           ["N", self.n_features])],
            output_value_infos(self.n_classes), initializer=self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                  producer_name="featurebank")
        onnx.checker.check_model(model, full_check=True)
        return model


def output_value_infos(n_classes: int) -> list:
    """The two outputs every deployed classifier has."""
    return [helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["N", n_classes]),
            helper.make_tensor_value_info(LABEL, TensorProto.INT64, ["N"])]


class _Builder:
    """Appends nodes under one name prefix; constants become float32 initializers."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: list = []
        self.inits: list = []
        self._n = 0

    def const(self, name: str, value, dtype=np.float32) -> str:
        full = f"{self.prefix}.{name}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), full))
        return full

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        self._n += 1
        out = output or f"{self.prefix}.{op_type.lower()}{self._n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def row_sum(self, x: str, width: int, name: str) -> str:
        """``sum(x, axis=1, keepdims)`` as a MatMul: the same op at every opset (ReduceSum's
        axes moved from attribute to input in opset 13)."""
        return self.op("MatMul", [x, self.const(name, np.ones((width, 1)))])


def classifier_as_onnx(estimator, features: str = "features",
                       prefix: str = "classifier") -> OnnxClassifier:
    """The ops of a fitted :class:`featurebank.classical.LinearProbe`.

    Parameters
    ----------
    estimator : LinearProbe
        Fitted (what ``featurebank train`` saves as ``TrainedClassifier.estimator``).
    features : str
        Name of the float32 ``[N, D]`` tensor the ops read (a feature graph's concatenation).
    prefix : str
        Prefix of every intermediate tensor and weight name.

    Raises
    ------
    FeaturebankError
        A kind, kernel or pipeline step these ops do not reproduce exactly (named, with why).
    """
    kind, steps = _checked_steps(estimator)
    b = _Builder(prefix)
    x = features
    n_features = int(estimator.n_features_in_)
    for step in steps[:-1]:
        x = _l2_rows(b, x, n_features) if _name(step) == "Normalizer" else _scaled(b, x, step)
    clf = steps[-1]
    n_classes = len(clf.classes_)
    scores = _rbf_scores(b, x, clf) if kind == "rbf-svm" else _linear_scores(b, x, clf, kind)
    b.op("Softmax", [scores], PROBABILITIES, axis=1)
    b.op("ArgMax", [PROBABILITIES], LABEL, axis=1, keepdims=0)
    return OnnxClassifier(kind, n_features, n_classes, features, b.nodes, b.inits)


def _name(obj) -> str:
    return type(obj).__name__


def _checked_steps(estimator) -> tuple[str, list]:
    """The probe's kind and pipeline steps, or a refusal naming what cannot be reproduced."""
    kind = str(getattr(estimator, "classifier", None))
    if _name(estimator) != "LinearProbe" or not hasattr(estimator, "pipeline_"):
        raise FeaturebankError(
            f"a classifier of type {_name(estimator)} cannot be written as ONNX tensor ops: "
            f"only a fitted LinearProbe ({', '.join(ONNX_KINDS)}) can")
    if kind not in ONNX_KINDS:
        why = _WHY_NOT.get(kind, "its rule has no exact tensor-op form here")
        raise FeaturebankError(f"classifier kind {kind!r} cannot be deployed as one ONNX file: "
                               f"{why}; deployable kinds: {', '.join(ONNX_KINDS)}")
    steps = [s for _, s in estimator.pipeline_.steps]
    expected = {"logreg": "LogisticRegression", "linear-svm": "LinearSVC", "rbf-svm": "SVC"}[kind]
    names = [_name(s) for s in steps]
    if names not in (["StandardScaler", expected], ["Normalizer", "StandardScaler", expected]):
        raise FeaturebankError(f"{kind} pipeline {' -> '.join(names)} is not the one "
                               "LinearProbe builds; it is refused rather than approximated")
    if names[0] == "Normalizer" and steps[0].norm != "l2":
        raise FeaturebankError(f"Normalizer(norm={steps[0].norm!r}) is not deployable (l2 is)")
    clf = steps[-1]
    if kind == "rbf-svm" and (clf.kernel != "rbf" or clf.decision_function_shape != "ovr"):
        raise FeaturebankError(f"SVC(kernel={clf.kernel!r}, decision_function_shape="
                               f"{clf.decision_function_shape!r}) is not deployable: only the "
                               "RBF kernel with one-vs-rest scores (what LinearProbe fits)")
    return kind, steps


def _l2_rows(b: _Builder, x: str, width: int) -> str:
    norm = b.op("Sqrt", [b.row_sum(b.op("Mul", [x, x]), width, "l2.ones")])
    # scikit-learn's _handle_zeros_in_scale: a norm below 10 eps (float32 rows) divides by 1
    tiny = b.op("Less", [norm, b.const("l2.tiny", 10 * np.finfo(np.float32).eps)])
    safe = b.op("Where", [tiny, b.const("l2.one", 1.0), norm])
    return b.op("Div", [x, safe])


def _scaled(b: _Builder, x: str, scaler) -> str:
    if scaler.mean_ is not None and scaler.with_mean:
        x = b.op("Sub", [x, b.const("scaler.mean", scaler.mean_)])
    if scaler.scale_ is not None and scaler.with_std:
        x = b.op("Div", [x, b.const("scaler.scale", scaler.scale_)])
    return x


def _linear_scores(b: _Builder, x: str, clf, kind: str) -> str:
    """Gemm scores whose softmax is the probe's probabilities. Two classes: one row ``w``
    becomes ``[0, w]`` (logistic regression) or ``[-w, w]`` (SVM), so the softmax alone
    reproduces both rules exactly."""
    w = np.asarray(clf.coef_, np.float64)
    c = np.asarray(clf.intercept_, np.float64).reshape(-1)
    if w.shape[0] == 1:
        other = 0.0 if kind == "logreg" else -1.0
        w, c = np.vstack([other * w, w]), np.concatenate([other * c, c])
    return b.op("Gemm", [x, b.const("weights", w), b.const("bias", c)], transB=1)


def _rbf_scores(b: _Builder, x: str, svc) -> str:
    sv = np.asarray(svc.support_vectors_, np.float64)
    gamma = float(svc._gamma)  # 'scale' resolved at fit time; scikit-learn keeps it here
    m, width = sv.shape
    # |x - sv|^2 = |x|^2 - 2 x.sv + |sv|^2, clipped at 0 (rounding), then the kernel row
    xx = b.row_sum(b.op("Mul", [x, x]), width, "rbf.ones")
    cross = b.op("MatMul", [x, b.const("rbf.minus2_sv_t", -2.0 * sv.T)])
    d2 = b.op("Relu", [b.op("Add", [b.op("Add", [cross, xx]),
                                    b.const("rbf.sv_sq", (sv * sv).sum(1)[None, :])])])
    kernel = b.op("Exp", [b.op("Mul", [d2, b.const("rbf.minus_gamma", -gamma)])])
    coef, bias = _pairwise_coefficients(svc)
    if len(svc.classes_) == 2:  # the public binary decision; softmax of [-s, s]
        coef, bias = np.hstack([-coef, coef]), np.concatenate([-bias, bias])
        return b.op("Gemm", [kernel, b.const("rbf.coef", coef), b.const("rbf.bias", bias)])
    decision = b.op("Gemm", [kernel, b.const("rbf.coef", coef), b.const("rbf.bias", bias)])
    return _ovo_to_ovr(b, decision, len(svc.classes_))


def _pairwise_coefficients(svc) -> tuple[np.ndarray, np.ndarray]:
    """``[M, P]`` weights of the M support vectors in each of the P class pairs (i < j, in
    scikit-learn's order), from libsvm's ``dual_coef_`` layout: the vectors of class i weigh
    ``dual_coef_[j - 1]`` in pair (i, j), those of class j ``dual_coef_[i]``."""
    dual = np.asarray(svc.dual_coef_, np.float64)
    counts = np.asarray(svc.n_support_)
    starts = np.concatenate([[0], np.cumsum(counts)])
    n = len(counts)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    coef = np.zeros((dual.shape[1], len(pairs)))
    for p, (i, j) in enumerate(pairs):
        si, sj = slice(starts[i], starts[i + 1]), slice(starts[j], starts[j + 1])
        coef[si, p] = dual[j - 1, si]
        coef[sj, p] = dual[i, sj]
    return coef, np.asarray(svc.intercept_, np.float64).reshape(-1)


def _ovo_to_ovr(b: _Builder, decision: str, n: int) -> str:
    """scikit-learn's ``_ovr_decision_function(dec < 0, -dec, n)`` as matrix products: a pair
    (i, j) votes for i when its decision is >= 0, else for j; class i gains the decision and
    j loses it as confidence, squashed by ``s / (3 (|s| + 1))``."""
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    first, second = np.zeros((len(pairs), n)), np.zeros((len(pairs), n))
    for p, (i, j) in enumerate(pairs):
        first[p, i], second[p, j] = 1.0, 1.0
    to_j = b.op("Cast", [b.op("Less", [decision, b.const("ovo.zero", 0.0)])], to=TensorProto.FLOAT)
    to_i = b.op("Sub", [b.const("ovo.one", 1.0), to_j])
    votes = b.op("Add", [b.op("MatMul", [to_i, b.const("ovo.first", first)]),
                         b.op("MatMul", [to_j, b.const("ovo.second", second)])])
    confidence = b.op("MatMul", [decision, b.const("ovo.signs", first - second)])
    squash = b.op("Mul", [b.op("Add", [b.op("Abs", [confidence]), b.const("ovo.c1", 1.0)]),
                          b.const("ovo.c3", 3.0)])
    return b.op("Add", [votes, b.op("Div", [confidence, squash])])
