"""A torch-free install (the core without the torch extra) embeds, trains and serves from an
exported .onnx file; a registry model that still needs exporting is a clear error naming the
extra. Run in a child process where torch (and torchvision, timm, onnxscript) cannot be
imported, with the model file this session exported."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from benchmarks.harness.faults import REPO, subprocess_env

CHILD = r"""
import json, sys
from pathlib import Path

BLOCKED = ("torch", "torchvision", "timm", "onnxscript")


class NotInstalled:
    # `import torch` raises ModuleNotFoundError, as where it is not installed

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())

import io
from featurebank.classical import train
from featurebank.errors import FeaturebankError
from featurebank.export import ensure_exported, export_onnx
from featurebank.extractor import embed_collection
from featurebank.service import create_app
from fastapi.testclient import TestClient

onnx, images, work = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
out = {}
summary = embed_collection([str(images)], work / "s.h5", str(onnx), progress=False)
out["embedded"] = summary.embedded
model = train(work / "s.h5", baseline=False)
out["classes"] = sorted(map(str, model.classes))
model.save(work / "m.joblib")
png = next((images / "3").glob("*.png")).read_bytes()
with TestClient(create_app(str(onnx), classifier=work / "m.joblib")) as client:
    r = client.post("/v1/predictions", content=png, headers={"content-type": "image/png"})
    out["predict_status"] = r.status_code
    out["prediction"] = r.json()
try:
    ensure_exported("efficientnet_lite2", cache_dir=work / "fresh-cache")
except FeaturebankError as exc:
    out["registry_error"] = str(exc)
try:
    export_onnx("efficientnet_lite0", work / "lite0.onnx")
except FeaturebankError as exc:
    out["export_error"] = str(exc)
out["torch_loaded"] = sorted(m for m, v in sys.modules.items()
                             if m.split(".")[0] in BLOCKED)
print(json.dumps(out))
"""


@pytest.mark.slow  # ~5 s idle, ~15 s on a loaded machine: a child importing the service stack
def test_without_torch_embed_train_and_serve_from_an_exported_file(tmp_path, lite0_onnx,
                                                                    digits_dir):
    images = tmp_path / "digits"
    for label in ("3", "8"):
        (images / label).mkdir(parents=True)
        for f in sorted((digits_dir / label).glob("*.png"))[:6]:
            shutil.copy(f, images / label / f.name)
    done = subprocess.run([sys.executable, "-c", CHILD, str(lite0_onnx), str(images),
                           str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env=subprocess_env(), cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["embedded"] == 12 and out["classes"] == ["3", "8"]
    assert out["predict_status"] == 200, out["prediction"]
    assert "3" in json.dumps(out["prediction"])
    assert out["torch_loaded"] == []
    error = out["registry_error"]
    assert "efficientnet_lite2" in error and "pip install 'featurebank[torch]'" in error
    assert ".onnx" in error  # and what works without torch
    assert "featurebank[torch]" in out["export_error"] and not (tmp_path / "lite0.onnx").exists()
    assert not (tmp_path / "fresh-cache").exists() or not any((tmp_path / "fresh-cache").iterdir())
