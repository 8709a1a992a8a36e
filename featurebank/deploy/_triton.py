"""A Triton model repository: ``REPO/NAME/1/model.onnx``, ``REPO/NAME/config.pbtxt`` and
``REPO/NAME/labels.txt`` (the class names, for Triton's classification extension).

The config is written as text in Triton's model-config format (``model_config.proto``); the
tests parse it with Triton's own protobuf (``tritonclient.grpc.model_config_pb2``). A version
that exists is never replaced: Triton may be serving it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from featurebank.deploy._options import PREFERRED_BATCH_SIZES, DeployOptions
from featurebank.errors import FeaturebankError

VERSION = "1"


def triton_target(repo: str | Path, name: str) -> Path:
    """``REPO/NAME``, refused before any work if version 1 exists or REPO cannot be written."""
    folder = Path(repo) / name
    if (folder / VERSION).exists():
        raise FeaturebankError(
            f"{folder / VERSION} exists; featurebank never replaces a model version that Triton "
            f"may be serving: choose another name (name=NAME), or remove {folder} yourself")
    existing = next((p for p in (Path(repo), *Path(repo).parents) if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise FeaturebankError(f"cannot write the Triton repository {repo}: {existing} is not a "
                               "writable folder")
    return folder


def config_text(name: str, deployable: Any, options: DeployOptions) -> str:
    """``config.pbtxt`` for the fused graph: typed input and outputs with a dynamic batch
    (``max_batch_size`` > 0 makes the first axis the batch), dynamic batching, instances."""
    h, w = deployable.input_size
    preferred = [b for b in PREFERRED_BATCH_SIZES if b <= options.max_batch_size]
    preferred = preferred or [options.max_batch_size]
    kind = f"KIND_{options.instance_kind.upper()}"
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {options.max_batch_size}
input [
  {{
    name: "pixels"
    data_type: TYPE_UINT8
    dims: [ {h}, {w}, 3 ]
  }}
]
output [
  {{
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ {len(deployable.classes)} ]
    label_filename: "labels.txt"
  }},
  {{
    name: "label"
    data_type: TYPE_INT64
    dims: [ 1 ]
    reshape: {{ shape: [ ] }}
  }}
]
dynamic_batching {{
  preferred_batch_size: [ {", ".join(map(str, preferred))} ]
  max_queue_delay_microseconds: {options.queue_delay_us}
}}
instance_group [
  {{
    count: {options.instances}
    kind: {kind}
  }}
]
"""


def write_triton(deployable: Any, repo: str | Path, name: str,
                 options: DeployOptions | None = None) -> Path:
    """Write the repository entry ``REPO/NAME`` for ``deployable``; return its folder.

    Parameters
    ----------
    deployable : Deployable
        From :func:`featurebank.deploy.build_deployable`.
    repo : path
        The model repository (created if missing).
    name : str
        The model's name: its folder in the repository.
    options : DeployOptions, optional
        Batch size, instances, queue delay.
    """
    options = options or DeployOptions()
    folder = triton_target(repo, name)
    bad = [c for c in deployable.classes if "\n" in c or "\r" in c]
    if bad:
        raise FeaturebankError(f"class name {bad[0]!r} holds a line break; Triton's labels file "
                               "has one class per line")
    config = config_text(name, deployable, options)
    existing = folder / "config.pbtxt"
    if existing.is_file() and existing.read_text() != config:
        # one config serves every version of a model: another one's inputs, classes or
        # batching would not fit the versions already there
        raise FeaturebankError(f"{folder} holds versions with another config.pbtxt (other "
                               "inputs, classes or batching); choose another "
                               "name (name=NAME)")
    staging = folder.with_name(f".{name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        (staging / VERSION).mkdir(parents=True)
        deployable.save(staging / VERSION / "model.onnx")
        (staging / VERSION / "model.README.md").replace(staging / "README.md")
        (staging / "labels.txt").write_text("".join(f"{c}\n" for c in deployable.classes))
        (staging / "config.pbtxt").write_text(config)
        folder.parent.mkdir(parents=True, exist_ok=True)
        if folder.exists():  # other versions are there: add ours beside them
            os.replace(staging / VERSION, folder / VERSION)
            for extra in ("config.pbtxt", "labels.txt", "README.md"):
                os.replace(staging / extra, folder / extra)
        else:
            os.replace(staging, folder)
    except OSError as exc:
        raise FeaturebankError(f"cannot write the Triton repository {folder}: "
                               f"{exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
