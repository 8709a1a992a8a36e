"""A weights file gets the eval transform of the weights it holds (issue 34, item 3).

Published files cannot be downloaded here, so the table of known weights is injected: a random
state dict is registered under a V1-style entry (torchvision's ``IMAGENET1K_V1`` of
MobileNetV2: resize 256, where the DEFAULT entry, V2, resizes to 232), recognised by the prefix
of its SHA-256 as torch.hub checks it, never by its name.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from featurebank.export import (
    PublishedWeights,
    export_onnx,
    read_onnx_metadata,
    register_weights,
    unregister_weights,
)
from featurebank.export._metadata import META_TRANSFORM
from featurebank.export._published import torchvision_entries, torchvision_transform
from featurebank.extractor import Extractor
from featurebank.spec import FeatureOptions, sha256_file

torch = pytest.importorskip("torch")
TOL = 1e-4


def transform_origin(path) -> dict:
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(meta[META_TRANSFORM])


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    """Random MobileNetV2 weights in a file named like torchvision's V1 download (the name must
    not matter): (model, weights path)."""
    torchvision = pytest.importorskip("torchvision", reason="torchvision does not import here")
    folder = tmp_path_factory.mktemp("weights")
    model = torchvision.models.mobilenet_v2(weights=None).eval()
    path = folder / "mobilenet_v2-b0353104.pth"  # the published V1 file's name, not its content
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture
def v1_entry(mobilenet):
    """The random file registered as MobileNetV2's V1 entry, removed after the test."""
    from torchvision.models import MobileNet_V2_Weights

    v1 = MobileNet_V2_Weights.IMAGENET1K_V1
    entry = PublishedWeights("torchvision", "mobilenet_v2", v1.name,
                             lambda: torchvision_transform(v1),
                             sha256_prefix=sha256_file(str(mobilenet[1]))[:8])
    register_weights(entry)
    yield v1
    unregister_weights(entry)


@pytest.mark.torchvision
def test_library_entries_carry_the_prefix_torch_hub_checks(mobilenet):
    entries = {e.name: e for e in torchvision_entries("mobilenet_v2")}
    assert entries["IMAGENET1K_V1"].sha256_prefix == "b0353104"
    assert entries["IMAGENET1K_V2"].sha256_prefix == "7ebf99e0"
    assert entries["IMAGENET1K_V1"].transform()["resize_size"] == 256


@pytest.mark.torchvision
def test_unknown_weights_assume_the_default_transform_and_say_so(mobilenet, caplog):
    """The file is named like V1's but its content is not V1's: the DEFAULT entry's transform
    is assumed, the log says which and how to state another (the export records it: below)."""
    from featurebank.export import build_torch_model

    with caplog.at_level("WARNING", logger="featurebank"):
        module = build_torch_model("torchvision:mobilenet_v2", mobilenet[1])
    assert module.preprocessing.resize_size == 232  # DEFAULT is IMAGENET1K_V2
    origin = module.transform_origin
    assert (origin.kind, origin.entry) == ("assumed", "torchvision IMAGENET1K_V2")
    assert "IMAGENET1K_V2" in caplog.text and "--resize" in caplog.text


@pytest.mark.slow
@pytest.mark.torchvision
def test_v1_style_entry_gets_its_own_transform_with_parity(mobilenet, v1_entry, tmp_path):
    """Registered under V1, the same file is preprocessed as V1 (resize 256), and the logits
    equal torchvision's own pipeline for V1 within 1e-4 on real photos. Before the table,
    the DEFAULT (V2) transform was used: resize 232."""
    from PIL import Image
    from skimage import data

    model, weights = mobilenet
    out = tmp_path / "m.onnx"
    spec = export_onnx("torchvision:mobilenet_v2", out, weights=weights)
    assert (spec.preprocessing.resize_size, spec.preprocessing.input_size) == (256, (224, 224))
    origin = transform_origin(out)
    assert origin["kind"] == "published" and origin["entry"] == "torchvision IMAGENET1K_V1"
    assert "b0353104" not in origin["how"] and sha256_file(str(weights))[:8] in origin["how"]
    paths = []
    for name in ("chelsea", "coffee"):
        paths.append(tmp_path / f"{name}.png")
        Image.fromarray(getattr(data, name)()).save(paths[-1])
    got = Extractor(FeatureOptions(model=str(out), layers=("stage.5", "logits"))).embed(
        [str(p) for p in paths])
    pipeline = v1_entry.transforms()
    with torch.no_grad():
        batch = torch.stack([pipeline(Image.open(p).convert("RGB")) for p in paths])
        last = model.features(batch).mean((2, 3)).numpy()
        logits = model(batch).numpy()
    for layer, ref in (("stage.5", last), ("logits", logits)):
        worst = float(np.abs(got[layer] - ref).max()) / max(1.0, float(np.abs(ref).max()))
        assert worst <= TOL, f"{layer}: {worst:.1e}"

    assert read_onnx_metadata(out).spec.weights_sha256 == sha256_file(str(weights))


@pytest.mark.timm
def test_timm_weights_matching_a_tag_get_the_tags_config(tmp_path):
    """timm:resnet18 --weights FILE whose tensors are (registered as) the tv_in1k tag's: that
    tag's config (crop 0.875, bilinear: resize 256), not the default tag's (a1_in1k: 0.95,
    bicubic: 235)."""
    timm = pytest.importorskip("timm", reason="timm does not import here (make zoo)")
    from featurebank.export._torch_models import weights_transform
    from featurebank.export._zoo import tensors_sha256, timm_transform

    model = timm.create_model("resnet18", pretrained=False).eval()
    weights = tmp_path / "r18.pth"
    torch.save(model.state_dict(), weights)

    def transform():  # what build_torch_model reads for timm:resnet18 --weights FILE
        fields, origin = weights_transform("timm", "resnet18", model, weights, "0" * 64)
        return fields or timm_transform(model.pretrained_cfg, "resnet18"), origin

    fields, origin = transform()
    assert (fields["resize_size"], fields["interpolation"]) == (235, "bicubic")  # a1_in1k
    assert origin.kind == "assumed" and origin.entry == "timm:resnet18.a1_in1k"
    cfg = timm.create_model("resnet18.tv_in1k", pretrained=False).pretrained_cfg
    entry = PublishedWeights("timm", "resnet18", "timm:resnet18.tv_in1k",
                             lambda: timm_transform(cfg, "resnet18"),
                             tensors_sha256=tensors_sha256(model))
    register_weights(entry)
    try:
        fields, origin = transform()
    finally:
        unregister_weights(entry)
    assert (fields["resize_size"], fields["interpolation"]) == (256, "bilinear")
    assert (origin.kind, origin.entry) == ("published", "timm timm:resnet18.tv_in1k")
