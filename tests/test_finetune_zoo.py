"""Fine-tuning from any source with torch code: the top above a cut comes from the module tree.

For timm and torchvision models (zoo environment: ``make zoo``) the top is trained a few steps
on maps cut at a stage or a ViT block, assembled back with the untouched trunk, and exported:
the assembled torch model gives the top's logits, and onnxruntime gives torch's, within 1e-4
(max|a - b| / max(1, max|b|), as every parity figure of the project).
"""

from __future__ import annotations

import pytest

from featurebank import FeaturebankError
from tests._finetune_checks import relative

torch = pytest.importorskip("torch")


def test_an_onnx_file_is_refused_with_what_works(tmp_path):
    from featurebank.finetune._top import build_top

    with pytest.raises(FeaturebankError, match="no torch code.*timm:NAME or torchvision:NAME"):
        build_top(str(tmp_path / "adopted.onnx"), "stage.3", 3, 0.2)


@pytest.mark.slow
@pytest.mark.parametrize("lib, arch, layer", [
    pytest.param("timm", "test_resnet", "stage.3", marks=pytest.mark.timm),
    pytest.param("timm", "test_vit", "blocks.2", marks=pytest.mark.timm),
    pytest.param("torchvision", "mobilenet_v3_small", "stage.3", marks=pytest.mark.torchvision),
    pytest.param("torchvision", "resnet18", "stage.4", marks=pytest.mark.torchvision),
])
def test_top_above_a_cut_trains_assembles_and_exports(lib, arch, layer, tmp_path):
    pytest.importorskip(lib, reason=f"{lib} does not import here (make zoo)")
    import onnxruntime as ort

    from featurebank.export import build_torch_model, export_module, read_onnx_metadata
    from featurebank.finetune._top import assemble, build_top, finetune_cuts
    from featurebank.spec import ModelSpec

    torch.manual_seed(0)  # the new classifier's init and the few training steps repeat
    if lib == "timm":
        import timm

        library_model = timm.create_model(arch, pretrained=False)
    else:
        import torchvision

        library_model = torchvision.models.get_model(arch, weights=None)
    weights = tmp_path / "w.pth"
    torch.save(library_model.state_dict(), weights)
    name = f"{lib}:{arch}"
    base = build_torch_model(name, weights)
    assert layer in finetune_cuts(base)
    size = base.preprocessing.input_size
    x = torch.randn(6, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        maps = base.features(x)[layer]
    top, base_sha = build_top(name, layer, 4, 0.0, weights=str(weights))
    assert base_sha == base.weights_sha256
    frozen = {k: v.clone() for k, v in top.state_dict().items()}
    opt = torch.optim.SGD(top.parameters(), lr=0.05)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    top.train()
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(top(maps), y).backward()
        opt.step()
    top.eval()
    trained = [k for k, v in top.state_dict().items()
               if k in frozen and not k.startswith("classifier") and not torch.equal(v, frozen[k])]
    assert trained, "the layers above the cut must train"
    with torch.no_grad():
        want = top(maps).numpy()
    full = assemble(name, top, weights=str(weights))
    with torch.no_grad():
        got = full.features(x)["logits"].numpy()
    assert relative(got, want) <= 1e-4

    out = tmp_path / "tuned.onnx"
    spec = ModelSpec(f"{name}.finetuned", full.weights_sha256, base.preprocessing, "finetune")
    export_module(full, spec, out)
    assert read_onnx_metadata(out).layer("logits").shape == (4,)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(["logits"], {"input": x.numpy()})[0]
    assert relative(onnx_logits, got) <= 1e-4


@pytest.mark.timm
def test_a_cut_that_is_not_a_stage_is_refused_with_the_stages():
    pytest.importorskip("timm", reason="timm does not import here (make zoo)")
    from featurebank.export import build_torch_model
    from featurebank.finetune._top import TopNet

    base = build_torch_model("timm:test_resnet", _random_weights("test_resnet"))
    with pytest.raises(FeaturebankError, match="cut at one of stage.1, stage.2"):
        TopNet(base, "blocks.3", 3)


def _random_weights(arch: str) -> str:
    import tempfile

    import timm

    path = tempfile.NamedTemporaryFile(suffix=".pth", delete=False).name
    torch.save(timm.create_model(arch, pretrained=False).state_dict(), path)
    return path


def test_finetune_refuses_an_onnx_file_and_a_missing_weights_file_before_any_file(tmp_path):
    from featurebank.finetune import finetune

    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(FeaturebankError, match="no torch code.*timm:NAME or torchvision:NAME"):
        finetune(tmp_path / "train", model=str(tmp_path / "adopted.onnx"), from_layer="stage.3",
                 output=tmp_path / "tuned.onnx")
    with pytest.raises(FeaturebankError, match="weights .*gone.pth'?: no such file"):
        finetune(tmp_path / "train", model="efficientnet_lite0", from_layer="blocks.12",
                 output=tmp_path / "tuned.onnx", weights=str(tmp_path / "gone.pth"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]


def test_cached_rows_batch_as_tokens_or_channels_last_maps():
    """A ViT's token rows come back as [N, T, C] (channels-last applies to 4-D maps only: it
    refused the tokens before), a CNN's C, H, W rows as NCHW in channels-last memory."""
    import numpy as np

    from featurebank.finetune._train import as_batch

    rows = np.arange(2 * 5 * 4, dtype=np.float16).reshape(2, 20)
    tokens = as_batch(rows, (5, 4))
    assert tokens.shape == (2, 5, 4) and tokens.dtype == torch.float32
    np.testing.assert_array_equal(tokens.numpy().reshape(2, 20), rows.astype(np.float32))
    maps = as_batch(rows, (5, 2, 2))
    assert maps.shape == (2, 5, 2, 2) and maps.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(maps.numpy().reshape(2, 20), rows.astype(np.float32))


def test_each_top_owns_its_modules_and_seeds_alike_built_or_copied():
    """Every training of a run (main, folds, export) gets its own copy of the base: one
    top's training leaves the next untouched, and a copied base seeds its new head as a
    freshly built one does."""
    from featurebank.finetune import _top

    _top._PRISTINE.clear()
    torch.manual_seed(3)
    built, sha = _top.build_top("efficientnet_lite0", "blocks.14", 3, 0.2)  # built here
    torch.manual_seed(3)
    copied, sha_again = _top.build_top("efficientnet_lite0", "blocks.14", 3, 0.2)  # copied
    assert sha == sha_again
    want = {k: v.clone() for k, v in copied.state_dict().items()}
    assert all(torch.equal(v, want[k]) for k, v in built.state_dict().items())
    with torch.no_grad():
        for p in built.parameters():
            p.add_(1.0)
    third, _ = _top.build_top("efficientnet_lite0", "blocks.14", 3, 0.2)
    assert all(torch.equal(v, want[k]) for k, v in copied.state_dict().items())
    assert all(torch.equal(v, want[k]) for k, v in third.state_dict().items()
               if not k.startswith("classifier."))


@pytest.mark.timm
def test_a_vit_at_a_size_it_cannot_take_is_refused_before_any_file(tmp_path):
    """timm's vit_tiny_patch16_224 asserts on any other input size (its patch grid is fixed):
    fine-tuning it at --input-size 64 is refused by name, not with the library's assertion;
    timm's test_vit (dynamic image size) runs at 64 in tests/test_finetune_zoo_flow.py."""
    timm = pytest.importorskip("timm", reason="timm does not import here (make zoo)")
    from featurebank.finetune import finetune

    weights = tmp_path / "vit_tiny.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict(), weights)
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(FeaturebankError, match=r"does not run at 64x64 .*takes 224x224; drop "
                                               r"input_size=64 \(leave it unset\)"):
        finetune(tmp_path / "train", model="timm:vit_tiny_patch16_224", from_layer="blocks.9",
                 output=tmp_path / "tuned.onnx", input_size=64, weights=str(weights))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train", "vit_tiny.pth"]
