"""timm and torchvision as first-class sources (run in the zoo environment: ``make zoo``).

Each model is exported through the real code path (``featurebank export SOURCE:NAME --weights
FILE``; random weights saved to a file stand in for the pretrained download) and its vectors,
computed from image files by featurebank, are compared with the library's own eval transform
and a forward hook on the module the catalogue names: max|a - b| / max(1, max|b|) <= 1e-4 per
image, on PNGs and on JPEGs too small for draft decoding, square and not.
"""

from __future__ import annotations

import numpy as np
import pytest

from featurebank import FeaturebankError
from featurebank.cli import main as cli
from featurebank.export import read_onnx_metadata
from featurebank.extractor import Extractor
from featurebank.spec import FeatureOptions, Preprocessing

torch = pytest.importorskip("torch")
TOL = 1e-4


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(1.0, float(np.abs(b).max())))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photos as PNG and as JPEG (300-512 px: below the draft threshold), two non-square."""
    from PIL import Image
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name in ("chelsea", "coffee", "astronaut"):
        image = Image.fromarray(getattr(data, name)())
        for ext in ("png", "jpg"):
            paths.append(folder / f"{name}.{ext}")
            image.save(paths[-1], quality=92)
    return paths


def _export(lib: str, arch: str, folder, **create) -> tuple:
    """``featurebank export lib:arch --weights FILE`` on random weights; (model, onnx path)."""
    pytest.importorskip(lib, reason=f"{lib} does not import here (make zoo)")
    if lib == "timm":
        import timm

        model = timm.create_model(arch, pretrained=False, **create)
    else:
        import torchvision

        model = torchvision.models.get_model(arch, weights=None)
    weights, out = folder / f"{arch}.pth", folder / f"{arch}.onnx"
    torch.save(model.state_dict(), weights)
    assert cli(["export", f"{lib}:{arch}", "-o", str(out), "--weights", str(weights)]) == 0
    return model.eval(), out


def _reference(model, transform, paths, module, pool="avg") -> list[np.ndarray]:
    """The library's eval transform + a forward hook on ``module``, pooled like featurebank."""
    from PIL import Image

    seen = {}
    hook = module.register_forward_hook(lambda _m, _i, o: seen.__setitem__("out", o))
    refs = []
    try:
        for path in paths:
            with torch.no_grad():
                model(transform(Image.open(path).convert("RGB"))[None])
            out = seen["out"][0]
            if out.dim() == 3:  # C, H, W
                refs.append(out.mean((1, 2)).numpy())
            else:  # tokens T, C
                cls, mean = out[0], out[1:].mean(0)
                refs.append({"cls": cls, "mean": mean,
                             "cls+mean": torch.cat([cls, mean])}[pool].numpy())
    finally:
        hook.remove()
    return refs


def _assert_parity(onnx_path, layers, pool, refs_by_layer, paths):
    got = Extractor(FeatureOptions(model=str(onnx_path), layers=tuple(layers), pool=pool)).embed(
        [str(p) for p in paths])
    for layer in layers:
        worst = max(_relative(g, r) for g, r in zip(got[layer], refs_by_layer[layer], strict=True))
        assert worst <= TOL, f"{layer}: {worst:.2e}"


@pytest.fixture(scope="module")
def timm_resnet(tmp_path_factory):
    pytest.importorskip("timm", reason="timm does not import here (make zoo)")
    return _export("timm", "test_resnet", tmp_path_factory.mktemp("timm_resnet"))


@pytest.mark.slow
@pytest.mark.timm
def test_timm_cnn_stages_from_feature_info_match_timm_from_pixels(timm_resnet, photos):
    """stage.K is timm's feature_info entry K; every stage, pool and logits from pixels equal
    timm's eval transform + forward within 1e-4, PNG and JPEG, square and not."""
    import timm

    model, path = timm_resnet
    info = read_onnx_metadata(path)
    stages = [la for la in info.layers if la.name.startswith("stage.")]
    assert [(la.name, la.shape[0]) for la in stages] == [
        (f"stage.{k}", f["num_chs"]) for k, f in enumerate(model.feature_info, 1)]
    assert [la.name for la in info.layers][-3:] == ["head", "pool", "logits"]
    assert info.layer("head").tensor == info.layer("stage.5").tensor  # one tensor, two names
    cfg = timm.data.resolve_data_config({}, model=model)
    pre = info.spec.preprocessing
    assert pre.resize_rule == "torchvision" and pre.input_size == tuple(cfg["input_size"][1:])
    assert pre.resize_size == 168 and pre.interpolation == cfg["interpolation"]  # floor(160/0.95)
    transform = timm.data.create_transform(**cfg)
    modules = dict(model.named_modules())
    refs = {la.name: _reference(model, transform, photos, modules[f["module"]])
            for la, f in zip(stages, model.feature_info, strict=True)}
    _assert_parity(path, list(refs), "avg", refs, photos)
    from PIL import Image

    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in photos])
    with torch.no_grad():
        logits = model(x).numpy()
        pooled = model.forward_head(model.forward_features(x), pre_logits=True).numpy()
    _assert_parity(path, ["pool", "logits"], "avg", {"pool": pooled, "logits": logits}, photos)


@pytest.mark.slow
@pytest.mark.timm
@pytest.mark.parametrize("arch", ["test_convnext", "test_efficientnet"])
def test_timm_convnext_and_efficientnet_cut_at_every_stage(arch, tmp_path, photos):
    """The whole trunk is no longer one 'stages'/'blocks' entry: each feature_info stage is a cut."""
    timm = pytest.importorskip("timm", reason="timm does not import here (make zoo)")

    model, path = _export("timm", arch, tmp_path)
    info = read_onnx_metadata(path)
    stages = [la for la in info.layers if la.name.startswith("stage.")]
    assert len(stages) == len(model.feature_info) >= 4
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    modules = dict(model.named_modules())
    refs = {la.name: _reference(model, transform, photos[:2], modules[f["module"]])
            for la, f in zip(stages, model.feature_info, strict=True)}
    _assert_parity(path, list(refs), "avg", refs, photos[:2])


@pytest.fixture(scope="module")
def timm_vit(tmp_path_factory):
    pytest.importorskip("timm", reason="timm does not import here (make zoo)")
    return _export("timm", "test_vit", tmp_path_factory.mktemp("timm_vit"))


@pytest.mark.slow
@pytest.mark.timm
def test_timm_vit_blocks_are_token_cuts_pooled_cls_mean_and_both(timm_vit, photos):
    """blocks.K of a ViT: [N, T, C] tokens; cls, mean of the patch tokens (class token left out)
    and both concatenated equal timm's within 1e-4; spatial pools are refused on tokens."""
    import timm

    model, path = timm_vit
    info = read_onnx_metadata(path)
    blocks = [la for la in info.layers if la.name.startswith("blocks.")]
    assert [la.name for la in blocks] == [f"blocks.{k}" for k in range(len(model.blocks))]
    assert all(la.layout == "tokens" and la.shape == (101, 64) for la in blocks)  # 1 + 10x10
    assert info.spec.preprocessing.prefix_tokens == 1
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    for pool in ("cls", "mean", "cls+mean"):
        refs = {b: _reference(model, transform, photos[:2], model.blocks[int(b.split(".")[1])], pool)
                for b in ("blocks.1", "blocks.5")}
        _assert_parity(path, list(refs), pool, refs, photos[:2])
    with pytest.raises(FeaturebankError, match="transformer tokens; use pool 'cls'"):
        Extractor(FeatureOptions(model=str(path), layers=("blocks.3",), pool="avg")).embed(
            [str(photos[0])])
    vectors = Extractor(FeatureOptions(model=str(path), layers=("blocks.3",), pool="none")).embed(
        [str(photos[0])])["blocks.3"]
    assert vectors.shape == (1, 101 * 64)


@pytest.mark.slow
@pytest.mark.timm
def test_token_pools_refused_on_maps(timm_resnet, photos):
    _, path = timm_resnet
    with pytest.raises(FeaturebankError, match="pools transformer tokens.*use pool 'avg'"):
        Extractor(FeatureOptions(model=str(path), layers=("stage.3",), pool="cls")).embed(
            [str(photos[0])])


@pytest.mark.slow
@pytest.mark.timm
def test_vit_from_a_foreign_onnx_gets_its_prefix_tokens_from_the_graph(timm_vit, tmp_path,
                                                                       photos):
    """A ViT graph without featurebank's description (the dynamo export, metadata dropped): the
    graph shows its one prefix token (naming rule 4), so its token cuts equal the native
    export's vectors unstated; a statement the graph contradicts is refused."""
    import onnx

    _, path = timm_vit
    foreign = tmp_path / "foreign_vit.onnx"
    proto = onnx.load(str(path))
    native_pre = read_onnx_metadata(path).spec.preprocessing
    del proto.metadata_props[:]
    onnx.save(proto, str(foreign))
    stated = {k: v for k, v in native_pre.to_dict().items() if k != "prefix_tokens"}
    with pytest.raises(FeaturebankError, match="shows 1 token.*prefix_tokens = 2"):
        Extractor(FeatureOptions(model=str(foreign), layers=("layer.blocks.2",), pool="mean",
                                 preprocessing=Preprocessing(**stated, prefix_tokens=2))
                  ).embed([str(photos[0])])
    got = Extractor(FeatureOptions(model=str(foreign), layers=("blocks.2",), pool="mean",
                                   preprocessing=Preprocessing(**stated)))
    want = Extractor(FeatureOptions(model=str(path), layers=("blocks.2",), pool="mean"))
    images = [str(p) for p in photos[:2]]
    np.testing.assert_allclose(got.embed(images)["blocks.2"], want.embed(images)["blocks.2"],
                               rtol=0, atol=1e-6)


def _tv_transform(arch):
    import torchvision

    return torchvision.models.get_model_weights(arch).DEFAULT.transforms()


@pytest.mark.torchvision
def test_resize_matches_torchvision_on_pil_images():
    """resize_rule='torchvision' gives the very pixels of torchvision's Resize + CenterCrop on
    PIL images, square and not; featurebank's own rounding differs on some (the 3.4e-3 ResNet-50
    layer3 difference on non-square photos)."""
    pytest.importorskip("torchvision", reason="torchvision does not import here (make zoo)")
    from PIL import Image
    from torchvision import transforms

    from featurebank.extractor import decode

    rng = np.random.default_rng(0)
    torchvision_rule = Preprocessing(input_size=(224, 224), resize_size=256,
                                     interpolation="bilinear", resize_rule="torchvision")
    own_rule = Preprocessing(**{**torchvision_rule.to_dict(), "resize_rule": "featurebank"})
    reference = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
    differ = 0
    for w, h in [(451, 300), (300, 451), (640, 427), (333, 500), (257, 999), (512, 512)]:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        want = np.asarray(reference(image))
        np.testing.assert_array_equal(decode(image, torchvision_rule), want)
        differ += not np.array_equal(decode(image, own_rule), want)
    assert differ >= 3


@pytest.mark.slow
@pytest.mark.torchvision
def test_torchvision_resnet18_stages_match_torchvision_from_pixels(tmp_path, photos):
    """stage.1 (the stem) and layer1..4 as stage.2..5; non-square photos within 1e-4 of
    torchvision's weights transforms + hook."""
    pytest.importorskip("torchvision", reason="torchvision does not import here (make zoo)")
    model, path = _export("torchvision", "resnet18", tmp_path)
    info = read_onnx_metadata(path)
    assert [la.name for la in info.layers] == [*[f"stage.{k}" for k in range(1, 6)],
                                                "head", "pool", "logits"]
    assert info.layer("stage.4").shape == (256, 14, 14)
    pre = info.spec.preprocessing
    assert (pre.resize_size, pre.input_size, pre.interpolation) == (256, (224, 224), "bilinear")
    transform = _tv_transform("resnet18")
    nonsquare = [p for p in photos if p.stem != "astronaut"]
    refs = {f"stage.{k}": _reference(model, transform, nonsquare, getattr(model, f"layer{k - 1}"))
            for k in (3, 4)}
    _assert_parity(path, list(refs), "avg", refs, nonsquare)


@pytest.mark.slow
@pytest.mark.torchvision
def test_torchvision_mobilenet_v3_small_cut_at_last_block_per_resolution(tmp_path, photos):
    pytest.importorskip("torchvision", reason="torchvision does not import here (make zoo)")
    model, path = _export("torchvision", "mobilenet_v3_small", tmp_path)
    info = read_onnx_metadata(path)
    stages = [la for la in info.layers if la.name.startswith("stage.")]
    # features: 0 (112), 1 (56), 2-3 (28), 4-8 (14), 9-12 (7)
    assert [la.shape[1] for la in stages] == [112, 56, 28, 14, 7]
    last = {"stage.1": 0, "stage.2": 1, "stage.3": 3, "stage.4": 8, "stage.5": 12}
    transform = _tv_transform("mobilenet_v3_small")
    refs = {s: _reference(model, transform, photos[:2], model.features[i]) for s, i in last.items()}
    _assert_parity(path, list(refs), "avg", refs, photos[:2])


@pytest.mark.timm
def test_channels_last_timm_stages_are_marked_nhwc():
    """Swin keeps its stages channels-last ([N, H, W, C]): the catalogue says NHWC, so the
    extractor pools H and W, never the channels (a wrong vector that would look right)."""
    timm = pytest.importorskip("timm", reason="timm does not import here (make zoo)")
    from featurebank.export._zoo import ZooFeatures

    model = timm.create_model("swin_tiny_patch4_window7_224", embed_dim=24, depths=(1, 1, 1, 1),
                              num_heads=(1, 1, 1, 1)).eval()
    wrapped = ZooFeatures(model, "timm", (224, 224))
    with torch.no_grad():
        feats = wrapped.features(torch.zeros(1, 3, 224, 224))
    stages = [n for n in feats if n.startswith("stage.")]
    assert [feats[n].shape[-1] for n in stages] == [f["num_chs"] for f in model.feature_info]
    assert {wrapped.layout_of(feats[n]) for n in [*stages, "head"]} == {"NHWC"}
    assert wrapped.layout_of(feats["pool"]) is None
