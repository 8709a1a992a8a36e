"""Checks every fine-tuned model must pass, whatever its source (registry, timm, torchvision):
the tuned file's input from real image files, ``predict`` against the cached-map evaluation,
and a real ``featurebank finetune`` process killed inside its second epoch.

Shared by tests/test_finetune.py (the registry's Lite0) and tests/test_finetune_zoo_flow.py
(timm and torchvision sources).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def relative(a: np.ndarray, b: np.ndarray) -> float:
    """max|a - b| / max(1, max|b|): random-weight logits reach thousands, where float32 rounding
    alone is 1e-3 absolute."""
    return float(np.abs(a - b).max() / max(1.0, float(np.abs(b).max())))


def model_input(onnx_path: Path, images: list[Path]) -> np.ndarray:
    """The float32 NCHW batch a torch model takes for ``images``: decoded as the file's spec
    says, normalised with its mean and std (the ONNX graph does the same inside)."""
    from featurebank.export import read_onnx_metadata
    from featurebank.extractor import decode

    pre = read_onnx_metadata(onnx_path).spec.preprocessing
    pixels = np.stack([decode(str(p), pre) for p in images]).astype(np.float32)
    x = (pixels / 255.0 - np.array(pre.mean, np.float32)) / np.array(pre.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def maps_logits(result, images: list[str], top=None) -> np.ndarray:
    """The training code's logits for ``images`` of ``result``'s test folder, from their
    cached float16 maps, by ``top`` (default: the chosen one), in the order given."""
    from featurebank.extractor import FeatureStore
    from featurebank.finetune._data import cut_spec, load_maps
    from featurebank.finetune._inputs import open_collection
    from featurebank.finetune._train import predict_logits

    opts = result.options
    spec, shape = cut_spec(result.model, result.layer, opts.input_size, opts.weights)
    maps = load_maps(open_collection(result.test_store, "test", spec), spec, shape)
    feats = FeatureStore(result.test_store).read()
    key_of = dict(zip(feats.paths, feats.keys, strict=True))
    row = {k: i for i, k in enumerate(maps.keys)}
    rows = np.array([row[key_of[str(p)]] for p in images])
    return predict_logits(top or result.trained.chosen_top, maps.X, maps.shape, rows)


def predict_agreement(result, answers: list[dict]) -> np.ndarray:
    """Per ``featurebank predict`` answer (on ``result``'s test folder), whether its label is
    the class the training code's evaluation from the cached float16 maps gives that image."""
    from_maps = maps_logits(result, [a["path"] for a in answers]).argmax(1)
    return np.array([a["label"] == result.classes[c] for a, c in zip(answers, from_maps,
                                                                     strict=True)])


def checkpoint_epoch(path: Path) -> int | None:
    """The last finished epoch a fine-tuning checkpoint holds (None: no readable checkpoint)."""
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except (OSError, EOFError, RuntimeError, KeyError):
        return None


# The child pauses itself at the first optimiser step after epoch 1's checkpoint (inside epoch
# 2, on any machine) and says so; the kill waits on that line, not on the clock.
_PAUSING_CHILD = """
import os, sys, threading, torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from featurebank.cli import main
ckpt, seen = sys.argv.pop(1), set()
def pause_in_epoch_2(opt, args, kwargs):
    try:
        st = os.stat(ckpt)
    except OSError:
        return
    if (st.st_ino, st.st_mtime_ns) in seen:
        return
    seen.add((st.st_ino, st.st_mtime_ns))
    if torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"] == 1:
        print("PAUSED IN EPOCH 2", flush=True)
        threading.Event().wait()
register_optimizer_step_post_hook(pause_in_epoch_2)
sys.exit(main(sys.argv[1:]))
"""


def kill_in_epoch_2(finetune_args: list[str], output: Path, threads: int) -> None:
    """Run ``featurebank finetune_args`` (writing ``output``) in a real process, SIGKILL it
    inside its second epoch, and check what it leaves: epoch 1's checkpoint, no model file."""
    ckpt = output.with_name(output.name + ".ckpt")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-c", _PAUSING_CHILD, str(ckpt), *finetune_args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output_lines = []
    try:
        for line in proc.stdout:
            output_lines.append(line)
            if line.strip() == "PAUSED IN EPOCH 2":
                break
        else:
            pytest.fail("the run ended before epoch 2:\n" + "".join(output_lines)[-2000:])
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert checkpoint_epoch(ckpt) == 1  # killed mid-epoch 2: the last finished epoch is kept
    assert not output.exists()
