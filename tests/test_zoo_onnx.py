"""timm and torchvision models exported to plain ONNX by torch's own exporters, then adopted.

The graph rule (naming rule 4, ``export/_friendly.py``) names their cuts from the graph alone;
each ``stage.K`` must hold the values of the library's own stage module (a forward hook that
copies the output, so an in-place op after the module cannot change it), average-pooled,
within 1e-4 (relative) on real photos. Small configurations at 64x64 keep the exports quick.
Run in the zoo environment (``make zoo``).
"""

from __future__ import annotations

import numpy as np
import pytest

from featurebank.export import read_onnx_metadata
from featurebank.extractor import Extractor, decode
from featurebank.spec import FeatureOptions, Preprocessing

torch = pytest.importorskip("torch")
SIZE = 64
PRE = Preprocessing(input_size=(SIZE, SIZE), resize_size=SIZE, mean=(0.485, 0.456, 0.406),
                    std=(0.229, 0.224, 0.225))
TOL = 1e-4


@pytest.fixture(scope="module")
def pixels():
    from skimage import data

    return np.stack([decode(getattr(data, k)(), PRE) for k in ("chelsea", "coffee", "astronaut")])


def _random_norms(model):
    """Random BatchNorm statistics and affine terms: a norm is then visibly not the identity,
    and a ReLU after it visibly changes the map."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


def _input(pixels) -> torch.Tensor:
    """The library model's input for uint8 NHWC pixels (0-1, normalised, NCHW)."""
    x = (pixels.astype(np.float32) / 255 - np.float32(PRE.mean)) / np.float32(PRE.std)
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def _library_stages(model, modules: dict, pixels, relu: tuple = ()) -> dict[str, np.ndarray]:
    """The modules' outputs for ``pixels`` (copied as the hook sees them; those named in
    ``relu`` through a ReLU), average-pooled."""
    seen = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, n=n: seen.__setitem__(n, o.clone()))
             for n, m in modules.items()]
    try:
        with torch.no_grad():
            model(_input(pixels))
    finally:
        for h in hooks:
            h.remove()
    return {n: (seen[n].relu() if n in relu else seen[n]).mean((2, 3)).numpy() for n in modules}


def _adopted(model, variant: str, folder):
    from benchmarks._zoo_variants import adopt_stating, build

    src = build(variant, model, SIZE, folder / f"model.{variant}.src.onnx")
    out = folder / f"model.{variant}.onnx"
    adopt_stating(src, out, PRE)
    return out


def _worst(path, layers, pixels, want: dict) -> dict[str, float]:
    got = Extractor(FeatureOptions(model=str(path), layers=tuple(layers), pool="avg")) \
        .embed_pixels(pixels)
    return {n: float(np.abs(g - want[n]).max() / max(1.0, float(np.abs(want[n]).max())))
            for n, g in zip(layers, got, strict=True)}


def _densenet(lib: str):
    pytest.importorskip(lib, reason=f"{lib} does not import here (make zoo)")
    if lib == "torchvision":
        import torchvision

        model = _random_norms(torchvision.models.DenseNet(
            growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, bn_size=2))
        f = model.features  # torchvision's stages: its trunk's last module per resolution
        return model, {"stage.1": f.relu0, "stage.2": f.denseblock1, "stage.3": f.denseblock2,
                       "stage.4": f.denseblock3, "stage.5": f.norm5}
    from timm.models.densenet import DenseNet

    model = _random_norms(DenseNet(growth_rate=8, block_config=(2, 2, 2, 2), bn_size=2))
    return model, {f"stage.{k}": model.get_submodule(e["module"])
                   for k, e in enumerate(model.feature_info, 1)}


@pytest.mark.slow
@pytest.mark.timm
@pytest.mark.torchvision
@pytest.mark.parametrize("variant", ["onnx-b1", "onnx"])
def test_densenet_last_stage_is_each_librarys_norm5(tmp_path, pixels, variant):
    """torchvision's ``features`` end at ``norm5``, a BatchNorm alone (``DenseNet.forward``
    applies ``F.relu`` in place, then the pool); timm's ``norm5`` includes the ReLU. The graphs
    are alike op for op; the module scopes the exporters record (TorchScript node names, the
    dynamo exporter's ``name_scopes``) tell them apart. Rule 3 named the ReLU's output
    ``stage.5`` in both (6.5 from torchvision's ``norm5`` at full size)."""
    for lib in ("torchvision", "timm"):
        model, stages = _densenet(lib)
        folder = tmp_path / lib
        folder.mkdir()
        path = _adopted(model, variant, folder)
        want = _library_stages(model, stages, pixels)
        # the map the pool reads: torchvision's F.relu after norm5, timm's norm5 itself
        want["head"] = _library_stages(model, {"head": stages["stage.5"]}, pixels,
                                       relu=("head",))["head"]
        worst = _worst(path, [*stages, "head"], pixels, want)
        assert max(worst.values()) <= TOL, (lib, worst)
        layers = {la.name: la.tensor for la in read_onnx_metadata(path).layers}
        assert (layers["stage.5"] == layers["head"]) == (lib == "timm"), lib
        if lib == "torchvision":  # featurebank's own export means the same tensor
            from featurebank.export._zoo import ZooFeatures

            with torch.no_grad():
                own = ZooFeatures(model, lib, (SIZE, SIZE)).features(_input(pixels))["stage.5"]
            np.testing.assert_allclose(own.mean((2, 3)).numpy(), want["stage.5"], atol=1e-5)


def _mobile(lib: str, arch: str):
    pytest.importorskip(lib, reason=f"{lib} does not import here (make zoo)")
    if lib == "torchvision":
        import torchvision

        model = _random_norms(torchvision.models.get_model(arch, weights=None))
        f = model.features  # resolutions: 0 | 1 | 2-3 | 4-8 | 9-12 (the 576-channel 1x1 conv)
        return model, {f"stage.{k}": f[i] for k, i in enumerate((0, 1, 3, 8, 12), 1)}
    import timm

    model = _random_norms(timm.create_model(arch, pretrained=False))
    return model, {f"stage.{k}": model.get_submodule(e["module"])
                   for k, e in enumerate(model.feature_info, 1)}


@pytest.mark.slow
@pytest.mark.timm
@pytest.mark.torchvision
@pytest.mark.parametrize("lib, arch", [("torchvision", "mobilenet_v3_small"),
                                       ("timm", "mobilenetv3_small_050"),
                                       ("timm", "efficientnet_b0")])
def test_mobilenet_and_efficientnet_name_every_stage(tmp_path, pixels, lib, arch):
    """The last resolution's stage: EfficientNet's last block has no shortcut (its linear
    projection is the block output, the 1x1 conv after it is the ``head``); MobileNetV3's
    head starts after the pool, so the 1x1 conv the pool reads is its last stage. Rule 3
    named the last residual sum ``stage.5`` in all three."""
    model, stages = _mobile(lib, arch)
    path = _adopted(model, "onnx-b1", tmp_path)
    worst = _worst(path, list(stages), pixels, _library_stages(model, stages, pixels))
    assert max(worst.values()) <= TOL, worst
