"""``finetune --model FILE.onnx`` where featurebank exported FILE: the refusal names the exact
command that fine-tunes the same network (issue 34, item 4)."""

from __future__ import annotations

import pytest

from featurebank import FeaturebankError
from featurebank.cli import main as cli
from featurebank.export import read_onnx_metadata

pytest.importorskip("torch")


def test_finetune_of_an_export_names_the_command_and_the_digest(lite0_onnx, tmp_path, capsys):
    (tmp_path / "train" / "a").mkdir(parents=True)
    code = cli(["finetune", str(tmp_path / "train"), "--model", str(lite0_onnx),
                "-o", str(tmp_path / "tuned.onnx")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    digest = read_onnx_metadata(lite0_onnx).spec.weights_sha256
    assert ("fine-tune that network: --model efficientnet_lite0, --weights STATE_DICT.pth, "
            "--input-size 224, where") in err
    assert digest[:16] in err and "not of a file" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]


def test_finetune_of_a_foreign_file_says_what_works(tmp_path):
    from featurebank.finetune import finetune

    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(FeaturebankError, match="no torch code.*timm:NAME or torchvision:NAME"):
        finetune(tmp_path / "train", model=str(tmp_path / "adopted.onnx"), from_layer="stage.3",
                 output=tmp_path / "tuned.onnx")
