"""``featurebank deploy --triton REPO``: the repository entry read back with Triton's own
model-config protobuf (``tritonclient.grpc.model_config_pb2``), every field checked against the
ONNX graph it serves; versions never overwritten; a tuned ``.onnx`` deployed the same way; and,
where a ``tritonserver`` binary exists, the server's answers compared with onnxruntime's."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from featurebank.deploy import PREFERRED_BATCH_SIZES
from tests._deploy_helpers import (  # noqa: F401 (fixtures)
    FOREIGN_LAYERS,
    _cli,
    _store,
    _train,
    folders_fixture,
    foreign_model_fixture,
    fused_answers,
    predict_answers,
)

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="Triton's model-config protobuf comes with tritonclient")
text_format = pytest.importorskip("google.protobuf.text_format")

#: ONNX element type -> Triton data type
TRITON_TYPES = {onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.FLOAT: "TYPE_FP32",
                onnx.TensorProto.INT64: "TYPE_INT64"}


@pytest.fixture(scope="module")
def classifier(folders, foreign_model, tmp_path_factory) -> Path:
    store = _store(folders["train3"], foreign_model, FOREIGN_LAYERS)
    return _train(store, FOREIGN_LAYERS, "rbf-svm", tmp_path_factory.mktemp("triton") / "svm.joblib")


def read_config(folder: Path):
    config = model_config_pb2.ModelConfig()
    text_format.Parse((folder / "config.pbtxt").read_text(), config)
    return config


def _dims(vi) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param
            for d in vi.type.tensor_type.shape.dim]


def check_config_against_graph(folder: Path, config, classes: list[str]) -> None:
    """Every field of the config agrees with the ONNX graph Triton will load."""
    graph = onnx.load(str(folder / "1" / "model.onnx")).graph
    assert config.name == folder.name
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size > 0  # the first axis of every tensor is the batch
    for tensors, declared in ((graph.input, config.input), (graph.output, config.output)):
        assert [t.name for t in tensors] == [c.name for c in declared]
        for t, c in zip(tensors, declared, strict=True):
            dims = _dims(t)
            assert isinstance(dims[0], str), f"{t.name}: batch axis must be dynamic"
            assert model_config_pb2.DataType.Name(c.data_type) == \
                TRITON_TYPES[t.type.tensor_type.elem_type]
            if c.HasField("reshape"):  # [batch] in the graph: dims [1] shaped to []
                assert list(c.dims) == [1] and list(c.reshape.shape) == [] and dims[1:] == []
            else:
                assert list(c.dims) == dims[1:]
    probabilities = next(o for o in config.output if o.name == "probabilities")
    assert list(probabilities.dims) == [len(classes)]
    labels = (folder / probabilities.label_filename).read_text().splitlines()
    assert labels == classes
    batching = config.dynamic_batching
    assert list(batching.preferred_batch_size) == list(PREFERRED_BATCH_SIZES)
    assert all(b <= config.max_batch_size for b in batching.preferred_batch_size)
    assert batching.max_queue_delay_microseconds == 100
    assert len(config.instance_group) == 1 and config.instance_group[0].count >= 1


def test_repository_is_checked_with_tritons_schema(classifier, folders, foreign_model, tmp_path):
    repo = tmp_path / "repo"
    code, said = _cli(["deploy", str(classifier), "--triton", str(repo), "--name", "digits",
                       "--model", str(foreign_model), "--instances", "2",
                       "--instance-kind", "cpu"])
    assert code == 0 and "wrote Triton model" in said, said
    folder = repo / "digits"
    assert sorted(p.name for p in folder.iterdir()) == ["1", "README.md", "config.pbtxt",
                                                          "labels.txt"]
    config = read_config(folder)
    check_config_against_graph(folder, config, ["one", "two", "zero"])
    group = config.instance_group[0]
    assert (group.count, model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind)) == \
        (2, "KIND_CPU")
    assert config.max_batch_size == 64
    # the served file answers as predict does
    expected = predict_answers(classifier, folders["test3"], foreign_model)
    paths = sorted(expected)
    proba, label, classes = fused_answers(folder / "1" / "model.onnx", paths)
    assert [classes[i] for i in label] == [expected[p][0] for p in paths]


def test_an_existing_version_is_never_replaced(classifier, foreign_model, tmp_path, capsys):
    repo = tmp_path / "repo"
    argv = ["deploy", str(classifier), "--triton", str(repo), "--model", str(foreign_model)]
    assert _cli(argv)[0] == 0
    served = repo / "svm" / "1" / "model.onnx"
    before = served.read_bytes()
    code, _ = _cli(argv + ["-o", str(tmp_path / "also.onnx")])
    assert code == 1
    assert "svm/1 exists; featurebank never replaces" in capsys.readouterr().err
    assert served.read_bytes() == before
    assert not (tmp_path / "also.onnx").exists()  # refused before any work
    # a model folder holding only another version gets version 1 beside it
    (repo / "other" / "2").mkdir(parents=True)
    assert _cli(argv + ["--name", "other"])[0] == 0
    assert sorted(p.name for p in (repo / "other").iterdir()) == \
        ["1", "2", "README.md", "config.pbtxt", "labels.txt"]
    # ... unless that version is served with another config (one config serves all versions)
    (repo / "third" / "2").mkdir(parents=True)
    (repo / "third" / "config.pbtxt").write_text('name: "third"\nmax_batch_size: 8\n')
    assert _cli(argv + ["--name", "third"])[0] == 1
    assert "holds versions with another config.pbtxt" in capsys.readouterr().err
    assert sorted(p.name for p in (repo / "third").iterdir()) == ["2", "config.pbtxt"]


def tuned_stand_in(foreign_model: Path, out: Path, classes: list[str]) -> Path:
    """A file in the format ``featurebank finetune`` exports: a self-describing model whose
    ``logits`` layer scores ``classes``, with its lineage under ``featurebank.finetune``
    (here the adopted foreign model's 5 logits; a real fine-tune takes minutes)."""
    proto = onnx.load(str(foreign_model))
    lineage = {"classes": classes, "train_feature_set": "0123456789abcdef", "chosen": "finetuned"}
    proto.metadata_props.add(key="featurebank.finetune", value=json.dumps(lineage))
    onnx.save(proto, str(out))
    return out


def test_tuned_onnx_deploys_the_same_way(folders, foreign_model, tmp_path):
    classes = ["a", "b", "c", "d", "e"]
    tuned = tuned_stand_in(foreign_model, tmp_path / "tuned.onnx", classes)
    repo = tmp_path / "repo"
    code, said = _cli(["deploy", str(tuned), "--triton", str(repo)])
    assert code == 0 and not (tmp_path / "tuned.deploy.onnx").exists(), said
    check_config_against_graph(repo / "tuned", read_config(repo / "tuned"), classes)
    assert _cli(["deploy", str(tuned)])[0] == 0  # default: tuned.deploy.onnx beside it
    expected = predict_answers(tuned, folders["test3"])
    paths = sorted(expected)
    for path in (tmp_path / "tuned.deploy.onnx", repo / "tuned" / "1" / "model.onnx"):
        proba, label, got = fused_answers(path, paths)
        assert got == classes
        want = np.array([[expected[p][1][c] for c in classes] for p in paths])
        np.testing.assert_allclose(proba, want, atol=1e-5)
        assert [classes[i] for i in label] == [expected[p][0] for p in paths]
    meta = json.loads({p.key: p.value for p in onnx.load(str(tmp_path / "tuned.deploy.onnx"))
                       .metadata_props}["featurebank.deploy"])
    assert meta["kind"] == "finetuned"
    assert meta["lineage"]["training_digest"] == "0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("tritonserver") is None,
                    reason="no tritonserver binary here (it ships in NVIDIA's Triton container)")
def test_tritonserver_answers_as_onnxruntime(classifier, folders, foreign_model, tmp_path):
    grpcclient = pytest.importorskip("tritonclient.grpc")
    repo = tmp_path / "repo"
    assert _cli(["deploy", str(classifier), "--triton", str(repo), "--name", "digits",
                 "--model", str(foreign_model), "--instance-kind", "cpu"])[0] == 0
    port = _free_port()
    server = subprocess.Popen(["tritonserver", f"--model-repository={repo}",
                               f"--grpc-port={port}", "--allow-http=false",
                               "--allow-metrics=false"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        for _ in range(120):
            try:
                if client.is_model_ready("digits"):
                    break
            except Exception:  # not listening yet
                pass
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            time.sleep(0.5)
        paths = sorted(str(p) for p in folders["test3"].rglob("*.png"))
        proba, label, _ = fused_answers(repo / "digits" / "1" / "model.onnx", paths)
        from featurebank.deploy import build_deployable
        from featurebank.extractor import decode

        pre = build_deployable(classifier, model=foreign_model).preprocessing
        pixels = np.stack([decode(p, pre) for p in paths])
        request = grpcclient.InferInput("pixels", list(pixels.shape), "UINT8")
        request.set_data_from_numpy(pixels)
        result = client.infer("digits", [request])
        np.testing.assert_allclose(result.as_numpy("probabilities"), proba, atol=1e-5)
        np.testing.assert_array_equal(result.as_numpy("label"), label)
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_preferred_batch_sizes_come_from_the_benchmark():
    """config.pbtxt's preferred sizes are the ones benchmarks/deploy.py measured."""
    result = json.loads((Path(__file__).parents[1] / "benchmarks" / "results" / "deploy.json")
                        .read_text())
    assert list(PREFERRED_BATCH_SIZES) == result["preferred_batch_sizes"]
