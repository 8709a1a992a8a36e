"""The truncated, pooled ONNX graph reproduces the torch module's activations."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from featurebank.errors import FeaturebankError
from featurebank.extractor._preprocess import decode
from featurebank.extractor.graphs._cut import build_feature_graph

LAYERS = ["blocks.3", "blocks.10", "head"]


@pytest.fixture(scope="module")
def pixels(lite0_onnx, real_photos) -> np.ndarray:
    """The same uint8 pixels feed both sides: two real photos prepared by ``decode``."""
    from featurebank.export import read_onnx_metadata

    pre = read_onnx_metadata(lite0_onnx).spec.preprocessing
    return np.stack([decode(real_photos[n], pre) for n in ("chelsea", "coffee")])


@pytest.fixture(scope="module")
def torch_maps(lite0_onnx, pixels) -> dict[str, np.ndarray]:
    """Activations of the torch module on the pixels normalised in torch."""
    torch = pytest.importorskip("torch")
    from featurebank.export import build_torch_model, read_onnx_metadata

    pre = read_onnx_metadata(lite0_onnx).spec.preprocessing
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    with torch.no_grad():
        feats = build_torch_model("efficientnet_lite0").features(x)
    return {k: feats[k].numpy().astype(np.float64) for k in LAYERS}


def _pool(a: np.ndarray, pool: str, p: float = 3.0) -> np.ndarray:
    if pool == "avg":
        return a.mean(axis=(2, 3))
    if pool == "max":
        return a.max(axis=(2, 3))
    if pool == "gem":
        return (np.clip(a, 1e-6, None) ** p).mean(axis=(2, 3)) ** (1.0 / p)
    return a.reshape(len(a), -1)


def _run(graph, pixels) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(graph.model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return sess.run(graph.output_names, {"pixels": pixels})


@pytest.mark.parametrize(("pool", "normalize"),
                         [("avg", False), ("max", False), ("gem", False), ("none", False),
                          ("avg", True)])
def test_onnx_cut_matches_torch(lite0_onnx, pixels, torch_maps, pool, normalize):
    graph = build_feature_graph(lite0_onnx, LAYERS, pool=pool, gem_p=3.0, normalize=normalize)
    assert [s.layer for s in graph.specs] == LAYERS
    assert all(s.pool == pool and s.normalize == normalize for s in graph.specs)
    outs = _run(graph, pixels)
    for layer, out, dim in zip(LAYERS, outs, graph.dims, strict=True):
        ref = _pool(torch_maps[layer], pool)
        if normalize:
            ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
            np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
        assert out.dtype == np.float32 and out.shape == (2, dim) == ref.shape, layer
        # 1e-4 relative to the activations' scale (deep maps reach tens)
        scale = max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(out, ref, atol=1e-4 * scale, rtol=1e-4, err_msg=layer)


def test_dims_and_pruning(lite0_onnx):
    graph = build_feature_graph(lite0_onnx, ["blocks.3"], pool="avg")
    assert graph.dims == [40]
    full = build_feature_graph(lite0_onnx, ["head"], pool="none")
    assert full.dims == [1280 * 7 * 7]
    # the cut keeps only what blocks.3 needs: far fewer nodes than the full network
    assert len(graph.model.graph.node) < 0.5 * len(full.model.graph.node)
    assert graph.model.graph.input[0].name == "pixels"
    assert graph.model.graph.input[0].type.tensor_type.elem_type == 2  # uint8


def test_tensor_name_accepted(lite0_onnx):
    from featurebank.export import read_onnx_metadata

    tensor = read_onnx_metadata(lite0_onnx).layer("blocks.10").tensor
    graph = build_feature_graph(lite0_onnx, [tensor])
    assert graph.specs[0].layer == "blocks.10" and graph.dims == [112]


def test_unknown_layer_suggests_close_names(lite0_onnx):
    with pytest.raises(FeaturebankError) as err:
        build_feature_graph(lite0_onnx, ["block.10"])
    msg = str(err.value)
    assert "block.10" in msg and "closest: blocks.10" in msg
    with pytest.raises(FeaturebankError, match="head"):
        build_feature_graph(lite0_onnx, ["haed"])


def test_foreign_onnx_needs_preprocessing(tmp_path):
    """A small hand-made ONNX (not ours) is cut given the user's preprocessing."""
    from onnx import TensorProto, helper, numpy_helper, save

    from featurebank.spec import Preprocessing

    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("GlobalAveragePool", ["relu"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["y"])]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                        ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                          initializer=[numpy_helper.from_array(w, "w")])
    path = tmp_path / "tiny.onnx"
    save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(FeaturebankError, match="preprocessing"):
        build_feature_graph(path, ["relu"])
    pre = Preprocessing(input_size=(8, 8), resize_size=8, mean=(0.5,) * 3, std=(0.25,) * 3)
    graph = build_feature_graph(path, ["relu"], pool="max", preprocessing=pre)
    px = rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    (out,) = _run(graph, px)
    x = (px.transpose(0, 3, 1, 2) / 255.0 - 0.5) / 0.25
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = np.zeros((3, 4, 8, 8))
    for i in range(3):
        for j in range(3):
            conv += np.einsum("nchw,oc->nohw", xp[:, :, i:i + 8, j:j + 8], w[:, :, i, j])
    ref = np.maximum(conv, 0).max(axis=(2, 3))
    assert graph.specs[0].model.source == "onnx"
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_every_bad_layer_is_reported_with_the_models_own_name(lite0_onnx):
    """Two misspelt layers: both named in one error, and the hint lists the layers of the model
    as the user named it, not of the cached file's path."""
    with pytest.raises(FeaturebankError) as err:
        build_feature_graph(lite0_onnx, ["haed", "head", "blokcs.3"], name="efficientnet_lite0")
    msg = str(err.value)
    assert "'haed'" in msg and "'blokcs.3'" in msg and "closest: blocks.3" in msg
    assert msg.endswith("(see 'featurebank layers efficientnet_lite0')") and msg.count("(see") == 1
    # each problem names the model as the user did, never the cache file's digest-named path
    assert "is not in efficientnet_lite0;" in msg and lite0_onnx.name not in msg


def test_a_layer_named_twice_by_name_and_by_tensor_is_one_cut(lite0_onnx):
    """``blocks.2`` and its tensor's name are one cut: one output, named as the catalogue
    names it (the graph built with both failed on duplicate metadata keys)."""
    from featurebank.export import read_onnx_metadata

    tensor = read_onnx_metadata(lite0_onnx).layer("blocks.2").tensor
    graph = build_feature_graph(lite0_onnx, ["blocks.2", tensor, "head"])
    assert [s.layer for s in graph.specs] == ["blocks.2", "head"]
