"""README's `adopt` example: the same command as docs/your-own-model.md's torchvision example,
with the same export snippet, and it runs (on a small torch CNN exported the README's way)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _commands(doc: str) -> list[str]:
    """Shell commands of a Markdown file's bash blocks, continuation lines joined."""
    text = (REPO / doc).read_text(encoding="utf-8")
    blocks = re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)
    return [line.strip() for b in blocks for line in b.replace("\\\n", " ").splitlines()]


def _adopt(doc: str) -> list[str]:
    (cmd,) = [c for c in _commands(doc) if c.startswith("featurebank adopt resnet50.onnx ")]
    return shlex.split(cmd.split("#")[0])[1:]


def _export_snippet(doc: str) -> str:
    (cmd,) = [c for c in _commands(doc) if "torchvision.models.resnet50" in c]
    return re.sub(r"\s+", " ", cmd)


def test_readme_adopt_example_is_the_guides():
    assert _adopt("README.md") == _adopt("docs/your-own-model.md")
    assert _export_snippet("README.md") == _export_snippet("docs/your-own-model.md")


@pytest.mark.slow  # torch's exporter and one adopt run (~10 s)
def test_readme_adopt_example_runs(tmp_path):
    """The README's export call on a small CNN instead of torchvision's ResNet-50 (no weights
    download here), then its adopt command, exactly as shown."""
    snippet = _export_snippet("README.md")
    code = re.search(r'python -c "(.*)"', snippet).group(1)
    small = ("import torch; m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), "
             "torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), "
             "torch.nn.Linear(8, 5)).eval(); ")
    code = small + code.split("; ", 2)[2]  # drop the torchvision import and model line
    assert code.startswith(small + "torch.onnx.export(m, ")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=300)
    from featurebank.cli import main
    from featurebank.export import read_onnx_metadata

    args = _adopt("README.md")
    assert main([args[0], str(tmp_path / args[1]), *[
        str(tmp_path / a) if a.endswith(".onnx") else a for a in args[2:]]]) == 0
    pre = read_onnx_metadata(tmp_path / "resnet50.fb.onnx").spec.preprocessing
    assert (pre.pixel_range, pre.channel_order, pre.resize_size) == (1, "rgb", 256)
    assert pre.mean == pytest.approx((0.485, 0.456, 0.406))
    assert pre.std == pytest.approx((0.229, 0.224, 0.225))
