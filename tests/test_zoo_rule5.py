"""Naming rule 5 in the torchvision zoo: ``pool`` is the input of the last classifier layer
for every source. AlexNet and VGG pool to 6x6/7x7 maps, not globally, so their ``pool`` is fc7
after its activation (was the flattened 9,216/25,088-d map), as for their ONNX graphs
(``tests/test_light_graphs.py``) and timm's ``pre_logits``; the spec says rule 5 so that old
stores refuse the new rows. Global-pool networks keep the pooled vector and rule 1."""

from __future__ import annotations

import numpy as np
import pytest

from featurebank import FeaturebankError
from featurebank.cli import main as cli
from featurebank.export import read_onnx_metadata
from featurebank.extractor import Extractor

torch = pytest.importorskip("torch")


@pytest.mark.slow
@pytest.mark.torchvision
def test_alexnet_pool_is_fc7_after_its_relu(tmp_path, capsys):
    """Exported through the command line with its eval transform stated (export's --resize,
    --interpolation, --mean, --std: adopt's meaning), which the file records as stated."""
    torchvision = pytest.importorskip("torchvision", reason="torchvision does not import here")
    model = torchvision.models.alexnet(weights=None).eval()
    weights, out = tmp_path / "alexnet.pth", tmp_path / "alexnet.onnx"
    torch.save(model.state_dict(), weights)
    assert cli(["export", "torchvision:alexnet", "-o", str(out), "--weights", str(weights),
                "--resize", "240", "--interpolation", "bicubic", "--mean", "0.5,0.4,0.3",
                "--std", "0.2,0.25,0.3"]) == 0
    printed = capsys.readouterr().out
    info = read_onnx_metadata(out)
    spec = info.spec
    assert spec.naming == 5 and spec.to_dict()["model"] == "torchvision:alexnet"
    pre = spec.preprocessing
    assert (pre.resize_size, pre.interpolation, pre.mean, pre.std, pre.input_size) == \
        (240, "bicubic", (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), (224, 224))
    assert info.transform["kind"] == "stated" and "resize_size" in info.transform["how"]
    assert "eval transform: resize 240" in printed and "stated" in printed
    from featurebank.finetune import finetune  # the file names the command that tunes it
    from featurebank.spec import sha256_file

    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(FeaturebankError) as refused:
        finetune(tmp_path / "train", model=str(out), from_layer="stage.3", output=tmp_path / "t.onnx")
    assert ("model='torchvision:alexnet', weights=STATE_DICT.pth, input_size=224"
            in str(refused.value))
    assert sha256_file(str(weights))[:16] in str(refused.value)
    layers = {la.name: la for la in read_onnx_metadata(out).layers}
    assert layers["pool"].shape == (4096,) and layers["head"].shape == (256, 6, 6)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), np.uint8)
    got = Extractor(str(out), layers=["pool"], device="cpu").embed_pixels(pixels)[0]
    pre = spec.preprocessing
    mean, std = (torch.tensor(v)[:, None, None] for v in (pre.mean, pre.std))
    x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - mean) / std
    seen = {}
    hook = model.classifier[-1].register_forward_pre_hook(lambda _m, i: seen.setdefault("x", i[0]))
    with torch.no_grad():
        model(x)
    hook.remove()
    ref = seen["x"].numpy()
    assert float(np.abs(got - ref).max()) / max(1.0, float(np.abs(ref).max())) <= 1e-5
    assert (ref >= 0).all()  # after the ReLU


@pytest.mark.torchvision
def test_global_pool_networks_keep_the_pooled_vector_and_rule_1():
    torchvision = pytest.importorskip("torchvision", reason="torchvision does not import here")
    from featurebank.export._zoo import ZooFeatures

    resnet = ZooFeatures(torchvision.models.resnet18(weights=None).eval(), "torchvision", (64, 64))
    assert resnet.naming == 1
    assert resnet.features(torch.zeros(1, 3, 64, 64))["pool"].shape == (1, 512)
    vgg = ZooFeatures(torchvision.models.vgg11(weights=None).eval(), "torchvision", (64, 64))
    assert vgg.naming == 5
    assert vgg.features(torch.zeros(1, 3, 64, 64))["pool"].shape == (1, 4096)  # was 25,088
