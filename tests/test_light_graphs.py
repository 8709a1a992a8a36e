"""The classic model-zoo graphs as the onnx package ships them: IR version 3, opset 9, fixed
batch 1, structure only (weights filled by ``ConstantOfShape``), under
``onnx/backend/test/data/light/``. They adopt, list their stages and pools (naming rule 5), and
embed at every friendly cut; the cut vectors equal the untouched graph's tensors, pooled. The
weights are constants, so these tests check structure and parity, never accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from featurebank.export import adopt, read_onnx_metadata
from featurebank.export._metadata import NAMING_RULE
from featurebank.extractor import Extractor
from featurebank.spec import META_SPEC
from tests._onnx_graphs import outputs_of

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
SIZE = 224
#: graph -> (what pools it, the friendly names its catalogue must hold, the rule it needs)
EXPECTED = {
    "bvlc_alexnet": ("fc", 4, 5),
    "densenet121": ("global", 5, 4),
    "inception_v1": ("window", 5, 5),
    "inception_v2": ("window", 5, 5),
    "resnet50": ("window", 5, 5),
    "shufflenet": ("window", 5, 5),
    "squeezenet": ("global", 4, 4),
    "vgg19": ("fc", 6, 5),
    "zfnet512": ("fc", 5, 5),
}
#: the quick subset run without the slow marker (one of each kind of head)
QUICK = ("resnet50", "inception_v1", "bvlc_alexnet", "squeezenet")

pytestmark = pytest.mark.skipif(not LIGHT.is_dir(), reason=f"the onnx package has no {LIGHT}")


@pytest.fixture(scope="module")
def light(tmp_path_factory):
    """name -> adopted path, adopted on first use (BGR 0-255: what the Caffe2 graphs take)."""
    root = tmp_path_factory.mktemp("light")
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = root / f"{name}.onnx"
            adopt(LIGHT / f"light_{name}.onnx", made[name], pixel_range=255, channel_order="bgr")
        return made[name]

    return get


def check_every_friendly_cut(path: Path, name: str) -> None:
    info = read_onnx_metadata(path)
    friendly = [la for la in info.layers if la.name != la.tensor]
    pixels = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3), np.uint8)
    vectors = Extractor(str(path), layers=[la.name for la in friendly], device="cpu",
                        batch_size=2).embed_pixels(pixels)
    bgr = pixels[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32)
    refs = outputs_of(LIGHT / f"light_{name}.onnx", [la.tensor for la in friendly], bgr)
    for la, got, ref in zip(friendly, vectors, refs, strict=True):
        want = ref.reshape(len(ref), -1) if ref.ndim == 2 else ref.mean(axis=(2, 3))
        assert got.shape == want.shape, (name, la.name)
        scale = max(1.0, float(np.abs(want).max()))
        # float32 sums in another order (the normalisation folded into the graph) on constant
        # weights that grow the values to 1e20 and more: relative to the largest value
        assert float(np.abs(got - want).max()) / scale <= 1e-4, (name, la.name)


def check_names(path: Path, name: str) -> None:
    kind, stages, rule = EXPECTED[name]
    info = read_onnx_metadata(path)
    by_name = {la.name: la for la in info.layers}
    assert [f"stage.{k}" for k in range(1, stages + 1)] == \
        [n for n in by_name if n.startswith("stage.")], name
    assert info.spec.naming == rule, name
    head, pool = by_name["head"], by_name.get("pool")
    assert pool is not None, f"{name}: no pool named"
    assert min(head.shape[1:]) > 1, f"{name}: head is a pooled map {head.shape}"
    proto = onnx.load(str(LIGHT / f"light_{name}.onnx"))
    producer = {o: n for n in proto.graph.node for o in n.output}
    if kind == "window":  # AveragePool to 1x1 reads the head; pool is its flattened output
        pools = [n for n in proto.graph.node if n.op_type == "AveragePool"
                 and n.input[0] == head.tensor]
        assert len(pools) == 1, name
        assert pool.layout == "NC" and pool.shape == head.shape[:1]
    elif kind == "fc":  # pool: the classifier's input, fc7 after its ReLU
        classifier = producer[by_name["logits"].tensor]
        assert classifier.op_type == "Gemm"
        assert producer[pool.tensor].op_type == "Relu"
        assert pool.layout == "NC" and pool.shape[0] == proto_weight_rows(proto, classifier)


def proto_weight_rows(proto: onnx.ModelProto, gemm: onnx.NodeProto) -> int:
    """The input width of a Gemm whose weights are made by ConstantOfShape (shape initializer)."""
    shapes = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    made = {n.output[0]: shapes.get(n.input[0]) for n in proto.graph.node
            if n.op_type == "ConstantOfShape"}
    weight = made[gemm.input[1]]
    trans_b = any(a.name == "transB" and a.i for a in gemm.attribute)
    return int(weight[1] if trans_b else weight[0])


@pytest.mark.parametrize("name", QUICK)
def test_light_graph_names_and_embeds_at_every_friendly_cut(light, name):
    """IR 3 graphs: the feature graph no longer fails onnx's check ("in initializer but not in
    graph input"), and every friendly cut equals the original tensor, pooled."""
    path = light(name)
    check_names(path, name)
    check_every_friendly_cut(path, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in EXPECTED if n not in QUICK])
def test_every_other_light_graph(light, name):
    path = light(name)
    check_names(path, name)
    check_every_friendly_cut(path, name)


def test_rule_5_renames_get_new_fingerprints_and_rule_4_stores_refuse_them(light, tmp_path):
    """The light ResNet-50 under rule 4 named the pooled 1x1 map ``head`` and had no ``pool``;
    a file adopted under rule 4 keeps its fingerprint, and rows made now never join it."""
    from featurebank.classical import SpecMismatchError, load_features
    from featurebank.extractor.store import FeatureStore

    adopted = light("resnet50")
    proto = onnx.load(str(adopted))
    meta = next(p for p in proto.metadata_props if p.key == META_SPEC)
    spec = json.loads(meta.value)
    assert spec["naming"] == NAMING_RULE == 5
    spec["naming"] = 4
    meta.value = json.dumps(spec)
    old = tmp_path / "rule4.onnx"
    onnx.save(proto, str(old))
    # L2-normalised: the constant weights grow the maps past float16, the store's dtype
    old_ex = Extractor(str(old), layers=["head"], device="cpu", normalize=True)
    new_ex = Extractor(str(adopted), layers=["head"], device="cpu", normalize=True)
    assert old_ex.specs[0].fingerprint() != new_ex.specs[0].fingerprint()
    pixels = np.random.default_rng(1).integers(0, 256, (2, SIZE, SIZE, 3), np.uint8)
    keys, paths = ["a", "b"], ["/a.png", "/b.png"]
    with FeatureStore(tmp_path / "s.h5", mode="a") as store:
        store.add_rows(old_ex.specs[0], keys, old_ex.embed_pixels(pixels)[0], paths)
    new_fp = new_ex.specs[0].fingerprint()
    with FeatureStore(tmp_path / "s.h5") as store:
        assert not store.has(new_fp, keys).any()
        with pytest.raises(SpecMismatchError, match=new_fp):
            load_features(store, fingerprints=[new_fp])


def _ir3_batch_statistics_graph(path: Path) -> None:
    """An IR 3, opset 9 graph that centres each map on its batch mean (so it keeps its batch of
    1 and runs inside a Scan), every weight also a graph input as IR 3 requires."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    weights = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1"),
               numpy_helper.from_array(rng.normal(0, 0.3, (16, 8, 3, 3)).astype(np.float32), "w2"),
               numpy_helper.from_array(rng.normal(0, 0.3, (5, 16)).astype(np.float32), "fc"),
               numpy_helper.from_array(rng.normal(0, 0.3, (5,)).astype(np.float32), "fc_b")]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["c1"], ["mu"], axes=[0, 2, 3], keepdims=1),
        helper.make_node("Sub", ["c1", "mu"], ["centred"]),
        helper.make_node("Relu", ["centred"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fc_b"], ["logits"], transB=1),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])]
    inputs += [helper.make_tensor_value_info(w.name, TensorProto.FLOAT, list(w.dims)) for w in weights]
    graph = helper.make_graph(nodes, "ir3", inputs,
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])],
                              initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_ir3_graph_that_keeps_its_batch_runs_in_a_scan(tmp_path):
    """The Scan body of a fixed-batch IR 3 graph passes onnx's check too, and the chunks give
    what the untouched graph gives one image at a time."""
    src, out = tmp_path / "ir3.onnx", tmp_path / "ir3.adopted.onnx"
    _ir3_batch_statistics_graph(src)
    adopt(src, out, pixel_range=1, channel_order="rgb")
    info = read_onnx_metadata(out)
    assert info.extra["batch"] == 1
    names = ["stage.1", "pool", "logits"]
    tensors = [next(la.tensor for la in info.layers if la.name == n) for n in names]
    pixels = np.random.default_rng(5).integers(0, 256, (3, 16, 16, 3), np.uint8)
    got = Extractor(str(out), layers=names, device="cpu").embed_pixels(pixels)
    proto = onnx.load(str(src))
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors[:2])
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255
    runs = [session.run(tensors, {"x": x[i:i + 1]}) for i in range(3)]
    for k, vec in enumerate(got):
        ref = np.concatenate([r[k] for r in runs])
        ref = ref.mean(axis=(2, 3)) if ref.ndim == 4 else ref
        np.testing.assert_allclose(vec, ref, rtol=1e-5, atol=1e-5)
