"""ONNX graphs as they come: classic CNN shapes exported at a fixed batch of 1, and converted.

The graphs are small torch CNNs shaped like ResNet, SqueezeNet, DenseNet and MobileNetV2
(benchmarks/harness/classic_cnns.py), exported with a ``Reshape`` to ``[1, -1]`` before the
classifier, and the same graphs rewritten as a converter leaves them (NHWC BGR 0-255 input,
Transposes around every channel-first op, Cast pairs, opaque names). The references are plain
onnxruntime runs of the untouched files, one image at a time.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from featurebank import FeaturebankError
from featurebank.export import adopt, read_onnx_metadata
from featurebank.export._metadata import NAMING_RULE
from featurebank.extractor import Extractor
from tests._onnx_graphs import outputs_of

torch = pytest.importorskip("torch")
from benchmarks.harness.classic_cnns import (  # noqa: E402 - torch first, or skip
    FAMILIES,
    SIZE,
    make_classics,
    stage_tensors,
)
from benchmarks.harness.onnx_variants import to_float16  # noqa: E402

nn = torch.nn
PARITY: dict[str, float] = {}  # graph -> worst relative difference from the original graph
STAGES_FOUND: dict[str, str] = {}
FP16_PARITY: dict[str, float] = {}


def relative(got: np.ndarray, ref: np.ndarray) -> float:
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.abs(got - ref).max()) / max(1.0, float(np.abs(ref).max()))


def to_nchw(value: np.ndarray, layout: str) -> np.ndarray:
    return value.transpose(0, 3, 1, 2) if layout == "NHWC" else value


@pytest.fixture(scope="module")
def classics(tmp_path_factory):
    """Every family in every variant, adopted: (family, variant) -> (Classic, adopted path)."""
    root = tmp_path_factory.mktemp("classics")
    out = {}
    for c in make_classics(root):
        adopted = root / f"{c.family}.{c.variant}.adopted.onnx"
        adopt(c.path, adopted, **c.flags)
        out[c.family, c.variant] = (c, adopted)
    return out


@pytest.mark.parametrize("family, variant", [
    (f, v) for f in FAMILIES for v in ("fixed", "converted")
    if v == "fixed" or getattr(FAMILIES[f], "CONVERTIBLE", True)])
def test_classic_graph_adopts_with_its_stages_and_parity(classics, family, variant):
    c, adopted = classics[family, variant]
    info = read_onnx_metadata(adopted)
    # the batch axis became dynamic, and the rewrite was checked against one image at a time
    assert "batch" not in info.extra
    assert info.extra["batch_rewrite"] and info.extra["batch_parity"] <= 1e-5
    graph = onnx.load(str(adopted)).graph
    assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim][:1] == ["N"]
    assert [o.name for o in graph.output] == [o.name for o in onnx.load(str(c.path)).graph.output]
    # every listed tensor is a float activation with a followed layout: no '?', no shapes
    assert {la.layout for la in info.layers} <= {"NCHW", "NHWC", "NC"}
    by_name = {la.name: la for la in info.layers}
    stages = sorted((n for n in by_name if n.startswith("stage.")), key=lambda n: int(n[6:]))
    STAGES_FOUND[f"{family}.{variant}"] = f"{len(stages)}/{len(c.stage_scopes)}"
    assert len(stages) == len(c.stage_scopes), stages
    assert by_name["logits"].shape == (10,)
    head = by_name["head"]
    channels = head.shape[0] if head.layout == "NCHW" else head.shape[-1]
    assert by_name["pool"].shape in ((channels,), (channels, 1, 1))  # (a conv classifies it)

    pixels = np.random.default_rng(7).integers(0, 256, (3, SIZE, SIZE, 3), np.uint8)
    # stage.K holds the values of the last block at its resolution in the torch export
    expected = outputs_of(c.torch_path, stage_tensors(onnx.load(str(c.torch_path)), c.stage_scopes),
                          c.to_torch_input(pixels))
    found = outputs_of(c.path, [by_name[s].tensor for s in stages], c.model_input(pixels))
    for stage, want, got in zip(stages, expected, found, strict=True):
        assert relative(to_nchw(got, by_name[stage].layout), want) <= 1e-5, stage
    # the vectors, from a batch of 3 through the rewritten graph, equal the original graph's
    cuts = [*stages, "head", "pool", "logits"]
    refs = outputs_of(c.path, [by_name[n].tensor for n in cuts], c.model_input(pixels))
    ex = Extractor(str(adopted), layers=cuts, device="cpu", threads=1)
    for cut, got, ref in zip(cuts, ex.embed_pixels(pixels), refs, strict=True):
        la = by_name[cut]
        want = ref if ref.ndim == 2 else ref.mean((2, 3) if la.layout == "NCHW" else (1, 2))
        PARITY[f"{family}.{variant}"] = max(PARITY.get(f"{family}.{variant}", 0.0),
                                            relative(got, want))
        assert relative(got, want) <= 1e-5, cut


@pytest.mark.parametrize("family, keep_io_types", [("resnet", True), ("mobilenet", True),
                                                   ("densenet", False)])
def test_float16_activations_are_cut_and_cast_before_pooling(classics, tmp_path, family,
                                                             keep_io_types):
    """Float16 weights and activations (float32 or float16 input and output): the stages are
    float16 maps, pooled in float32, equal to the original graph's within float16's precision
    (onnxruntime's optimiser may drop a float16 rounding where the cut graph casts a map to
    float32: up to 2.3e-4 here; float16's own step is 1e-3)."""
    c, _ = classics[family, "fixed"]
    src, adopted = tmp_path / "fp16.onnx", tmp_path / "fp16.adopted.onnx"
    onnx.save(to_float16(onnx.load(str(c.path)), keep_io_types), str(src))
    adopt(src, adopted, pixel_range=1, channel_order="rgb")
    info = read_onnx_metadata(adopted)
    by_name = {la.name: la for la in info.layers}
    stages = [n for n in by_name if n.startswith("stage.")]
    assert len(stages) == len(c.stage_scopes) and by_name[stages[0]].dtype == "float16"
    float32 = read_onnx_metadata(classics[family, "fixed"][1]).layer("logits")
    assert by_name["logits"].tensor == float32.tensor  # the float32 output where there is one
    assert by_name["logits"].dtype == (None if keep_io_types else "float16")
    cuts = [*stages, "head", "pool", "logits"]
    pixels = np.random.default_rng(8).integers(0, 256, (3, SIZE, SIZE, 3), np.uint8)
    x = c.to_torch_input(pixels).astype(np.float32 if keep_io_types else np.float16)
    refs = outputs_of(src, [by_name[n].tensor for n in cuts], x)
    ex = Extractor(str(adopted), layers=cuts, device="cpu", threads=1)
    for cut, got, ref in zip(cuts, ex.embed_pixels(pixels), refs, strict=True):
        ref = ref.astype(np.float64)
        want = ref if ref.ndim == 2 else ref.mean((2, 3))
        assert got.dtype == np.float32 and relative(got, want) <= 1e-3, cut
        FP16_PARITY[family] = max(FP16_PARITY.get(family, 0.0), relative(got, want))


def test_classifier_conv_is_never_a_stage(classics):
    """SqueezeNet: the 10x9x9 classifier map is the head, its pooled map the logits."""
    c, adopted = classics["squeezenet", "fixed"]
    info = read_onnx_metadata(adopted)
    by_name = {la.name: la for la in info.layers}
    assert by_name["head"].shape == (10, 9, 9)
    assert all(la.shape[0] != 10 for la in info.layers if la.name.startswith("stage."))
    assert by_name["pool"].tensor == by_name["logits"].tensor == "output"


def test_layers_lists_the_friendly_cuts_of_a_converted_graph(classics, capsys):
    from featurebank.cli import main

    _, adopted = classics["resnet", "converted"]
    assert main(["layers", str(adopted)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()[1:] if line and not line.startswith("(")]
    assert [r[0] for r in rows] == ["stage.1", "stage.2", "stage.3", "stage.4", "head", "pool",
                                    "logits"]
    assert all(r[3] in ("NHWC", "NC") for r in rows) and "?" not in out
    assert "--all" in out
    assert main(["layers", str(adopted), "--all", "--json"]) == 0
    every = json.loads(capsys.readouterr().out)
    assert len(every) > 3 * len(rows) and all(la["layout"] in ("NHWC", "NCHW", "NC") for la in every)
    # every raw tensor listed is a floating-point activation of the listed shape and type: no
    # shape, index or constant tensor (the graph computes many: Casts of biases, a shape)
    c, _ = classics["resnet", "converted"]
    tensors = list(dict.fromkeys(la["tensor"] for la in every))
    pixels = np.random.default_rng(1).integers(0, 256, (1, SIZE, SIZE, 3), np.uint8)
    values = outputs_of(c.path, tensors, c.model_input(pixels))
    listed = {la["tensor"]: (tuple(la["shape"]), np.dtype(la.get("dtype", "float32")))
              for la in every}
    assert {d for _, d in listed.values()} == {np.dtype("float32"), np.dtype("float64")}  # Casts
    for tensor, value in zip(tensors, values, strict=True):
        assert (value.shape[1:], value.dtype) == listed[tensor], tensor


class BakedFlat(nn.Module):
    """Batch 1 baked in where no constant can be rewritten: the map is flattened to 1-D."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc = nn.Conv2d(3, 6, 3, 2, 1), nn.Linear(6 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).reshape(-1)).unsqueeze(0)


class BatchCentred(nn.Module):
    """Runs on any batch but mixes the images of a batch: only one image at a time is right."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc = nn.Conv2d(3, 6, 3, 2, 1), nn.Linear(6, 4)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        y = y - y.mean(0, keepdim=True) + 0.5
        return self.fc(y.mean((2, 3)))


class PerImagePair(nn.Module):
    """A fixed batch of 2 indexed image by image: no batch constant to rewrite."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc = nn.Conv2d(3, 6, 3, 2, 1), nn.Linear(6, 4)

    def forward(self, x):
        y = torch.relu(self.conv(x)).mean((2, 3))
        return torch.stack([self.fc(y[0]), self.fc(y[1])])


@pytest.mark.parametrize("module, batch, opset, why", [
    (BakedFlat, 1, 17, "does not run on a batch of 3"), (BatchCentred, 1, 17, "differs by"),
    (PerImagePair, 2, 17, "comes out as"), (BakedFlat, 1, 9, "does not run on a batch of 3")])
def test_a_graph_that_keeps_its_batch_runs_in_chunks(tmp_path, module, batch, opset, why):
    """The rewrite fails to run, gives other values, or finds no constant: the graph keeps its
    batch, and the feature graph feeds it chunks of that size (opset 9: converted to 11)."""
    src, dst = tmp_path / "model.onnx", tmp_path / "adopted.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module().eval(), (torch.zeros(batch, 3, 16, 16),), str(src),
                          dynamo=False, opset_version=opset, input_names=["input"],
                          output_names=["output"])
    adopt(src, dst, pixel_range=1, channel_order="rgb")
    info = read_onnx_metadata(dst)
    assert info.extra["batch"] == batch and why in info.extra["batch_reason"]
    relu = next(la for la in info.layers if la.layout == "NCHW")
    pixels = np.random.default_rng(3).integers(0, 256, (5, 16, 16, 3), np.uint8)
    x = pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255
    proto = onnx.load(str(src))
    proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(relu.tensor))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    padded = np.concatenate([x, x[:(-len(x)) % batch]])  # whole chunks of the graph's batch
    runs = [session.run(["output", relu.tensor], {"input": padded[i:i + batch]})
            for i in range(0, len(padded), batch)]
    want_logits = np.concatenate([r[0] for r in runs])[:5]
    want_map = np.concatenate([r[1] for r in runs])[:5].mean((2, 3))
    ex = Extractor(str(dst), layers=["logits", relu.tensor], device="cpu")
    for n in (5, 1, 2):  # a remainder, a single image, one whole chunk
        logits, pooled = ex.embed_pixels(pixels[:n])
        assert relative(logits, want_logits[:n]) <= 1e-5 and relative(pooled, want_map[:n]) <= 1e-5
    with pytest.raises(FeaturebankError, match="any batch"):
        _ = Extractor(str(dst), layers=["logits"], precision="fp16").graph


def test_batch_constants_of_reshape_and_flatten_are_rewritten_and_checked():
    """A Flatten on axis 0 and a Reshape to a Constant [1, -1]: both become batch-free, and
    the rewritten graph on 3 images equals the original one image at a time."""
    from onnx import TensorProto, helper, numpy_helper

    from featurebank.export import plan_batch, rewrite_batch

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
               numpy_helper.from_array(rng.normal(size=(5, 64)).astype(np.float32), "fc")]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["conv"], ["flat"], axis=0),
        helper.make_node("Gemm", ["flat", "fc"], ["logits"], transB=1),
        helper.make_node("Constant", [], ["shape"],
                         value=numpy_helper.from_array(np.array([1, -1], np.int64))),
        helper.make_node("Reshape", ["conv", "shape"], ["vector"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5]),
         helper.make_tensor_value_info("vector", TensorProto.FLOAT, [1, 64])], weights)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    _, changes = rewrite_batch(proto)
    assert len(changes) == 2 and "axis 0 -> 1" in changes[0] and "[0, ...]" in changes[1]
    plan = plan_batch(proto, (3, 8, 8))
    assert plan.batch is None and plan.changes == tuple(changes) and plan.worst <= 1e-5
    assert plan.measured["conv"] == (1, 4, 4, 4) and plan.measured["vector"] == (1, 64)
    x = rng.uniform(0, 1, (3, 3, 8, 8)).astype(np.float32)
    batched = ort.InferenceSession(plan.model.SerializeToString()).run(None, {"x": x})
    single = ort.InferenceSession(proto.SerializeToString())
    for k in range(3):
        for got, want in zip(batched, single.run(None, {"x": x[k:k + 1]}), strict=True):
            assert relative(got[k:k + 1], want) <= 1e-6


def test_one_off_preprocessing_on_a_batch1_file_equals_the_adopted_copy(classics):
    """The original file with its conventions stated: the same rewrite, names and vectors."""
    from featurebank.export import resolve_conventions

    c, adopted = classics["densenet", "converted"]
    pre, _ = resolve_conventions(c.path, **c.flags)
    one_off = Extractor(str(c.path), layers=["stage.3", "pool"], preprocessing=pre, device="cpu")
    native = Extractor(str(adopted), layers=["stage.3", "pool"], device="cpu")
    assert [s.fingerprint() for s in one_off.specs] == [s.fingerprint() for s in native.specs]
    pixels = np.random.default_rng(2).integers(0, 256, (3, SIZE, SIZE, 3), np.uint8)
    for a, b in zip(one_off.embed_pixels(pixels), native.embed_pixels(pixels), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("old_rule", [1, 2, 3])
def test_a_new_naming_rule_changes_the_fingerprint_and_old_stores_refuse(classics, tmp_path,
                                                                         old_rule):
    """An adopted file written under an older naming rule (rule 1: its spec has no 'naming')
    keeps its old fingerprints; the same model adopted now gets new ones, so rows made under the
    new rule never join the old feature set, and a classifier of the old rows refuses them."""
    from featurebank.classical import SpecMismatchError, load_features
    from featurebank.extractor.store import FeatureStore
    from featurebank.spec import META_SPEC

    c, adopted = classics["squeezenet", "fixed"]
    proto = onnx.load(str(adopted))
    meta = next(p for p in proto.metadata_props if p.key == META_SPEC)
    spec = json.loads(meta.value)
    assert spec["naming"] == 4 < NAMING_RULE  # rule 5 renames nothing here: it keeps rule 4
    if old_rule == 1:
        del spec["naming"]  # what the first rule's adopt wrote
    else:
        spec["naming"] = old_rule
    meta.value = json.dumps(spec)
    old = tmp_path / "old.onnx"
    onnx.save(proto, str(old))
    old_ex = Extractor(str(old), layers=["stage.3"], device="cpu")
    new_ex = Extractor(str(adopted), layers=["stage.3"], device="cpu")
    assert old_ex.specs[0].model.naming == old_rule
    assert ("naming" in old_ex.specs[0].model.to_dict()) == (old_rule != 1)
    assert old_ex.specs[0].fingerprint() != new_ex.specs[0].fingerprint()
    pixels = np.random.default_rng(4).integers(0, 256, (4, SIZE, SIZE, 3), np.uint8)
    keys, paths = [f"k{i}" for i in range(4)], [f"/img/{i}.png" for i in range(4)]
    store_path = tmp_path / "old.h5"
    with FeatureStore(store_path, mode="a") as store:
        store.add_rows(old_ex.specs[0], keys, old_ex.embed_pixels(pixels)[0], paths)
    old_fp, new_fp = old_ex.specs[0].fingerprint(), new_ex.specs[0].fingerprint()
    with FeatureStore(store_path) as store:  # the old rows do not count as the new rule's
        assert load_features(store, fingerprints=[old_fp]).X.shape == (4, 24)
        assert not store.has(new_fp, keys).any()
        with pytest.raises(SpecMismatchError, match=new_fp):
            load_features(store, fingerprints=[new_fp])
    with FeatureStore(store_path, mode="a") as store:  # rows of the new rule: a set of their own
        store.add_rows(new_ex.specs[0], keys[:2], new_ex.embed_pixels(pixels[:2])[0], paths[:2])
    with FeatureStore(store_path) as store:
        assert len(store.read(old_fp).keys) == 4 and len(store.read(new_fp).keys) == 2


def test_naming_rule_in_the_spec():
    from featurebank.spec import FeatureSpec, ModelSpec

    old = ModelSpec("onnx-0", "0" * 64, source="onnx")
    assert "naming" not in old.to_dict()  # every fingerprint made before the rule stays
    assert FeatureSpec(old, "stage.1").fingerprint() == FeatureSpec(
        ModelSpec.from_dict(old.to_dict()), "stage.1").fingerprint()
    new = ModelSpec("onnx-0", "0" * 64, source="onnx", naming=2)
    assert ModelSpec.from_dict(new.to_dict()) == new
    assert FeatureSpec(new, "stage.1").fingerprint() != FeatureSpec(old, "stage.1").fingerprint()
    prints = {FeatureSpec(ModelSpec("onnx-0", "0" * 64, source="onnx", naming=rule),
                          "stage.1").fingerprint() for rule in (1, 2, 3, 4, 5)}
    assert len(prints) == 5  # each rule its own feature sets
    newer = ModelSpec("onnx-0", "0" * 64, source="onnx", naming=3)
    tokens = ModelSpec("onnx-0", "0" * 64, source="onnx", naming=4)  # rule 4: ViT graphs
    assert FeatureSpec(tokens, "head").fingerprint() != FeatureSpec(newer, "head").fingerprint()
    with pytest.raises(ValueError, match="model.naming must be one of"):
        ModelSpec("onnx-0", "0" * 64, naming=6)


def test_classic_parity_figures():
    """Runs last in this module: stages found / expected and the worst parity per graph."""
    if PARITY:
        print("\nstages found/expected:", json.dumps(STAGES_FOUND, indent=1))
        print("parity (max |diff| / max(1, max |ref|)):",
              json.dumps({k: f"{v:.1e}" for k, v in PARITY.items()}, indent=1))
        print("float16 graphs:", json.dumps({k: f"{v:.1e}" for k, v in FP16_PARITY.items()}))
        assert max(PARITY.values()) <= 1e-5


@pytest.mark.slow  # ~20 s: torch's dynamo exporter traces the module
def test_dynamo_convnext_stages_are_the_last_blocks_not_the_downsampling_norm(tmp_path):
    """torch's dynamo exporter (opset 18) writes ConvNeXt's LayerNorms as one
    LayerNormalization between Transposes and shares equal initialisers between them: each
    ``stage.K`` is still the last block's residual sum (the torch stage's output), never the
    next stage's down-sampling LayerNorm or a Transpose of it."""
    pytest.importorskip("onnxscript", reason="torch's dynamo ONNX exporter needs onnxscript")
    from benchmarks.harness.classic_cnns import ConvNeXtish, _bn_stats

    torch.manual_seed(0)
    module = _bn_stats(ConvNeXtish())
    x = torch.from_numpy(np.random.default_rng(3).random((1, 3, SIZE, SIZE), np.float32))
    want = []
    hooks = [getattr(module, s).register_forward_hook(lambda m, i, o: want.append(o.numpy()))
             for s in ("stage1", "stage2", "stage3")]
    with torch.no_grad():
        module(x)
    for h in hooks:
        h.remove()
    src, adopted = tmp_path / "convnext.dynamo.onnx", tmp_path / "convnext.adopted.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), dynamo=True, opset_version=18, input_names=["input"],
                          output_names=["output"]).save(str(src), external_data=False)
    proto = onnx.load(str(src))
    assert {"LayerNormalization", "Transpose"} <= {n.op_type for n in proto.graph.node}
    adopt(src, adopted, pixel_range=1, channel_order="rgb")
    by_name = {la.name: la for la in read_onnx_metadata(adopted).layers}
    stages = [f"stage.{k}" for k in (1, 2, 3)]
    assert "stage.4" not in by_name
    got = outputs_of(src, [by_name[s].tensor for s in stages], x.numpy())
    for stage, g, w in zip(stages, got, want, strict=True):
        assert relative(to_nchw(g, by_name[stage].layout), w) <= 1e-5, stage
