"""One ONNX graph from uint8 pixels to probabilities: the classifier's own feature graph (the
one ``featurebank predict`` runs: cuts, concatenation, pooling, normalisation, int8 when its
specs say so) with the classifier appended as plain tensor ops.

A ``featurebank train`` classifier (``.joblib``) gets its scaler and probe as ops
(:func:`featurebank.classical.classifier_as_onnx`); a ``featurebank finetune`` file
(``tuned.onnx``) gets a softmax of its logits, as its ``predict_proba``. Either way the file
carries the class names, the preprocessing that turns an image into its input, and the
lineage, in ``metadata_props``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, helper

from featurebank.errors import FeaturebankError
from featurebank.spec import Preprocessing

#: metadata key of the deployed file's description (JSON)
META_DEPLOY = "featurebank.deploy"
FORMAT = "featurebank.deploy/1"
PIXELS = "pixels"
PROBABILITIES = "probabilities"
LABEL = "label"
#: the oldest opset whose Softmax/ArgMax/Gemm/Where mean what the classifier ops need
MIN_OPSET = 13
#: the only domain a fused graph may hold: ONNX's own (int8 feature graphs are QDQ, in it too)
_DOMAINS = {"", "ai.onnx"}


@dataclass
class Deployable:
    """A fused graph and what it says about itself."""

    model: onnx.ModelProto
    classes: list[str]
    preprocessing: Preprocessing
    description: dict[str, Any]

    @property
    def input_size(self) -> tuple[int, int]:
        return self.preprocessing.input_size

    def save(self, path: str | Path) -> Path:
        """Write the file atomically, and ``FILE.README.md`` beside it."""
        from featurebank.deploy._readme import readme_text

        path = Path(path)
        _atomic_write(path, self.model.SerializeToString())
        _atomic_write(readme_path(path), readme_text(self, path.name).encode())
        return path


def readme_path(path: str | Path) -> Path:
    """``FILE.README.md`` for ``FILE.onnx``."""
    return Path(path).with_suffix(".README.md")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise FeaturebankError(f"cannot write {path}: {exc.strerror or exc}") from exc


def is_deployed(path: str | Path) -> bool:
    """Whether ``path`` is an ONNX file ``featurebank deploy`` wrote."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # not ONNX at all (or unreadable): not ours
        return False
    return any(p.key == META_DEPLOY for p in proto.metadata_props)


def check_replaceable(path: str | Path) -> None:
    """Refuse, before any work, to replace a file that ``featurebank deploy`` did not write:
    the default name (CLASSIFIER with ``.onnx``) may be the backbone's or another model's."""
    path = Path(path)
    if path.exists() and not is_deployed(path):
        raise FeaturebankError(f"{path} exists and is not a file 'featurebank deploy' wrote (it "
                               "may be a backbone or another model); give -o another name, or "
                               "move it away")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def training_digest(fingerprints: list[str], keys) -> str:
    """16 hex digits naming what a classifier was trained on: its spec fingerprints and the
    content keys of its training images (as fine-tuning's training-set digest names its maps
    and labels; a train model keeps keys, not labels)."""
    h = hashlib.sha256("+".join(fingerprints).encode())
    for key in sorted(keys):
        h.update(f"{key}\n".encode())
    return h.hexdigest()[:16]


def build_deployable(classifier_path: str | Path, *, model: str | Path | None = None) -> Deployable:
    """The fused graph of the classifier in ``classifier_path`` (``.joblib`` or tuned ``.onnx``).

    Parameters
    ----------
    classifier_path : path
        What ``featurebank train``, ``compare`` or ``finetune`` wrote.
    model : path, optional
        Where the classifier's ONNX model is (``--model``, as in ``predict``).

    Raises
    ------
    FeaturebankError
        The classifier cannot be written as tensor ops (its kind is named), or its feature
        graph uses what a fused file must not hold.
    """
    from featurebank.predict import load_classifier

    classifier = load_classifier(classifier_path)
    tuned = getattr(classifier, "lineage", None) is not None
    ops = None
    if not tuned:  # refuse an inexpressible kind before building any graph
        from featurebank.classical import classifier_as_onnx

        ops = classifier_as_onnx(classifier.estimator, features="fb.features")
    extractor = classifier.extractor(model)
    graph = extractor.graph
    proto = onnx.ModelProto()
    proto.CopyFrom(graph.model)
    opset = _default_opset(proto, classifier_path)
    if ops is None:  # a tuned file's logits: their softmax, as TunedClassifier.predict_proba
        nodes = [helper.make_node("Softmax", [graph.output_names[0]], [PROBABILITIES], axis=1),
                 helper.make_node("ArgMax", [PROBABILITIES], [LABEL], axis=1, keepdims=0)]
        inits, n_classes = [], len(classifier.classes)
    else:
        if sum(graph.dims) != ops.n_features:
            raise FeaturebankError(f"{classifier_path}: the classifier reads {ops.n_features} "
                                   f"features but its feature graph gives {sum(graph.dims)}")
        concat = helper.make_node("Concat", list(graph.output_names), ["fb.features"], axis=1)
        nodes, inits, n_classes = [concat, *ops.nodes], ops.initializers, ops.n_classes
    _append(proto, nodes, inits, n_classes, classifier_path)
    pre = graph.model_spec.preprocessing
    description = _description(classifier, classifier_path, extractor, pre, tuned, opset)
    proto.metadata_props.add(key=META_DEPLOY, value=json.dumps(description))
    proto.doc_string = (f"featurebank deploy: uint8 RGB pixels [N, {pre.input_size[0]}, "
                        f"{pre.input_size[1]}, 3] -> probabilities [N, {n_classes}], label [N]")
    _check(proto, classifier_path)
    return Deployable(proto, [str(c) for c in description["classes"]], pre, description)


def _append(proto: onnx.ModelProto, nodes: list, inits: list, n_classes: int, where) -> None:
    """Put the classifier's nodes after the feature graph's; its outputs replace the graph's."""
    g = proto.graph
    taken = {o for n in g.node for o in n.output} | {t.name for t in g.initializer}
    clash = sorted(taken & ({o for n in nodes for o in n.output} | {t.name for t in inits}))
    if clash:  # a tensor of the backbone named like one of ours: never merged silently
        raise FeaturebankError(f"{where}: the feature graph already has tensors named "
                               f"{clash[:5]}; rename them in the model (then adopt and retrain)")
    g.node.extend(nodes)
    g.initializer.extend(inits)
    del g.output[:]
    g.output.extend(
        [helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["N", n_classes]),
         helper.make_tensor_value_info(LABEL, TensorProto.INT64, ["N"])])


def _default_opset(proto: onnx.ModelProto, where) -> int:
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise FeaturebankError(
            f"{where}: its feature graph is at ONNX opset {opset}; the classifier ops need "
            f"opset >= {MIN_OPSET}. Convert the model first (onnx.version_converter."
            f"convert_version(model, {MIN_OPSET})), adopt the converted file and retrain")
    return opset


def _check(proto: onnx.ModelProto, where) -> None:
    domains = {n.domain for n in proto.graph.node} - _DOMAINS
    if domains:
        raise FeaturebankError(f"{where}: its feature graph uses ops of the domain(s) "
                               f"{sorted(domains)}, which only some runtimes have; a deployed "
                               "file holds standard ONNX ops only (export or adopt the model "
                               "without them)")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise FeaturebankError(f"{where}: the fused graph does not validate: {exc}") from exc


def _description(classifier, path, extractor, pre: Preprocessing, tuned: bool,
                 opset: int) -> dict[str, Any]:
    specs = list(extractor.specs)
    fingerprints = [s.fingerprint() for s in specs]
    lineage: dict[str, Any] = {
        "specs": [s.to_dict() for s in specs], "fingerprints": fingerprints,
        "weights_sha256": specs[0].model.weights_sha256, "model": specs[0].model.model,
        "classifier_file": Path(path).name, "classifier_sha256": file_sha256(path)}
    if tuned:
        kind = "finetuned"
        lineage["finetune"] = dict(classifier.lineage)
        lineage["training_digest"] = classifier.lineage.get("train_feature_set")
        classes = list(classifier.classes)
    else:
        kind = classifier.estimator.classifier
        lineage["training_digest"] = training_digest(fingerprints, classifier.trained_keys)
        lineage["trained_images"] = len(classifier.trained_keys)
        classes = [str(c) for c in classifier.classes]
    from featurebank.export import featurebank_version

    h, w = pre.input_size
    return {"format": FORMAT, "featurebank_version": featurebank_version(), "kind": kind,
            "classes": classes, "opset": opset,
            "input": {"name": PIXELS, "dtype": "uint8", "shape": ["N", h, w, 3],
                      "layout": "NHWC, RGB, 0-255: decoded, resized and cropped; the graph "
                                "normalises"},
            "outputs": {PROBABILITIES: {"dtype": "float32", "shape": ["N", len(classes)]},
                        LABEL: {"dtype": "int64", "shape": ["N"],
                                "meaning": "index into classes of the highest probability"}},
            "preprocessing": preprocessing_steps(pre), "lineage": lineage}


def preprocessing_steps(pre: Preprocessing) -> dict[str, Any]:
    """What a caller does to an image before the graph (resizing stays outside it)."""
    h, w = pre.input_size
    return {"decode": "apply EXIF orientation; convert to RGB; composite alpha on background",
            "background": list(pre.background),
            "resize_shorter_side_to": pre.resize_size, "interpolation": pre.interpolation,
            "resize_rule": pre.resize_rule, "center_crop": [h, w],
            "in_graph": {"channel_order": pre.channel_order, "pixel_range": pre.pixel_range,
                         "mean": list(pre.mean), "std": list(pre.std), "layout": pre.layout}}
