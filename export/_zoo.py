"""timm and torchvision classifiers as featurebank models: friendly cuts and eval preprocessing
from each library's own description of the model.

Cuts (the layer catalogue of the exported file):

- ``stage.K`` (K from 1): timm's ``feature_info`` stages (the library's feature-pyramid
  description); for torchvision, the last module at each spatial resolution of the trunk (the
  top-level modules before the global pool, with ``features`` and other ``Sequential``\\ s that
  span several resolutions opened up), i.e. the stem, ``layer1..4`` of a ResNet, the last block
  per resolution of ``features``;
- ``blocks.K`` (K from 0) for a vision transformer: the output of every transformer block,
  ``[N, T, C]`` tokens (layout ``tokens``);
- ``head``: what the classifier head pools (timm ``forward_features``; torchvision: the input of
  ``avgpool``, the encoder output of a ViT); ``pool``: the classifier's input vector (timm
  ``forward_head(pre_logits=True)``; torchvision: the flattened ``avgpool`` output where it
  pools to 1x1, else the input of the classifier's last Linear (VGG, AlexNet: fc7 after its
  activation; naming rule 5, recorded as the spec's ``naming``), a ViT's class token);
  ``logits``.

Preprocessing is the model's own eval transform: timm's pretrained config (``input_size``,
``interpolation``, ``mean``/``std``, ``crop_pct``: resize ``floor(size / crop_pct)``, centre
crop) and torchvision's weights transforms (``resize_size``, ``crop_size``, ``interpolation``);
both resize a PIL image with torchvision's rounding (``resize_rule='torchvision'``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featurebank.errors import FeaturebankError
from featurebank.spec import Preprocessing

_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def create(source: str, arch: str, weights: str | Path | None = None) -> nn.Module:
    """The library's classifier ``arch``: pretrained (downloaded by the library) or, with
    ``weights``, random init then the state dict (strictly checked)."""
    from featurebank.export._weights import load_checked, load_state_dict_file

    try:
        if source == "torchvision":
            import torchvision

            model = torchvision.models.get_model(arch, weights=None if weights else "DEFAULT")
        else:
            import timm

            model = timm.create_model(arch, pretrained=not weights)
    except (FeaturebankError, KeyboardInterrupt):
        raise
    except Exception as exc:  # unknown name, or the pretrained download failed (offline)
        hint = ("" if weights else "; offline, pass a local state dict: weights=FILE")
        raise FeaturebankError(f"{source}:{arch} could not be built: {exc}{hint}") from exc
    if weights:
        load_checked(model, load_state_dict_file(weights), str(weights))
    return model.eval()


def tensors_sha256(model: nn.Module) -> str:
    """Digest of a model's tensors (the library's download has no stable path to hash)."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def eval_preprocessing(source: str, arch: str, model: nn.Module | None = None,
                       transform: dict[str, Any] | None = None) -> Preprocessing:
    """The model's own eval transform as a :class:`Preprocessing` (plus its prefix tokens):
    ``transform`` (Preprocessing fields: a published entry's, see
    :mod:`featurebank.export._published`) or else the default weights'."""
    model = model if model is not None else create_random(source, arch)
    if transform is None:
        transform = timm_transform(model.pretrained_cfg, arch) if source == "timm" \
            else _torchvision_transform(arch)
    pre = {**transform, "interpolation": _interpolation(transform["interpolation"], arch)}
    prefix, cls = token_prefix(model)
    return Preprocessing(**pre, resize_rule="torchvision", prefix_tokens=prefix, class_token=cls)


def timm_transform(cfg: dict[str, Any], arch: str) -> dict[str, Any]:
    """A timm pretrained config's eval transform as Preprocessing fields (resize
    ``floor(size / crop_pct)``, centre crop)."""
    size = tuple(int(v) for v in cfg["input_size"][1:])
    if size[0] != size[1]:
        raise FeaturebankError(f"timm:{arch} takes {size[0]}x{size[1]} images; featurebank "
                               f"reproduces square eval inputs only")
    if cfg.get("crop_mode", "center") != "center":
        raise FeaturebankError(f"timm:{arch} evaluates with crop_mode={cfg['crop_mode']!r}; "
                               f"featurebank reproduces 'center' (resize, centre crop) only")
    crop_pct = cfg.get("crop_pct") or 0.875
    return dict(input_size=size, resize_size=math.floor(size[0] / crop_pct),
                interpolation=cfg.get("interpolation", "bicubic"),
                mean=tuple(cfg.get("mean", _IMAGENET_MEAN)), std=tuple(cfg.get("std", _IMAGENET_STD)))


def default_entry(source: str, arch: str, model: nn.Module) -> str:
    """The name of the weights entry whose transform :func:`eval_preprocessing` uses by default
    (torchvision's ``DEFAULT``, timm's tag)."""
    if source == "timm":
        tag = model.pretrained_cfg.get("tag")
        return f"timm:{arch.partition('.')[0]}.{tag}" if tag else f"timm:{arch}"
    import torchvision

    try:
        return f"torchvision {torchvision.models.get_model_weights(arch).DEFAULT.name}"
    except Exception:  # noqa: BLE001 - no weights enum: _torchvision_transform refuses it
        return f"torchvision:{arch}"


def create_random(source: str, arch: str) -> nn.Module:
    """The architecture with random weights (for its description; nothing is downloaded)."""
    try:
        if source == "torchvision":
            import torchvision

            return torchvision.models.get_model(arch, weights=None).eval()
        import timm

        return timm.create_model(arch, pretrained=False).eval()
    except Exception as exc:
        raise FeaturebankError(f"{source}:{arch} could not be built: {exc}") from exc


def _torchvision_transform(arch: str) -> dict[str, Any]:
    import torchvision

    from featurebank.export._published import torchvision_transform

    try:
        default = torchvision.models.get_model_weights(arch).DEFAULT
    except Exception as exc:  # an architecture without published weights
        raise FeaturebankError(f"torchvision:{arch} has no weights enum to read its eval "
                               f"transform from ({exc})") from exc
    return torchvision_transform(default)


def _interpolation(name: str, arch: str) -> str:
    if name not in ("nearest", "bilinear", "bicubic", "lanczos"):
        raise FeaturebankError(f"{arch} evaluates with interpolation {name!r}, which featurebank "
                               f"does not reproduce")
    return name


def token_prefix(model: nn.Module) -> tuple[int | None, bool]:
    """(prefix tokens, whether the first is a class token) of a vision transformer; (None, True)
    for a CNN."""
    if _torchvision_vit(model):
        return 1, True
    if hasattr(model, "num_prefix_tokens") and hasattr(model, "blocks"):
        return int(model.num_prefix_tokens), bool(getattr(model, "has_class_token", True))
    return None, True


def _torchvision_vit(model: nn.Module) -> bool:
    return hasattr(model, "encoder") and hasattr(model, "class_token") and hasattr(model, "heads")


class ZooFeatures(nn.Module):
    """A timm/torchvision classifier whose ``features(x)`` gives every catalogue activation.

    ``cuts`` maps a catalogue name to the module whose output it is. ``on_cut`` (set by the
    FLOPs counter) is called with each name as its tensor is produced.
    """

    def __init__(self, model: nn.Module, source: str, size: tuple[int, int]):
        super().__init__()
        self.model, self.source = model, source
        self.vit = _torchvision_vit(model)
        self.timm_vit = source == "timm" and token_prefix(model)[0] is not None
        self.on_cut: Callable[[str], None] | None = None
        self.cuts = (_timm_cuts(model, size) if source == "timm"
                     else _torchvision_cuts(model, size))
        self._head_pool = _pool_module(model) if source == "torchvision" and not self.vit else None
        # a pool to a map wider than 1x1 (VGG's 7x7, AlexNet's 6x6) is no global pool: the
        # head is fully connected and ``pool`` is its classifier's input (naming rule 5)
        self._fc_input = _fully_connected_input(model, size) if self._head_pool is not None else None
        self.naming = 5 if self._fc_input is not None else 1
        self._split_head = source == "timm" and _classifier_follows_pre_logits(model, size)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        copies: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

        def keep(name: str, value: torch.Tensor) -> None:
            # a copy: an in-place op after the module (torchvision DenseNet's F.relu_ on
            # norm5's output) would otherwise change the kept value; one copy per tensor
            # and version, so two names of one map stay one graph tensor (stage.5 and head)
            key = (id(value), getattr(value, "_version", 0))
            if key not in copies:  # the original is held too: its id is not reused meanwhile
                copies[key] = (value, value.clone())
            out[name] = copies[key][1]
            if self.on_cut is not None:
                self.on_cut(name)

        hooks = [mod.register_forward_hook(lambda _m, _i, o, n=name: keep(n, o))
                 for name, mod in self.cuts.items()]
        if self._head_pool is not None:
            hooks.append(self._head_pool.register_forward_pre_hook(
                lambda _m, i: keep("head", i[0])))
            if self._fc_input is not None:
                hooks.append(self._fc_input.register_forward_pre_hook(
                    lambda _m, i: keep("pool", i[0])))
            else:
                hooks.append(self._head_pool.register_forward_hook(
                    lambda _m, _i, o: keep("pool", torch.flatten(o, 1))))
        try:
            logits = self._forward(x, keep)
        finally:
            for h in hooks:
                h.remove()
        keep("logits", logits)
        return out

    def _forward(self, x: torch.Tensor, keep: Callable) -> torch.Tensor:
        m = self.model
        if self.source == "timm":
            feats = m.forward_features(x)
            keep("head", feats)
            if not self._split_head:
                return m.forward_head(feats)
            pooled = m.forward_head(feats, pre_logits=True)
            keep("pool", pooled)
            return m.get_classifier()(pooled)
        if self.vit:  # torchvision.models.VisionTransformer.forward, with the cuts kept
            tokens = m._process_input(x)
            tokens = torch.cat([m.class_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
            tokens = m.encoder(tokens)
            keep("head", tokens)
            keep("pool", tokens[:, 0])
            return m.heads(tokens[:, 0])
        return m(x)

    def layout_of(self, value: torch.Tensor) -> str | None:
        """``NHWC`` for a 4-D activation of a timm model that keeps channels last (Swin's
        ``output_fmt``), else None (channel-first, as every other export)."""
        fmt = str(getattr(self.model, "output_fmt", "NCHW"))
        return "NHWC" if value.dim() == 4 and self.source == "timm" and fmt.endswith("NHWC") else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _timm_cuts(model: nn.Module, size: tuple[int, int]) -> dict[str, nn.Module]:
    """``stage.K`` per ``feature_info`` entry (``blocks.K`` for a ViT: timm lists its blocks)."""
    modules = dict(model.named_modules())
    info = getattr(model, "feature_info", None) or []
    if info and not isinstance(info, list):  # FeatureInfo object on features_only models
        info = list(info.info)
    cuts = {}
    vit = token_prefix(model)[0] is not None
    for k, entry in enumerate(info, 1):
        if entry.get("hook_type", "forward") != "forward" or entry["module"] not in modules:
            continue  # pre-hook stages (expansion features) are not cut points here
        name = entry["module"] if vit else f"stage.{k}"
        cuts[name] = modules[entry["module"]]
    return _called_once(model, cuts, size)


def _classifier_follows_pre_logits(model: nn.Module, size: tuple[int, int]) -> bool:
    """Whether ``get_classifier()(forward_head(f, pre_logits=True))`` is timm's logits (then the
    graph computes the pooled vector once and names it ``pool``)."""
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        try:
            feats = model.forward_features(x)
            split = model.get_classifier()(model.forward_head(feats, pre_logits=True))
        except Exception:  # noqa: BLE001 - a head that cannot be split keeps timm's own
            return False
        return split.shape == model(x).shape and torch.allclose(split, model(x), atol=1e-5)


def _pool_module(model: nn.Module) -> nn.Module | None:
    pool = getattr(model, "avgpool", None)
    return pool if isinstance(pool, nn.Module) else None


def _fully_connected_input(model: nn.Module, size: tuple[int, int]) -> nn.Module | None:
    """The last Linear of a torchvision classifier whose ``avgpool`` leaves a map wider than
    1x1 (VGG, AlexNet: fully connected layers read the flattened map), else None. Its input is
    fc7 after its activation (the eval-mode Dropout before it copies)."""
    pool = _pool_module(model)
    head = getattr(model, "classifier", None)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)] \
        if isinstance(head, nn.Module) else []
    if pool is None or len(linears) < 2:
        return None
    shape = _output_shapes(model, [pool], size).get(pool, ())
    return linears[-1] if len(shape) == 4 and tuple(shape[-2:]) != (1, 1) else None


def _torchvision_cuts(model: nn.Module, size: tuple[int, int]) -> dict[str, nn.Module]:
    """``stage.K``: the last trunk module at each spatial resolution; ``blocks.K`` of a ViT."""
    if _torchvision_vit(model):
        return {f"blocks.{k}": layer for k, layer in enumerate(model.encoder.layers)}
    trunk = []
    for name, child in model.named_children():
        if child is _pool_module(model) or name in ("classifier", "fc", "heads"):
            break
        trunk.append((name, child))
    shapes = _output_shapes(model, [m for _, m in trunk] +
                            [c for _, m in trunk for c in m.children()], size)
    flat = []
    for name, mod in trunk:  # open a Sequential whose children change the resolution
        inner = [(f"{name}.{n}", c) for n, c in mod.named_children()]
        if isinstance(mod, nn.Sequential) and len({shapes.get(c, (0,))[-2:] for _, c in inner}) > 1:
            flat.extend(inner)
        else:
            flat.append((name, mod))
    last: dict[tuple, nn.Module] = {}
    for _, mod in flat:
        shape = shapes.get(mod)
        if shape is not None and len(shape) == 4 and min(shape[-2:]) > 1:
            last.pop(shape[-2:], None)  # re-inserted: dict order follows the last module
            last[shape[-2:]] = mod
    return _called_once(model, {f"stage.{k}": m for k, m in enumerate(last.values(), 1)}, size)


def _run_with_hooks(model: nn.Module, mods, hook, size: tuple[int, int]) -> None:
    """One forward pass on a blank image with ``hook(module, output)`` on each of ``mods``."""
    handles = [m.register_forward_hook(lambda mod, _i, o: hook(mod, o)) for m in mods]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, *size))
    finally:
        for h in handles:
            h.remove()


def _output_shapes(model: nn.Module, mods: list[nn.Module], size) -> dict[nn.Module, tuple]:
    shapes: dict[nn.Module, tuple] = {}
    _run_with_hooks(model, mods, lambda mod, o: shapes.__setitem__(mod, tuple(o.shape))
                    if torch.is_tensor(o) else None, size)
    return shapes


def _called_once(model: nn.Module, cuts: dict[str, nn.Module], size: tuple[int, int]) -> dict:
    """Drops cut modules called more than once per forward (a shared activation module): their
    hook would see the last call, not the stage output."""
    calls: dict[int, int] = {}
    _run_with_hooks(model, cuts.values(),
                    lambda mod, _o: calls.__setitem__(id(mod), calls.get(id(mod), 0) + 1), size)
    return {n: m for n, m in cuts.items() if calls.get(id(m)) == 1}
