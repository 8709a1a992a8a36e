"""``featurebank export / models / layers``, bad input, foreign ONNX files and preprocessing."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import featurebank.export._cache
import featurebank.export._registry
import featurebank.spec
from featurebank import export
from featurebank.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def lite0_state():
    """The bundled Lite0 state dict (checkpoint key names), loaded once."""
    torch = pytest.importorskip("torch")
    return torch.load(export.get_model_entry("efficientnet_lite0").default_weights(), weights_only=True)


@pytest.fixture(scope="module")
def foreign_onnx(tmp_path_factory):
    """A tiny conv net written with onnx.helper: a file featurebank did not make."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(16, 8, 3, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["conv1"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"]),
        helper.make_node("Conv", ["relu1", "w2"], ["conv2"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv2"], ["relu2"]),
        helper.make_node("GlobalAveragePool", ["relu2"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 64, 64])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 16])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("foreign") / "tiny_net.onnx"
    onnx.save(model, path)
    return path


def test_models_lists_the_registry(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= set(rows)
    assert "224x224" in rows["efficientnet_lite0"] and "4.65M" in rows["efficientnet_lite0"]
    assert "260x260" in rows["efficientnet_lite2"] and rows["efficientnet_lite2"].endswith("yes")
    # the count comes from the registry entry (no CLI reaching into the export stage's modules):
    # EfficientNet-Lite0's published size, 4,652,008 parameters; a pattern entry has none
    from featurebank.export import get_model_entry, list_models

    assert get_model_entry("efficientnet_lite0").parameter_count() == 4_652_008
    assert [e.parameter_count() for e in list_models() if ":" in e.name] == [None, None]


def test_layers_of_an_exported_file(capsys, lite0_onnx):
    code, out, _ = run_cli(capsys, "layers", str(lite0_onnx))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["name", "tensor"]
    head = next(line.split() for line in lines if line.startswith("head "))
    assert head[1:4] == ["layer.head", "1280x7x7", "NCHW"] and 99.0 < float(head[4]) < 100.0
    code, out, _ = run_cli(capsys, "layers", str(lite0_onnx), "--json")
    assert [d["name"] for d in json.loads(out)][-2:] == ["head", "logits"]


def test_layers_of_a_registry_name_uses_the_cache(capsys, lite0_onnx):
    code, out, _ = run_cli(capsys, "layers", "efficientnet_lite0", "--json")
    assert code == 0
    assert json.loads(out) == [la.to_dict() for la in export.read_onnx_metadata(lite0_onnx).layers]


def test_export_fine_tuned_weights_at_another_size(capsys, tmp_path, lite0_state, real_photos):
    """--weights and --input-size: the file holds those weights and that size, and says so."""
    torch = pytest.importorskip("torch")
    state = dict(lite0_state)
    state["_fc.bias"] = state["_fc.bias"] + torch.linspace(-1, 1, 1000)  # a 'fine-tuned' head
    weights = tmp_path / "tuned.pth"
    torch.save(state, weights)
    out = tmp_path / "tuned.onnx"
    code, text, err = run_cli(capsys, "export", "efficientnet_lite0", "-o", str(out),
                              "--weights", str(weights), "--input-size", "256")
    assert code == 0, err
    assert str(out) in text and sorted(p.name for p in tmp_path.iterdir()) == ["tuned.onnx", "tuned.pth"]
    info = export.read_onnx_metadata(out)
    assert info.spec.weights_sha256 == featurebank.spec.sha256_file(str(weights))
    assert info.spec.preprocessing.input_size == (256, 256)
    assert info.spec.preprocessing.resize_size == 290  # crop fraction kept: 256 / 0.882
    assert info.layer("head").shape == (1280, 8, 8)
    model = export.build_torch_model("efficientnet_lite0", weights=str(weights), input_size=256)
    x = np.random.default_rng(1).normal(size=(2, 3, 256, 256)).astype(np.float32)
    (logits,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"input": x})
    with torch.no_grad():
        assert np.abs(logits - model(torch.from_numpy(x)).numpy()).max() <= 1e-4


def test_unknown_model_lists_known_ones(capsys, tmp_path):
    code, _, err = run_cli(capsys, "export", "efficientnet_b9", "-o", str(tmp_path / "m.onnx"))
    assert code == 1
    assert "unknown model 'efficientnet_b9'" in err and "efficientnet_lite0" in err
    assert "efficientnet_lite2" in err and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("naming", ["checkpoint", "featurebank"])
def test_weights_of_the_wrong_shape_name_the_parameter(capsys, tmp_path, lite0_state, naming):
    torch = pytest.importorskip("torch")
    from featurebank.export._efficientnet_lite import translate_state_dict

    state = dict(lite0_state) if naming == "checkpoint" else translate_state_dict(lite0_state)
    key = "_fc.weight" if naming == "checkpoint" else "classifier.weight"
    state[key] = torch.zeros(10, 1280)
    weights = tmp_path / "other.pth"
    torch.save(state, weights)
    code, _, err = run_cli(capsys, "export", "efficientnet_lite0", "-o", str(tmp_path / "m.onnx"),
                           "--weights", str(weights))
    assert code == 1
    assert f"'{key}'" in err and "(10, 1280)" in err and "(1000, 1280)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.pth"]


def test_weights_that_are_not_a_state_dict(capsys, tmp_path):
    bogus = tmp_path / "notes.pth"
    bogus.write_text("not a checkpoint")
    code, _, err = run_cli(capsys, "export", "efficientnet_lite0", "-o", str(tmp_path / "m.onnx"),
                           "--weights", str(bogus))
    assert code == 1 and str(bogus) in err and "state dict" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.pth"]


@pytest.mark.parametrize("where", ["missing-folder", "folder-is-a-file", "is-a-directory"])
def test_unwritable_output_path(capsys, tmp_path, where):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    target = {"missing-folder": tmp_path / "nope" / "m.onnx",
              "folder-is-a-file": tmp_path / "afile" / "m.onnx",
              "is-a-directory": tmp_path / "adir"}[where]
    code, _, err = run_cli(capsys, "export", "efficientnet_lite0", "-o", str(target))
    assert code == 1 and ("cannot write" in err or "is a folder" in err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]
    assert list((tmp_path / "adir").iterdir()) == []


def test_read_only_folder_fails_before_exporting(capsys, tmp_path, monkeypatch):
    from featurebank.export import _onnx_export as onnx_export

    def read_only(*_a, **_k):
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(onnx_export.tempfile, "NamedTemporaryFile", read_only)
    monkeypatch.setattr(onnx_export, "build_torch_model", pytest.fail)  # must not get that far
    code, _, err = run_cli(capsys, "export", "efficientnet_lite0", "-o", str(tmp_path / "m.onnx"))
    assert code == 1 and "Read-only file system" in err and list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch, foreign_onnx):
    from featurebank.export import _onnx_export as onnx_export

    proto = onnx.load(str(foreign_onnx))

    def disk_full(model, path):
        with open(path, "wb") as f:
            f.write(model.SerializeToString()[:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx_export.onnx, "save", disk_full)
    with pytest.raises(featurebank.FeaturebankError, match="No space left"):
        onnx_export._atomic_save(proto, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b"", b"hello, I am text\n", bytes(range(256)) * 8])
def test_a_file_that_is_not_onnx(capsys, tmp_path, content):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(content)
    code, _, err = run_cli(capsys, "layers", str(bad))
    assert code == 1 and str(bad) in err and "ONNX" in err
    with pytest.raises(featurebank.FeaturebankError, match="not .*ONNX"):
        export.read_onnx_metadata(bad)


def test_layers_of_a_foreign_file_lists_candidates(capsys, foreign_onnx):
    info = export.read_onnx_metadata(foreign_onnx)
    assert info.spec is None and info.input_name == "image"
    shapes = {la.tensor: la.shape for la in info.layers}
    assert shapes["relu1"] == (8, 32, 32) and shapes["relu2"] == (16, 16, 16)
    assert shapes["conv2"] == (16, 16, 16) and shapes["embedding"] == (16,)
    conv1, conv2 = 8 * 32 * 32 * (3 * 3 * 3), 16 * 16 * 16 * (8 * 3 * 3)  # multiply-adds
    assert info.layer("relu1").flops_share == pytest.approx(conv1 / (conv1 + conv2), abs=1e-6)
    # friendly names: the last activation per resolution, the global pool's input and output
    names = {la.name: la.tensor for la in info.layers}
    assert names["stage.1"] == "relu1" and names["stage.2"] == "relu2"
    assert names["head"] == "relu2" and names["pool"] == "embedding"
    assert info.layer("relu2").layout == "NCHW" and info.layer("pool").layout == "NC"
    code, out, _ = run_cli(capsys, "layers", str(foreign_onnx))
    assert code == 0 and "not made by featurebank" in out
    assert any(line.split()[:4] == ["head", "relu2", "16x16x16", "NCHW"] for line in out.splitlines())


def test_foreign_reading_of_an_export_agrees_with_its_catalogue(tmp_path, lite0_onnx):
    """Strip the metadata of a Lite0 export: shape inference and the graph-based FLOPs estimate
    find the same shapes and shares that torch measured at export time."""
    proto = onnx.load(str(lite0_onnx))
    del proto.metadata_props[:]
    onnx.save(proto, tmp_path / "stripped.onnx")
    foreign = export.read_onnx_metadata(tmp_path / "stripped.onnx")
    assert foreign.spec is None
    for la in export.read_onnx_metadata(lite0_onnx).layers:
        found = foreign.layer(la.tensor)
        assert found is not None, la.tensor
        assert found.shape == la.shape and found.flops_share == pytest.approx(la.flops_share, abs=1e-5)


def test_preprocessing_for_foreign_files(tmp_path, foreign_onnx):
    toml = tmp_path / "pre.toml"
    toml.write_text('[preprocessing]\ninput_size = 64\ninterpolation = "bilinear"\n'
                    "mean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]\n")
    pre = export.load_preprocessing(toml, resize_size=72)
    assert pre.input_size == (64, 64) and pre.resize_size == 72 and pre.interpolation == "bilinear"
    js = tmp_path / "pre.json"
    js.write_text(json.dumps({"input_size": [64, 48], "mean": [0.5] * 3, "std": [0.25] * 3}))
    pre = export.load_preprocessing(js, interpolation="nearest")
    assert pre.input_size == (64, 48) and pre.resize_size == 48 and pre.std == (0.25,) * 3
    assert export.load_preprocessing(None, input_size=32).input_size == (32, 32)
    spec = export.foreign_model_spec(foreign_onnx, pre)
    digest = featurebank.spec.sha256_file(str(foreign_onnx))
    assert spec.model == f"onnx-{digest[:16]}" and spec.source == "onnx" and spec.preprocessing == pre
    assert spec.weights_sha256 == digest  # named by content, not by the file's stem


def test_flag_names_are_accepted_in_preprocessing_files(tmp_path):
    js = tmp_path / "pre.json"
    js.write_text(json.dumps({"input_size": "48,64", "resize": 80, "pixel_range": 255,
                              "channel_order": "BGR", "layout": "nhwc", "mean": "104,117,123",
                              "std": [1, 1, 1], "interpolation": "area",
                              "tensor_layout": ["t7=nhwc"], "classes": "names.txt"}))
    pre = export.load_preprocessing(js)
    assert pre.input_size == (48, 64) and pre.resize_size == 80 and pre.pixel_range == 255
    assert pre.channel_order == "bgr" and pre.layout == "nhwc" and pre.mean == (104, 117, 123)
    assert pre.layout_of("t7") == "nhwc" and pre.interpolation == "area"
    assert featurebank.spec.Preprocessing.from_dict(pre.to_dict()) == pre
    with pytest.raises(featurebank.FeaturebankError, match="outside the pixel range"):
        export.load_preprocessing(js, pixel_range=1)


def test_new_conventions_keep_existing_fingerprints(lite0_onnx):
    """Fingerprints computed before layout / channel order / pixel range existed: every store
    and classifier made before keeps its identity (defaults stay out of the spec's JSON)."""
    spec = export.read_onnx_metadata(lite0_onnx).spec
    FS = featurebank.spec.FeatureSpec
    assert FS(spec, "head").fingerprint() == "27d309b30a12c41a"
    assert FS(spec, "blocks.10", "gem", 3.0, True).fingerprint() == "7792dda23f5f0771"
    assert FS(featurebank.spec.ModelSpec("x", "0" * 64), "head").fingerprint() == "63ee723d646926fa"
    assert "layout" not in spec.preprocessing.to_dict()
    changed = featurebank.spec.Preprocessing(**{**spec.preprocessing.to_dict(), "layout": "nhwc"})
    assert FS(featurebank.spec.ModelSpec("x", "0" * 64, changed), "head").fingerprint() != \
        FS(featurebank.spec.ModelSpec("x", "0" * 64, spec.preprocessing), "head").fingerprint()


@pytest.mark.parametrize("text, field", [
    ('{"input_size": 64, "colour": "red"}', "colour"),
    ('{"input_size": 64, "interpolation": "cubic-ish"}', "interpolation"),
    ('{"mean": [0.5, 0.5]}', "mean"),
    ("[1, 2, 3]", "table"),
    ("{not json", "pre.json"),
])
def test_bad_preprocessing_files_are_named(tmp_path, text, field):
    path = tmp_path / "pre.json"
    path.write_text(text)
    with pytest.raises(featurebank.FeaturebankError, match=field) as err:
        export.load_preprocessing(path)
    assert "pre.json" in str(err.value)


def test_bad_input_size(capsys, tmp_path):
    code, _, err = run_cli(capsys, "export", "efficientnet_lite0", "-o", str(tmp_path / "m.onnx"),
                           "--input-size", "8")
    assert code == 1 and "input_size 8" in err and list(tmp_path.iterdir()) == []
