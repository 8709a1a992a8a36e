"""torch module -> self-describing ONNX file.

The file carries everything extraction needs, so embedding never imports torch: the ModelSpec
(model, weights digest, preprocessing) and the layer catalogue (friendly name -> ONNX tensor,
shape, FLOPs share) in ``metadata_props``. Each catalogue layer stays a named tensor of the graph
(``layer.<name>``) so the extractor can cut there.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from featurebank.errors import FeaturebankError
from featurebank.export._metadata import LayerInfo, describe
from featurebank.export._registry import get_model_entry
from featurebank.export._torch_models import build_torch_model
from featurebank.paths import check_writable
from featurebank.spec import ModelSpec, Preprocessing

log = logging.getLogger(__name__)
OPSET = 18
INPUT_NAME = "input"


def _catalogue_modules(model: nn.Module) -> dict[str, nn.Module]:
    if hasattr(model, "blocks") and hasattr(model, "stem"):  # EfficientNetLite
        mods = {"stem": model.stem}
        mods.update({f"blocks.{i}": b for i, b in enumerate(model.blocks)})
        mods.update({"head": model.head, "logits": model.classifier})
        return mods
    return {}


def flops_shares(model: nn.Module, size: tuple[int, int]) -> dict[str, float]:
    """Share of the model's multiply-adds (conv + linear) spent up to and including each cut."""
    total = [0]
    at_cut: dict[str, int] = {}

    def count(mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            total[0] += out.shape[1] * out.shape[2] * out.shape[3] * k
        elif isinstance(mod, nn.Linear):
            total[0] += mod.in_features * mod.out_features * (out.numel() // out.shape[-1])

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    zoo = hasattr(model, "on_cut")  # ZooFeatures says when each cut is produced
    if zoo:
        model.on_cut = lambda n: at_cut.__setitem__(n, total[0])
    else:
        for name, mod in _catalogue_modules(model).items():
            hooks.append(mod.register_forward_hook(
                lambda *_a, n=name: at_cut.__setitem__(n, total[0])))
    try:
        with torch.no_grad():
            model.features(torch.zeros(1, 3, *size)) if zoo else model(torch.zeros(1, 3, *size))
    finally:
        for h in hooks:
            h.remove()
        if zoo:
            model.on_cut = None
    grand = max(total[0], 1)
    return {name: at_cut[name] / grand for name in at_cut}


class _AllOutputs(nn.Module):
    """Returns logits and every catalogue activation, so their ONNX tensors get known names."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, x):
        feats = self.model.features(x)
        return tuple(feats[n] for n in self.names)


def export_onnx(
    model: str,
    out: str | Path,
    weights: str | Path | None = None,
    input_size: int | None = None,
) -> ModelSpec:
    """Export a registry model to a self-describing ONNX file, atomically.

    Parameters
    ----------
    model : str
        Registry name, e.g. ``efficientnet_lite0``.
    out : path
        Destination ``.onnx``; written to a temporary name in the same folder, then renamed, so
        no partial file is ever left behind.
    weights : path, optional
        A state dict of the same architecture (for example fine-tuned); default: ImageNet.
    input_size : int, optional
        Square input side; default: the model's pretrained size.

    Returns
    -------
    ModelSpec
        The spec written into the file.
    """
    out = Path(out)
    if input_size is not None and not 32 <= int(input_size) <= 4096:
        raise FeaturebankError(f"input_size {input_size}: give a square side between 32 and 4096")
    check_writable(out, suffix=".onnx")
    entry = get_model_entry(model)
    module = build_torch_model(model, weights, input_size)
    digest = module.weights_sha256
    pre = getattr(module, "preprocessing", None) or entry.preprocessing  # zoo: eval transform
    if input_size:
        ratio = pre.resize_size / min(pre.input_size)
        pre = Preprocessing(**{**pre.to_dict(), "input_size": (input_size, input_size),
                               "resize_size": int(round(input_size * ratio))})
    spec = ModelSpec(model=model, weights_sha256=digest, preprocessing=pre, source=entry.source)
    export_module(module, spec, out)
    log.info("exported %s to %s", model, out)
    return spec


def export_module(module: nn.Module, spec: ModelSpec, out: str | Path,
                  extra: dict[str, str] | None = None) -> None:
    """Write an eval-mode featurebank torch network (``features(x)`` giving every catalogue
    activation) to ``out`` as a self-describing ONNX file, atomically.

    ``spec`` is written as the file's model spec; ``extra`` adds metadata keys (a fine-tuned
    model's lineage). Only ``logits`` is a graph output; every catalogue activation stays a
    named inner tensor the extractor can cut at."""
    out = Path(out)
    check_writable(out, suffix=".onnx")
    size = spec.preprocessing.input_size
    with torch.no_grad():
        feats = module.features(torch.zeros(1, 3, *size))
    shapes = {k: tuple(v.shape[1:]) for k, v in feats.items()}
    # one graph tensor per distinct activation: a name that is the same tensor as an earlier
    # one (a ResNet's head is its last stage) points at that tensor
    first: dict[str, str] = {}
    for n in ["logits", *feats]:
        first[n] = next(m for m in ["logits", *feats] if feats[m] is feats[n])
    names = [n for n in dict.fromkeys(["logits", *feats]) if first[n] == n]
    tensor = {n: first[n] if first[n] == "logits" else f"layer.{first[n]}" for n in shapes}
    shares = flops_shares(module, size)
    proto = _trace(_AllOutputs(module, names), size, [tensor[n] for n in names])
    keep = [o for o in proto.graph.output if o.name == "logits"]
    del proto.graph.output[:]
    proto.graph.output.extend(keep)
    layout_of = getattr(module, "layout_of", lambda _v: None)  # channels-last zoo models
    layers = [LayerInfo(n, tensor[n], shapes[n], round(shares.get(n, 1.0), 6),
                        "tokens" if len(shapes[n]) == 2 else layout_of(feats[n]))
              for n in shapes]
    describe(proto, spec, layers, {"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32",
                                   "normalized": True, "shape": ["N", 3, *size]}, extra)
    proto.producer_name = "featurebank"
    onnx.checker.check_model(proto)
    _atomic_save(proto, out)


def _trace(wrapper: nn.Module, size: tuple[int, int], output_names: list[str]) -> onnx.ModelProto:
    example = torch.zeros(2, 3, *size)
    noisy = [logging.getLogger(n) for n in ("torch.onnx", "onnx_ir", "onnxscript", "torch.export")]
    levels = [lg.level for lg in noisy]
    for lg in noisy:  # the exporter narrates every pass; only errors matter to users
        lg.setLevel(logging.ERROR)
    try:
        return _trace_quiet(wrapper, example, output_names)
    finally:
        for lg, level in zip(noisy, levels, strict=True):
            lg.setLevel(level)


def _trace_quiet(wrapper: nn.Module, example: torch.Tensor, output_names: list[str]) -> onnx.ModelProto:
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")
        path = Path(tmp) / "m.onnx"
        program = torch.onnx.export(
            wrapper, (example,), dynamo=True, opset_version=OPSET, input_names=[INPUT_NAME],
            output_names=output_names, dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            optimize=True, verbose=False,
        )
        program.save(str(path), external_data=False)
        return onnx.load(str(path))


def _atomic_save(proto: onnx.ModelProto, out: Path) -> None:
    """Write to a temporary file beside ``out`` and rename it: readers never see a partial file."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        onnx.save(proto, tmp)
        os.replace(tmp, out)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise FeaturebankError(f"cannot write {out}: {exc.strerror or exc}") from exc
        raise
