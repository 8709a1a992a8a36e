"""Foreign ONNX models in every convention: featurebank's vectors equal the original graph's.

Each model is a small torch module exported here (benchmarks/harness/foreign_models.py), so the conventions
are known for certain: NHWC or NCHW input, RGB or BGR, 0-1 or 0-255 pixels, mean-only or
mean/std, opaque tensor names, fixed or dynamic batch and size, a GlobalAveragePool, ReduceMean
or Flatten+Gemm head. The reference is a plain onnxruntime run of the untouched original file
with the cut tensor added as a graph output, fed the same pixels converted by hand.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from featurebank import FeaturebankError
from featurebank.export import adopt, read_onnx_metadata
from featurebank.export._catalogue import infer_shapes
from featurebank.extractor import Extractor
from featurebank.extractor.graphs import build_feature_graph

torch = pytest.importorskip("torch")
from benchmarks.harness.foreign_models import (  # noqa: E402 - torch first, or skip
    CONVENTIONS,
    LITE,
    LITE_FLAGS,
    Convention,
    Tiny,
    conventions_of,
    export_module,
    make_foreign,
    make_foreign_lite,
    reference,
)

nn = torch.nn
PARITY: dict[str, float] = {}  # convention -> worst relative difference, printed at the end


def pooled(ref: np.ndarray, layout: str | None, pool: str) -> np.ndarray:
    if ref.ndim == 2:
        return ref
    axes = (2, 3) if layout == "NCHW" else (1, 2)
    return ref.mean(axes) if pool == "avg" else ref.max(axes)


def assert_parity(got: np.ndarray, ref: np.ndarray, key: str) -> None:
    assert got.shape == ref.shape, (key, got.shape, ref.shape)
    diff = float(np.abs(got - ref).max())
    scale = max(1.0, float(np.abs(ref).max()))
    PARITY[key] = max(PARITY.get(key, 0.0), diff / scale)
    assert diff <= 1e-5 * scale, (key, diff, scale)


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """Every convention exported and adopted: name -> (convention, original, adopted)."""
    return make_foreign(tmp_path_factory.mktemp("foreign_models"))


@pytest.mark.parametrize("name", [c.name for c in CONVENTIONS])
def test_vectors_equal_the_original_graph(foreign, name):
    conv, src, adopted = foreign[name]
    info = read_onnx_metadata(adopted)
    by_name = {la.name: la for la in info.layers}
    # the friendly names, with the layout the test knows the torch module has
    assert by_name["logits"].shape == (5,)
    assert by_name["stage.1"].layout == "NCHW" and by_name["stage.1"].shape == (8, conv.size // 2,
                                                                                conv.size // 2)
    if conv.head != "flatten":
        assert by_name["pool"].shape == (24,) and by_name["head"].layout == conv.head_layout
        s = conv.size // 8
        assert by_name["head"].shape == ((s, s, 24) if conv.head_layout == "NHWC" else (24, s, s))
    assert [la.flops_share for la in info.layers][-1] == pytest.approx(1.0)
    assert 0 < by_name["stage.1"].flops_share < by_name["stage.3"].flops_share < 1
    raw = next(la.tensor for la in info.layers if la.name == la.tensor and la.layout == "NCHW")
    cuts = [n for n in ("stage.1", "stage.3", "head", "pool", "logits") if n in by_name] + [raw]
    pixels = np.random.default_rng(1).integers(0, 256, (3, conv.size, conv.size, 3), np.uint8)
    for pool in ("avg", "max"):
        ex = Extractor(str(adopted), layers=cuts, pool=pool, device="cpu", threads=1)
        for cut, got in zip(cuts, ex.embed_pixels(pixels), strict=True):
            la = info.layer(cut)
            ref = reference(src, la.tensor, pixels, conv, one_by_one=conv.batch == "fixed")
            assert_parity(got, pooled(ref, la.layout, pool), f"{name}:{cut}:{pool}")
            if la.layout in ("NCHW", "NHWC") and pool == "avg":
                channels = la.shape[0] if la.layout == "NCHW" else la.shape[-1]
                assert got.shape == (3, channels)
    if "pool" in by_name:  # avg-pooling the head in its own layout is the model's own pool
        head, pool_vec = Extractor(str(adopted), layers=["head", "pool"], device="cpu",
                                   threads=1).embed_pixels(pixels)
        assert_parity(head, pool_vec, f"{name}:head-vs-pool")


@pytest.mark.parametrize("name", [CONVENTIONS[1].name, CONVENTIONS[3].name])
def test_one_off_preprocessing_file_gives_the_adopted_vectors(foreign, tmp_path, name):
    """--preprocessing FILE on the original file: same vectors, same fingerprints."""
    from featurebank.export import resolve_conventions

    conv, src, adopted = foreign[name]
    pre_file = tmp_path / "conventions.toml"
    flags = conventions_of(conv)
    pre_file.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in flags.items()))
    pre, _ = resolve_conventions(src, pre_file)
    one_off = Extractor(str(src), layers=["stage.2", "pool"], preprocessing=pre, device="cpu")
    native = Extractor(str(adopted), layers=["stage.2", "pool"], device="cpu")
    assert [s.fingerprint() for s in one_off.specs] == [s.fingerprint() for s in native.specs]
    pixels = np.random.default_rng(2).integers(0, 256, (2, conv.size, conv.size, 3), np.uint8)
    for a, b in zip(one_off.embed_pixels(pixels), native.embed_pixels(pixels), strict=True):
        np.testing.assert_array_equal(a, b)


def test_spec_is_named_by_content(foreign, tmp_path):
    from featurebank.spec import sha256_file

    conv, src, adopted = foreign[CONVENTIONS[0].name]
    spec = read_onnx_metadata(adopted).spec
    digest = sha256_file(str(src))
    assert spec.weights_sha256 == digest and spec.model == f"onnx-{digest[:16]}"
    assert spec.source == "onnx" and spec.preprocessing.interpolation == "bilinear"
    moved = tmp_path / "renamed.onnx"
    moved.write_bytes(adopted.read_bytes())
    a = Extractor(str(adopted), layers=["pool"]).specs[0].fingerprint()
    assert Extractor(str(moved), layers=["pool"]).specs[0].fingerprint() == a


# -- refusals: checked before any file is written -------------------------------------------
def _refused(src, dst, match, **flags):
    with pytest.raises(FeaturebankError, match=match):
        adopt(src, dst, **flags)
    assert not dst.exists()


def test_adopt_refuses_what_contradicts_the_graph(foreign, tmp_path):
    conv, src, _ = foreign[CONVENTIONS[1].name]  # NHWC 32x32 input, fixed
    dst = tmp_path / "out.onnx"
    base = conventions_of(conv)
    _refused(src, dst, "pixel_range=1 or pixel_range=255",
             **{k: v for k, v in base.items() if k != "pixel_range"})
    _refused(src, dst, "channel_order='rgb' or channel_order='bgr'",
             **{k: v for k, v in base.items() if k != "channel_order"})
    _refused(src, dst, "NHWC.*nchw", **{**base, "layout": "nchw"})
    _refused(src, dst, "32x32.*40x40", **{**base, "input_size": "40"})
    _refused(src, dst, "outside the pixel range", **{**base, "pixel_range": 1})
    _refused(src, dst, "interpolation", **{**base, "interpolation": "cubic-ish"})
    _refused(src, dst, "not in the graph", **{**base, "tensor_layout": ["nope=nhwc"]})
    dyn_conv, dyn, _ = foreign[CONVENTIONS[3].name]
    _refused(dyn, dst, "input size is dynamic", **{k: v for k, v in conventions_of(dyn_conv).items()
                                                   if k != "input_size"})
    flat_conv = Convention("flat-dyn", "nchw", "rgb", 1, (0,) * 3, (1,) * 3, "flatten",
                           spatial="dynamic")
    flat = tmp_path / "flat.onnx"
    export_module(Tiny(False, "flatten", 32), flat_conv, flat)
    _refused(flat, dst, "cannot run", **{**conventions_of(flat_conv), "input_size": "48"})


def test_a_graph_that_bakes_in_batch_1_is_rewritten(tmp_path):
    """A Reshape to [1, -1] no longer stops adopt: it becomes [0, -1], checked by a run."""

    class Baked(Tiny):
        def forward(self, x):
            return self.fc(torch.relu(self.c3(self.c2(self.c1(x)))).reshape(1, -1))

    conv = Convention("baked", "nchw", "rgb", 1, (0,) * 3, (1,) * 3, "flatten", batch="fixed")
    src, dst = tmp_path / "baked.onnx", tmp_path / "out.onnx"
    export_module(Baked(False, "flatten", 32), conv, src)
    adopt(src, dst, **conventions_of(conv))
    info = read_onnx_metadata(dst)
    assert "[1, ...] -> [0, ...]" in info.extra["batch_rewrite"][0] and "batch" not in info.extra
    pixels = np.random.default_rng(5).integers(0, 256, (3, 32, 32, 3), np.uint8)
    (got,) = Extractor(str(dst), layers=["logits"]).embed_pixels(pixels)
    assert_parity(got, reference(src, "output", pixels, conv, one_by_one=True), "baked:logits")


class Scrambled(nn.Module):
    """Activations the layout of which cannot be followed (a Reshape) or is odd (NHCW)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(3, 6, 3, 2, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        y = torch.relu(self.c1(x))  # N, 6, 8, 8
        hidden = torch.relu(y.permute(0, 2, 3, 1).reshape(y.shape[0], 8, 8, 6))  # NHWC, unfollowable
        odd = torch.relu(y.permute(0, 2, 1, 3))  # N, H, C, W
        seq = torch.relu(y.flatten(2))  # N, C, HW: 3-D
        return self.fc(hidden.mean((1, 2)) + odd.mean((1, 3)) + seq.mean(2))


def test_unknown_odd_and_3d_tensors_are_refused(tmp_path):
    src, dst = tmp_path / "scrambled.onnx", tmp_path / "scrambled.adopted.onnx"
    conv = Convention("s", "nchw", "rgb", 1, (0,) * 3, (1,) * 3, "gap", size=16)
    export_module(Scrambled(), conv, src)
    adopt(src, dst, **conventions_of(conv))
    info = read_onnx_metadata(dst)
    proto = onnx.load(str(src))
    producers = {o: n for n in proto.graph.node for o in n.output}

    def after(op, parent_op):  # the Relu fed by an op of this type
        return next(o for o, n in producers.items() if n.op_type == op and
                    producers.get(n.input[0]) is not None and producers[n.input[0]].op_type == parent_op)

    hidden, odd = after("Relu", "Reshape"), after("Relu", "Transpose")
    assert info.layer(hidden).layout is None and info.layer(odd).layout == "NHCW"
    with pytest.raises(FeaturebankError, match="--tensor-layout"):
        build_feature_graph(dst, [hidden])
    with pytest.raises(FeaturebankError, match="NHCW"):
        build_feature_graph(dst, [odd])
    shapes = infer_shapes(proto, [1, 3, 16, 16])
    seq = next(o for o, n in producers.items() if n.op_type == "Relu" and len(shapes[o]) == 3)
    with pytest.raises(FeaturebankError, match="dimensions"):
        build_feature_graph(dst, [seq])
    # stated, the hidden NHWC tensor is pooled over its own spatial axes
    stated = tmp_path / "stated.onnx"
    adopt(src, stated, **conventions_of(conv), tensor_layout=[f"{hidden}=nhwc"])
    pixels = np.random.default_rng(3).integers(0, 256, (2, 16, 16, 3), np.uint8)
    (got,) = Extractor(str(stated), layers=[hidden]).embed_pixels(pixels)
    assert_parity(got, reference(src, hidden, pixels, conv).mean((1, 2)), "stated-nhwc")
    with pytest.raises(FeaturebankError, match="NCHW in the graph"):
        adopt(src, tmp_path / "x.onnx", **conventions_of(conv),
              tensor_layout=[f"{after('Relu', 'Conv')}=nhwc"])


def test_layers_suggestions_name_nothing_twice(foreign):
    conv, src, adopted = foreign[CONVENTIONS[0].name]
    with pytest.raises(FeaturebankError) as err:
        build_feature_graph(adopted, ["stage"])
    close = str(err.value).split("closest: ")[1].split(" (see")[0].split(", ")
    assert len(close) == len(set(close)) and "stage.1" in close


@pytest.fixture(scope="module")
def foreign_lite(tmp_path_factory):
    """The pretrained Lite0 as a foreign file: opaque names, NHWC BGR 0-255, ReduceMean pool."""
    return make_foreign_lite(tmp_path_factory.mktemp("foreign_lite"))


def test_pretrained_foreign_lite0(foreign_lite, tmp_path, lite0_onnx, real_photos):
    """Parity with the original graph for a stage cut, the pool and the logits; the pooled
    vector is native Lite0's head vector; a cat is still a cat."""
    adopted = tmp_path / "adopted.onnx"
    adopt(foreign_lite, adopted, **LITE_FLAGS)
    info = read_onnx_metadata(adopted)
    assert info.layer("pool").shape == (1280,) and info.layer("head").shape == (1280, 7, 7)
    assert info.layer("logits").shape == (1000,) and info.layer("stage.4").layout == "NCHW"
    cuts = ["stage.4", "head", "pool", "logits"]
    ex = Extractor(str(adopted), layers=cuts, device="cpu")
    names = ["chelsea", "coffee"]
    pixels = np.stack([ex.decode(real_photos[n]) for n in names])
    for cut, got in zip(cuts, ex.embed_pixels(pixels), strict=True):
        la = info.layer(cut)
        assert_parity(got, pooled(reference(foreign_lite, la.tensor, pixels, LITE), la.layout, "avg"),
                      f"{LITE.name}:{cut}")
    native = Extractor(str(lite0_onnx), layers=["head", "logits"], device="cpu")
    assert native.spec_preprocessing.input_size == ex.spec_preprocessing.input_size
    head, logits = native.embed_pixels(pixels)
    foreign_pool, foreign_logits = ex.embed_pixels(pixels)[2:]
    np.testing.assert_allclose(foreign_pool, head, atol=2e-4 * np.abs(head).max())
    assert 281 <= int(foreign_logits[0].argmax()) <= 285  # ImageNet's cat classes
    assert (foreign_logits.argmax(1) == logits.argmax(1)).all()


def test_parity_figures():
    """Runs last in this module: prints the worst relative difference per convention."""
    if PARITY:
        worst: dict[str, float] = {}
        for key, value in PARITY.items():
            worst[key.split(":")[0]] = max(worst.get(key.split(":")[0], 0.0), value)
        print("\nparity (max |diff| / max(1, max |ref|)):",
              json.dumps({k: f"{v:.2e}" for k, v in worst.items()}, indent=1))
        assert max(worst.values()) <= 1e-5


