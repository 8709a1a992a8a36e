"""The GPU path: float16 graphs, the IOBinding runner, and CUDA against CPU.

The logic runs on CPU everywhere (onnxruntime's CPU provider runs float16 graphs and IOBinding);
tests marked ``gpu`` need onnxruntime-gpu with a CUDA device and skip with a reason otherwise.
"""

from __future__ import annotations

import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from featurebank.errors import FeaturebankError
from featurebank.extractor import Extractor
from featurebank.extractor.graphs._fp16 import BoundRunner, session_device, to_fp16

LAYERS = ("blocks.10", "head")
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
needs_cuda = pytest.mark.skipif(
    not HAS_CUDA, reason="onnxruntime has no CUDAExecutionProvider here "
    "(needs pip install 'featurebank[gpu]' on a machine with an NVIDIA GPU)")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def fp32(lite0_onnx) -> Extractor:
    return Extractor(lite0_onnx, layers=LAYERS, device="cpu", threads=1)


@pytest.fixture(scope="module")
def pixels(fp32, real_photos) -> np.ndarray:
    return np.stack([fp32.decode(real_photos[k]) for k in sorted(real_photos)])


def _types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor of ``model`` (after shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def test_to_fp16_structure(lite0_onnx):
    """Backbone float16; uint8 input, float32 normalisation, pooling tail and outputs."""
    ex = Extractor(lite0_onnx, layers=("stem", "head"), pool="gem", normalize=True, device="cpu")
    model = ex.graph.model
    before = model.SerializeToString()
    half = to_fp16(model)
    assert model.SerializeToString() == before  # the input model is left as it was
    onnx.checker.check_model(half, full_check=True)
    assert [(i.name, i.type.tensor_type.elem_type) for i in half.graph.input] == [
        ("pixels", TensorProto.UINT8)]
    assert [(o.name, o.type.tensor_type.elem_type) for o in half.graph.output] == [
        ("feat.stem", TensorProto.FLOAT), ("feat.head", TensorProto.FLOAT)]
    assert dict((p.key, p.value) for p in half.metadata_props) == dict(
        (p.key, p.value) for p in model.metadata_props)
    types = _types(half)
    convs = [n for n in half.graph.node if n.op_type == "Conv"]
    assert len(convs) == len([n for n in model.graph.node if n.op_type == "Conv"]) > 30
    assert all(types[n.input[0]] == types[n.input[1]] == TensorProto.FLOAT16 for n in convs)
    # the weights are stored as float16: the file is about half the size
    assert len(half.SerializeToString()) < 0.6 * len(before)
    # normalisation in float32: the uint8 pixels are cast straight to float32 and scaled there
    head_cast = next(n for n in half.graph.node if n.input[0] == "pixels")
    assert head_cast.op_type == "Cast" and head_cast.attribute[0].i == TensorProto.FLOAT
    # pooling tail in float32: a float16 sum of squares over the flattened stem would overflow
    for op, count in {"ReduceSumSquare": 2, "Pow": 4, "GlobalAveragePool": 2, "Div": 2}.items():
        nodes = [n for n in half.graph.node if n.op_type == op]
        assert len(nodes) == count and all(types[n.input[0]] == TensorProto.FLOAT for n in nodes)


def test_to_fp16_refuses_other_graphs(lite0_onnx):
    with pytest.raises(FeaturebankError, match="expects a feature graph with one input 'pixels'"):
        to_fp16(onnx.load(lite0_onnx))


def test_fp16_tracks_fp32_on_real_photos(lite0_onnx, fp32, pixels, real_photos):
    """Same vectors within cosine 0.9999, same ImageNet class, same spec fingerprints.

    onnxruntime's CPU provider computes the float16 graph in float32 with the float16-rounded
    weights; float16 activations are checked by the CUDA tests below.
    """
    half = Extractor(lite0_onnx, layers=LAYERS, device="cpu", threads=1, precision="fp16")
    assert [s.fingerprint() for s in half.specs] == [s.fingerprint() for s in fp32.specs]
    ref, out = fp32.embed_pixels(pixels), half.embed_pixels(pixels)
    for r, o in zip(ref, out, strict=True):
        assert o.dtype == np.float32 and o.shape == r.shape
        assert cosines(r, o).min() >= 0.9999
        # measured on these photos: max |fp16 - fp32| 0.4 % of the largest value (2 % on crops)
        assert np.abs(r - o).max() <= 0.02 * np.abs(r).max()
        assert np.abs(r - o).max() > 0  # the float16 graph really ran
    # a pickled fp16 extractor rebuilds the same float16 session where it lands
    again = pickle.loads(pickle.dumps(half))
    assert again.precision == "fp16" and repr(again).endswith("precision='fp16')")
    np.testing.assert_array_equal(again.embed_pixels(pixels)[1], out[1])
    logits32 = Extractor(lite0_onnx, layers=["logits"], pool="none", device="cpu", threads=1)
    logits16 = Extractor(lite0_onnx, layers=["logits"], pool="none", device="cpu", threads=1,
                         precision="fp16")
    a, b = logits32.embed_pixels(pixels)[0], logits16.embed_pixels(pixels)[0]
    assert list(a.argmax(1)) == list(b.argmax(1)), sorted(real_photos)


def test_unknown_precision_refused_when_the_options_are_made(lite0_onnx):
    """The options object checks precision before any graph or session exists."""
    with pytest.raises(FeaturebankError, match=r"precision must be one of \('fp32', 'fp16', 'int8'\), got 'int4'"):
        Extractor(lite0_onnx, precision="int4")


def test_bound_runner_equals_session_run_on_cpu(fp32, pixels):
    """IOBinding on the CPU provider: bit-identical to session.run, any batch size, in order."""
    session, names = fp32.session, fp32.graph.output_names
    assert fp32._runner is None  # on CPU the extractor keeps session.run
    runner = BoundRunner(session, names)
    assert (runner.device, runner.device_id) == session_device(session) == ("cpu", 0)
    for batch in (pixels, pixels[:2], pixels[::-1].copy()):
        ref = session.run(names, {"pixels": batch})
        out = runner.run(batch)
        assert [o.shape for o in out] == [(len(batch), 112), (len(batch), 1280)]
        for r, o in zip(ref, out, strict=True):
            np.testing.assert_array_equal(o, r)
    reversed_only = BoundRunner(session, names[::-1]).run(pixels)
    np.testing.assert_array_equal(reversed_only[0], session.run(names, {"pixels": pixels})[1])


def test_device_buffer_reused_per_shape_and_thread(fp32, pixels):
    """The buffer logic of the CUDA path, exercised with CPU OrtValues."""
    runner = BoundRunner(fp32.session, fp32.graph.output_names)
    first = runner._device_input(pixels)
    flipped = pixels[::-1].copy()
    again = runner._device_input(flipped)
    assert again is first  # same shape: same memory, new contents
    np.testing.assert_array_equal(again.numpy(), flipped)
    smaller = runner._device_input(pixels[:2])
    assert smaller is not first and smaller.shape() == [2, *pixels.shape[1:]]
    with ThreadPoolExecutor(1) as pool:  # another thread never shares this thread's buffer
        theirs = pool.submit(runner._device_input, pixels[:2]).result()
    assert theirs is not smaller
    binding = fp32.session.io_binding()
    binding.bind_ortvalue_input("pixels", runner._device_input(flipped))
    for name in fp32.graph.output_names:
        binding.bind_output(name, "cpu")
    fp32.session.run_with_iobinding(binding)
    ref = fp32.session.run(fp32.graph.output_names, {"pixels": flipped})
    for r, o in zip(ref, binding.copy_outputs_to_cpu(), strict=True):
        np.testing.assert_array_equal(o, r)


# -- CUDA: only where onnxruntime-gpu sees a GPU ----------------------------------------------
@pytest.mark.gpu
@needs_cuda
def test_cuda_fp32_equals_cpu(lite0_onnx, fp32, pixels):
    cuda = Extractor(lite0_onnx, layers=LAYERS, device="cuda")
    assert "CUDAExecutionProvider" in cuda.session.get_providers()
    assert isinstance(cuda._runner, BoundRunner) and cuda._runner.device == "cuda"
    options = cuda.session.get_provider_options().get("CUDAExecutionProvider", {})
    for r, o in zip(fp32.embed_pixels(pixels), cuda.embed_pixels(pixels), strict=True):
        err = np.abs(r - o).max() / max(1.0, np.abs(r).max())
        assert err <= 1e-3, (
            f"CUDA fp32 off CPU by {err:.2e} (relative); use_tf32={options.get('use_tf32')!r}: "
            "onnxruntime's default TF32 convolutions keep 10 mantissa bits, see docs/gpu.md")


@pytest.mark.gpu
@needs_cuda
def test_cuda_fp16_tracks_cpu_fp32_through_iobinding(lite0_onnx, fp32, pixels):
    cuda = Extractor(lite0_onnx, layers=LAYERS, device="cuda", precision="fp16", batch_size=4)
    ref = fp32.embed_pixels(pixels)
    out = cuda.embed_pixels(pixels)
    assert cuda._runner is not None and cuda._runner.device == "cuda"
    for r, o in zip(ref, out, strict=True):
        assert o.dtype == np.float32 and cosines(r, o).min() >= 0.999
    # the bound path and plain session.run agree on the device; batches of another shape too
    plain = cuda.session.run(cuda.graph.output_names, {"pixels": pixels})
    for p, o in zip(plain, out, strict=True):
        np.testing.assert_allclose(o, p, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(cuda.embed_pixels(pixels[:3])[1], out[1][:3], rtol=1e-3, atol=1e-3)
