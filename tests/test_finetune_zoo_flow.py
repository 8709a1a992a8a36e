"""The whole fine-tune, from image folders to a tuned file that predicts, for timm and
torchvision sources: a torchvision ResNet-50 and MobileNetV3 cut at a stage, a timm ViT cut at
a block (its cached maps are tokens ``[N, T, C]``).

Each source runs the registry's guarantees (tests/test_finetune.py) on 36 real digits at
64x64, with random weights saved locally as the user's ``--weights`` (users' machines download
the pretrained ones): the tuned ONNX file's logits equal the assembled torch model's within
1e-4 (max|a - b| / max(1, max|b|)); ``featurebank predict`` on it agrees with the training
code's evaluation from the cached float16 maps on >= 99.9 % of the test images; and a real
``featurebank finetune`` process killed inside epoch 2 resumes to the uninterrupted run's model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests._finetune_checks import (
    kill_in_epoch_2,
    maps_logits,
    model_input,
    predict_agreement,
    relative,
)

torch = pytest.importorskip("torch")

EPOCHS, THREADS, SIZE = 2, 1, 64
#: source -> (the cut, the modules above it that train)
SOURCES = {
    "torchvision:resnet50": ("stage.4", ["layer4"]),
    "torchvision:mobilenet_v3_small": ("stage.4", [f"features.{i}" for i in range(9, 13)]),
    # test_vit: 6 blocks of width 64; blocks.1 leaves blocks 2..5 and the final norm to train
    "timm:test_vit": ("blocks.1", [*(f"blocks.{i}" for i in range(2, 6)), "norm"]),
}


def _source(name: str):
    lib = name.partition(":")[0]
    return pytest.param(name, id=name, marks=[pytest.mark.slow, getattr(pytest.mark, lib)])


@pytest.fixture(scope="module")
def digit_split(digits_dir, tmp_path_factory) -> tuple[Path, Path]:
    """12 training and 4 test digits of each of the classes 0, 1, 7."""
    root = tmp_path_factory.mktemp("zoo_digits")
    for split, first, count in (("train", 0, 12), ("test", 12, 4)):
        for c in ("0", "1", "7"):
            (root / split / c).mkdir(parents=True)
            for f in sorted((digits_dir / c).glob("*.png"))[first:first + count]:
                shutil.copy(f, root / split / c / f.name)
    return root / "train", root / "test"


@pytest.fixture(scope="module")
def tuned(request, digit_split, tmp_path_factory):
    """One source's uninterrupted fine-tune (Python API), exported."""
    name = request.param
    lib, _, arch = name.partition(":")
    pytest.importorskip(lib, reason=f"{lib} does not import here (make zoo)")
    from featurebank.finetune import finetune

    torch.manual_seed(0)  # the random weights standing in for the pretrained ones
    if lib == "timm":
        import timm

        library_model = timm.create_model(arch, pretrained=False)
    else:
        import torchvision

        library_model = torchvision.models.get_model(arch, weights=None)
    folder = tmp_path_factory.mktemp(f"zoo_ft_{arch}")
    weights = folder / f"{arch}.pth"
    torch.save(library_model.state_dict(), weights)
    train, test = digit_split
    out = folder / "tuned.onnx"
    result = finetune(train, model=name, from_layer=SOURCES[name][0], test=test, output=out,
                      epochs=EPOCHS, val_size=0.25, seed=0, threads=THREADS, input_size=SIZE,
                      weights=str(weights), progress=False)
    result.export(out)
    return result, out


@pytest.mark.parametrize("tuned", [_source(n) for n in SOURCES], indirect=True)
def test_tuned_file_equals_torch_and_predicts_as_the_cached_maps(tuned, digit_split, capsys):
    from featurebank.cli import main
    from featurebank.export import build_torch_model, read_onnx_metadata
    from featurebank.finetune import load_tuned
    from featurebank.finetune._data import base_onnx

    result, out = tuned
    layer, trained = SOURCES[result.model]
    # the top above the cut is the model's own modules after it, and they trained
    assert result.top.paths[0] == trained
    assert [r["epoch"] for r in result.history] == list(range(1, EPOCHS + 1))
    base = build_torch_model(result.model, result.options.weights, SIZE)
    moved = [p for p in trained if any(
        not torch.equal(v, base.model.get_submodule(p).state_dict()[k])
        for k, v in result.top.blocks[trained.index(p)].state_dict().items())]
    assert moved, "the layers above the cut must train"
    lineage = load_tuned(out).lineage
    assert (lineage["base_model"], lineage["from_layer"]) == (result.model, layer)
    assert lineage["base_weights_file"] == result.options.weights
    assert lineage["base_weights_sha256"] == base.weights_sha256
    cut = read_onnx_metadata(base_onnx(result.model, SIZE, result.options.weights)).layer(layer)
    if layer.startswith("blocks."):  # a ViT's maps are its tokens: [T, C] per image
        assert cut.layout == "tokens" and cut.shape == (1 + (SIZE // 16) ** 2, 64)

    # the file's logits are the torch model's, from the same decoded pixels
    import onnxruntime as ort

    images = sorted(digit_split[1].rglob("*.png"))
    x = model_input(out, images)
    with torch.no_grad():
        want = result.torch_model()(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"input": x})[0]
    assert got.shape == (len(images), 3) and relative(got, want) <= 1e-4
    # the fine-tuned top (exported or not: the choice may be the probe) assembled on the
    # library's model classifies the pixels as the trained top does the cached maps
    with torch.no_grad():
        tuned_logits = result.torch_model("finetuned")(torch.from_numpy(x)).numpy()
    from_maps = maps_logits(result, images, result.top)
    assert np.mean(tuned_logits.argmax(1) == from_maps.argmax(1)) >= 0.999

    capsys.readouterr()
    assert main(["predict", str(out), str(digit_split[1]), "--json"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(answers) == len(images)
    assert np.mean(predict_agreement(result, answers)) >= 0.999


@pytest.mark.parametrize("tuned", [_source("timm:test_vit")], indirect=True)
def test_zoo_finetune_killed_in_epoch_2_resumes_to_the_uninterrupted_model(tuned, tmp_path):
    """SIGKILL a real ``featurebank finetune --model timm:test_vit`` inside epoch 2; the next
    run starts from epoch 1's checkpoint and ends with the uninterrupted run's model."""
    from featurebank.finetune import finetune

    result, _ = tuned
    layer = SOURCES[result.model][0]
    out = tmp_path / "resumed.onnx"
    args = ["finetune", str(result.train_store), "--model", result.model, "--from", layer,
            "--weights", result.options.weights, "--input-size", str(SIZE),
            "--epochs", str(EPOCHS), "--val-size", "0.25", "--threads", str(THREADS),
            "--no-progress", "-o", str(out)]
    kill_in_epoch_2(args, out, THREADS)
    resumed = finetune(result.train_store, model=result.model, from_layer=layer, output=out,
                       epochs=EPOCHS, val_size=0.25, seed=0, threads=THREADS, input_size=SIZE,
                       weights=result.options.weights, progress=False)
    assert resumed.resumed_from == 1
    for a, b in zip(resumed.history, result.history, strict=True):  # as if never interrupted
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=1e-9)
    assert resumed.best_epoch == result.best_epoch and resumed.chosen == result.chosen
    want = result.top.state_dict()
    for k, v in resumed.top.state_dict().items():
        torch.testing.assert_close(v, want[k], rtol=1e-4, atol=1e-5, msg=k)
