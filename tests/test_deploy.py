"""``featurebank deploy``: train -> deploy -> plain onnxruntime answers as ``featurebank predict``.

On held-out real images (scikit-learn's digits), for logistic regression, linear and RBF SVMs,
binary and multi-class, on the registry model (a concatenated cut) and on an adopted foreign
model (a concatenated cut of a batch-1 NHWC BGR graph): labels equal, probabilities within
1e-5. The file loads in a child process where featurebank, scikit-learn and joblib cannot be
imported. Refusals come before any file is written.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from benchmarks.harness.faults import subprocess_env
from featurebank.cli import main
from featurebank.errors import FeaturebankError
from tests._deploy_helpers import (  # noqa: F401 (fixtures)
    FOREIGN_LAYERS,
    KINDS,
    REGISTRY_LAYERS,
    _cli,
    _store,
    _train,
    folders_fixture,
    foreign_model_fixture,
    fused_answers,
    predict_answers,
)


def assert_parity(classifier: Path, test: Path, out: Path, model: Path | None = None) -> None:
    argv = ["deploy", str(classifier), "-o", str(out)]
    code, said = _cli(argv + (["--model", str(model)] if model else []))
    assert code == 0 and f"wrote {out}" in said, said
    expected = predict_answers(classifier, test, model)
    paths = sorted(expected)
    assert len(paths) >= 8
    proba, label, classes = fused_answers(out, paths)
    assert proba.dtype == np.float32 and label.dtype == np.int64
    want = np.array([[expected[p][1][c] for c in classes] for p in paths])
    np.testing.assert_allclose(proba, want, rtol=0, atol=1e-5)
    assert [classes[i] for i in label] == [expected[p][0] for p in paths]
    assert np.allclose(proba.sum(1), 1.0, atol=1e-5) and want.std() > 1e-3  # not uniform


@pytest.mark.slow
@pytest.mark.parametrize("classes", [2, 3])
def test_registry_model_every_kind_matches_predict(folders, lite0_onnx, tmp_path, classes):
    """Lite0 cut at blocks.10 + head (one concatenated feature vector), ~15 s per case."""
    store = _store(folders[f"train{classes}"], "efficientnet_lite0", REGISTRY_LAYERS)
    for kind in KINDS:
        clf = _train(store, REGISTRY_LAYERS, kind, tmp_path / f"{kind}.joblib")
        assert_parity(clf, folders[f"test{classes}"], tmp_path / f"{kind}.onnx")


@pytest.mark.parametrize("classes", [2, 3])
def test_adopted_foreign_model_every_kind_matches_predict(folders, foreign_model, tmp_path,
                                                         classes):
    store = _store(folders[f"train{classes}"], foreign_model, FOREIGN_LAYERS)
    for kind in KINDS:
        clf = _train(store, FOREIGN_LAYERS, kind, tmp_path / f"{kind}.joblib")
        assert_parity(clf, folders[f"test{classes}"], tmp_path / f"{kind}.onnx", foreign_model)


def test_file_describes_itself_and_holds_only_tensor_ops(folders, foreign_model, tmp_path):
    store = _store(folders["train3"], foreign_model, FOREIGN_LAYERS)
    clf = _train(store, FOREIGN_LAYERS, "rbf-svm", tmp_path / "svm.joblib")
    from featurebank.classical import load_trained
    from featurebank.deploy import build_deployable, training_digest

    deployable = build_deployable(clf, model=foreign_model)
    path = deployable.save(tmp_path / "svm.onnx")
    proto = onnx.load(str(path))
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    assert not {"ZipMap", "SequenceConstruct"} & {n.op_type for n in proto.graph.node}
    assert [i.name for i in proto.graph.input] == ["pixels"]
    elem = proto.graph.input[0].type.tensor_type
    assert elem.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in elem.shape.dim][1:] == [32, 32, 3]
    for vi in proto.graph.output:
        assert vi.type.WhichOneof("value") == "tensor_type"
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["featurebank.deploy"])
    trained = load_trained(clf)
    assert meta["classes"] == trained.classes == ["one", "two", "zero"]
    lineage = meta["lineage"]
    assert lineage["fingerprints"] == trained.fingerprints
    assert lineage["weights_sha256"] == trained.specs[0].model.weights_sha256
    import hashlib

    assert lineage["classifier_sha256"] == hashlib.sha256(clf.read_bytes()).hexdigest()
    assert lineage["training_digest"] == training_digest(trained.fingerprints,
                                                         trained.trained_keys)
    assert lineage["trained_images"] == 18
    assert meta["preprocessing"]["in_graph"]["channel_order"] == "bgr"
    readme = (tmp_path / "svm.README.md").read_text()
    assert "uint8 `[N, 32, 32, 3]`" in readme and "| 2 | zero |" in readme
    assert "Resizing stays outside the graph" in readme


def test_loads_in_plain_onnxruntime_without_featurebank(folders, foreign_model, tmp_path):
    """A child where featurebank, scikit-learn and joblib cannot be imported runs the file
    and gives the same answers."""
    store = _store(folders["train3"], foreign_model, FOREIGN_LAYERS)
    clf = _train(store, FOREIGN_LAYERS, "logreg", tmp_path / "lr.joblib")
    out = tmp_path / "lr.onnx"
    assert _cli(["deploy", str(clf), "-o", str(out), "--model", str(foreign_model)])[0] == 0
    paths = sorted(str(p) for p in folders["test3"].rglob("*.png"))
    proba, label, _ = fused_answers(out, paths)
    from featurebank.extractor import decode
    from featurebank.spec import Preprocessing

    meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}[
        "featurebank.deploy"])
    pre = Preprocessing.from_dict(meta["lineage"]["specs"][0]["model"]["preprocessing"])
    np.save(tmp_path / "pixels.npy", np.stack([decode(p, pre) for p in paths]))
    code = textwrap.dedent("""
        import sys
        for name in ("featurebank", "sklearn", "joblib"):
            sys.modules[name] = None  # any import of them now raises ImportError
        import numpy as np, onnxruntime as ort
        try:
            import featurebank
        except ImportError:
            pass
        else:
            raise SystemExit("featurebank imported")
        session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
        proba, label = session.run(None, {"pixels": np.load(sys.argv[2])})
        np.savez(sys.argv[3], proba=proba, label=label)
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("featurebank", "sklearn")
                     and sys.modules[m] is not None))
    """)
    child = subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "pixels.npy"),
                            str(tmp_path / "child.npz")], capture_output=True, text=True,
                           timeout=120, env=subprocess_env(), cwd=tmp_path)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip() == "[]"
    got = np.load(tmp_path / "child.npz")
    np.testing.assert_array_equal(got["label"], label)
    np.testing.assert_allclose(got["proba"], proba, atol=1e-6)


def test_refusals_come_before_any_file(folders, foreign_model, tmp_path, capsys):
    store = _store(folders["train2"], foreign_model, FOREIGN_LAYERS)
    clf = _train(store, FOREIGN_LAYERS, "logreg", tmp_path / "lr.joblib")

    def refused(argv: list[str], message: str) -> None:
        assert main(["deploy", *argv]) == 1
        assert message in capsys.readouterr().err

    refused([str(tmp_path / "missing.joblib")], "does not exist; train one")
    refused([str(clf), "-o", str(tmp_path / "no" / "x.onnx")], "does not exist")
    refused([str(clf), "-o", str(tmp_path / "x.pb")], "-o/--output is an ONNX file")
    refused([str(clf), "--name", "x"], "--name names the model in a Triton repository; give "
                                       "--triton too")
    refused([str(clf), "--triton", str(tmp_path / "repo"), "--name", "../up"],
            "--name must be letters")
    # a kind with no tensor form: refused by name before the feature graph is built
    from featurebank.classical import load_trained

    trained = load_trained(clf)
    trained.estimator.classifier = "knn"
    trained.save(tmp_path / "knn.joblib")
    refused([str(tmp_path / "knn.joblib"), "--model", str(foreign_model)],
            "classifier kind 'knn' cannot be deployed as one ONNX file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["knn.joblib", "lr.joblib"]
    # the default output (lr.onnx) is a backbone here: never replaced
    backbone = tmp_path / "lr.onnx"
    backbone.write_bytes(foreign_model.read_bytes())
    refused([str(clf), "--model", str(foreign_model)], "is not a file 'featurebank deploy' wrote")
    assert backbone.read_bytes() == foreign_model.read_bytes()
    # a file deploy wrote is replaced, as any output
    backbone.unlink()
    for _ in range(2):
        assert main(["deploy", str(clf), "--model", str(foreign_model)]) == 0
    assert (tmp_path / "lr.README.md").is_file()


def test_int8_features_deploy_with_their_quantised_graph(folders, foreign_model, tmp_path):
    """A classifier trained on int8 features (QDQ graph, calibrated on its own images) deploys
    with that graph: still default-domain ops, still predict's answers."""
    from featurebank import embed_collection

    calibration = sorted(str(p) for p in folders["train3"].rglob("*.png"))[::2]
    store = tmp_path / "int8.h5"
    embed_collection([str(folders["train3"])], store, str(foreign_model), layers=FOREIGN_LAYERS,
                     precision="int8", calibration=calibration, progress=False)
    clf = _train(store, FOREIGN_LAYERS, "linear-svm", tmp_path / "int8.joblib")
    assert_parity(clf, folders["test3"], tmp_path / "int8.onnx", foreign_model)
    proto = onnx.load(str(tmp_path / "int8.onnx"))
    ops = {(n.domain, n.op_type) for n in proto.graph.node}
    assert ("", "QuantizeLinear") in ops and {d for d, _ in ops} == {""}
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["featurebank.deploy"])
    assert meta["lineage"]["specs"][0]["quantization"].startswith("int8-")


def test_the_docs_preprocessing_gives_featurebanks_pixels(real_photos, lite0_onnx, tmp_path):
    """docs/deploy.md's Pillow function (for callers without featurebank) gives exactly the
    pixels featurebank's decode gives Lite0, on real photos of several sizes and shapes."""
    from PIL import Image

    from featurebank.export import read_onnx_metadata
    from featurebank.extractor import decode

    text = (Path(__file__).parents[1] / "docs" / "deploy.md").read_text()
    block = next(b for b in text.split("```python")[1:] if "def pixels" in b).split("```")[0]
    scope: dict = {}
    exec(compile(block, "docs/deploy.md", "exec"), scope)
    pre = read_onnx_metadata(lite0_onnx).spec.preprocessing
    assert (pre.resize_size, pre.input_size) == (254, (224, 224))  # the function's defaults
    for name, photo in real_photos.items():
        path = tmp_path / f"{name}.png"
        Image.fromarray(photo).save(path)
        np.testing.assert_array_equal(scope["pixels"](path), decode(path, pre), err_msg=name)


def test_ops_outside_the_onnx_domain_are_refused():
    """onnxruntime's contrib ops (com.microsoft) would tie the file to onnxruntime."""
    from onnx import TensorProto, helper

    from featurebank.deploy._fuse import _check

    graph = helper.make_graph(
        [helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    with pytest.raises(FeaturebankError, match=r"\['com.microsoft'\], which only some runtimes"):
        _check(proto, "x.joblib")
