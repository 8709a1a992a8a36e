"""The network split at the cut: the frozen trunk below, the trainable top above (torch).

``TopNet`` is what trains, fed the cached maps: the modules after the cut, the model's own head
up to its pooled vector, and a new linear classifier. The split is taken from the module tree
of any source with torch code:

- EfficientNet-Lite (the registry): ``blocks.K`` cuts; the blocks after K, the head conv/BN;
- timm and torchvision CNNs: ``stage.K`` cuts (the catalogue's stage modules); the modules that
  run after the stage module in the trunk (found by recording the call order of the module tree
  opened along the path to the cut), then the library's own head up to the classifier input
  (timm ``forward_head(pre_logits=True)``; torchvision ``avgpool`` and the classifier's layers
  before its last ``Linear``);
- vision transformers (timm, torchvision): ``blocks.K`` cuts; the blocks after K, the final norm,
  the class-token (or the model's own) pooling.

A split is accepted only if it reproduces the library's logits on a random image within 1e-5
(trunk chain and head checked separately); otherwise the cut is refused, never approximated.
``assemble`` puts the untouched trunk, the tuned top and the new classifier back into one
model for export. An ONNX file has no torch code: it is refused with what works instead.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from featurebank.errors import FeaturebankError, OptionError

_TOL = 1e-5


def block_index(layer: str) -> int:
    return int(layer.split(".", 1)[1])


@dataclass
class Split:
    """The top of a model above a cut: trunk modules after it, head modules, pooling."""

    after: list[tuple[str, nn.Module]]
    head: list[tuple[str, nn.Module]]
    pool: Callable[[torch.Tensor], torch.Tensor]  # trunk output -> classifier input [N, D]
    width: int
    classifier_path: str = ""
    extra: dict = field(default_factory=dict)


class TopNet(nn.Module):
    """The modules after the cut + the model's head + dropout + a new ``Linear(D, classes)``.

    BatchNorm keeps the pretrained running statistics (its affine weights still train): a few
    thousand images in batches of 64 estimate them worse than ImageNet did, and a frozen BN
    makes the training forward pass the exported one, bar dropout.
    """

    def __init__(self, base: nn.Module, layer: str, n_classes: int, dropout: float = 0.2):
        super().__init__()
        split = split_model(base, layer)
        self.cut = layer
        # the input size an EfficientNet-Lite top was built for (its maps were computed at it)
        self.input_size = base.input_size if hasattr(base, "stem") else None
        self.paths = ([p for p, _ in split.after], [p for p, _ in split.head])
        self.blocks = nn.ModuleList([m for _, m in split.after])
        lite = len(split.head) == 1 and split.head[0][0] == "head"
        # EfficientNet-Lite keeps its state keys ('head.*'): older checkpoints still load
        self.head = split.head[0][1] if lite else nn.ModuleList([m for _, m in split.head])
        self._pool = split.pool  # a function of the base model's modules (those above)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(split.width, n_classes)

    def pooled(self, maps: torch.Tensor) -> torch.Tensor:
        x = maps
        for block in self.blocks:
            x = block(x)
        return self._pool(x)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pooled(maps)))

    def train(self, mode: bool = True) -> TopNet:
        super().train(mode)
        for m in self.modules():  # frozen statistics, see the class docstring
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def top_parameters(self) -> list[nn.Parameter]:
        return [*self.blocks.parameters(), *self.head.parameters()]


def split_model(base: nn.Module, layer: str) -> Split:
    """Where ``layer`` cuts ``base`` (a ``build_torch_model`` module), or a refusal."""
    if hasattr(base, "stem") and hasattr(base, "blocks"):  # EfficientNetLite
        names = [f"blocks.{i}" for i in range(len(base.blocks))]
        _check_layer(layer, names, "the registry's EfficientNet-Lite")
        k = block_index(layer)
        return Split([(f"blocks.{i}", b) for i, b in enumerate(base.blocks) if i > k],
                     [("head", base.head)], lambda x: base.head(x).mean((2, 3)),
                     base.head.bn.num_features, "classifier")
    cuts = getattr(base, "cuts", None)
    if cuts is None:
        raise FeaturebankError("finetune needs a model built from torch code (registry, timm:NAME, "
                               "torchvision:NAME)")
    _check_layer(layer, list(cuts), f"{base.source} model")
    return _zoo_split(base, layer)


def _check_layer(layer: str, names: list[str], what: str) -> None:
    if layer not in names:
        raise OptionError("from_layer", f"{layer!r}: the {what} is cut at one of "
                          f"{', '.join(names)} (the layers above it are trained)", owner="finetune")


def finetune_cuts(base: nn.Module) -> list[str]:
    """The layers ``base`` can be fine-tuned from."""
    if hasattr(base, "stem") and hasattr(base, "blocks"):
        return [f"blocks.{i}" for i in range(len(base.blocks))]
    return list(getattr(base, "cuts", {}))


def _zoo_split(base: nn.Module, layer: str) -> Split:
    model, size = base.model, base.preprocessing.input_size
    cut = base.cuts[layer]
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    modules = dict(model.named_modules())
    path = next(p for p, m in modules.items() if m is cut)
    if base.vit:  # torchvision ViT: encoder.layers[K+1:], encoder.ln, the class token
        enc = model.encoder
        k = block_index(layer)
        after = [(f"encoder.layers.{i}", b) for i, b in enumerate(enc.layers) if i > k]
        after.append(("encoder.ln", enc.ln))
        split = Split(after, [], lambda t: t[:, 0], enc.ln.normalized_shape[0], "heads.head")
    else:
        trunk_end, pool, head = _head(base)
        heads = {id(m) for _, m in head} | {id(model.get_submodule(_classifier_path(base)))}
        candidates = [(p, m) for p, m in _opened(model, path)
                      if id(m) not in heads and p not in ("classifier", "fc")]
        order = _call_order(candidates, x, trunk_end)
        after = order[order.index((path, cut)) + 1:]
        with torch.no_grad():
            pooled = pool(trunk_end(x))
        split = Split(after, head, pool, int(pooled.shape[1]), _classifier_path(base))
    _verify(base, split, cut, x, layer)
    return split


def _head(base) -> tuple[Callable, Callable, list[tuple[str, nn.Module]]]:
    """(input -> trunk output, trunk output -> classifier input, the head's own modules)."""
    model = base.model
    children = dict(model.named_children())
    if base.source == "timm":
        classifier = model.get_classifier()
        with torch.no_grad():
            feats = model.forward_features(torch.zeros(1, 3, *base.preprocessing.input_size))
        used = _called(lambda: model.forward_head(feats, pre_logits=True), children)
        head = [(n, m) for n, m in children.items() if m in used and m is not classifier]
        return model.forward_features, lambda t: model.forward_head(t, pre_logits=True), head
    pool_mod = model.avgpool
    layers = list(model.classifier)[:-1] if isinstance(getattr(model, "classifier", None),
                                                        nn.Sequential) else []

    def trunk(t):
        seen = {}
        hook = pool_mod.register_forward_pre_hook(lambda _m, i: seen.__setitem__("x", i[0]))
        try:
            model(t)
        finally:
            hook.remove()
        return seen["x"]

    def pool(t):
        t = pool_mod(t)
        for m in layers:
            t = torch.flatten(t, 1) if isinstance(m, nn.Linear) and t.dim() > 2 else t
            t = m(t)
        return torch.flatten(t, 1)

    head = [("avgpool", pool_mod), *[(f"classifier.{i}", m) for i, m in enumerate(layers)]]
    return trunk, pool, head


def _classifier_path(base) -> str:
    model = base.model
    if base.source == "timm":
        clf = model.get_classifier()
        return next(p for p, m in model.named_modules() if m is clf)
    if isinstance(getattr(model, "classifier", None), nn.Sequential):
        return f"classifier.{len(model.classifier) - 1}"
    return "fc"


def _opened(model: nn.Module, path: str) -> list[tuple[str, nn.Module]]:
    """The top-level children, with every ancestor of ``path`` replaced by its children."""
    out = []
    for name, child in model.named_children():
        if path == name or not path.startswith(name + "."):
            out.append((name, child))
        else:
            out += [(f"{name}.{n}", m) for n, m in _opened(child, path[len(name) + 1:])]
    return out


def _call_order(candidates, x, trunk_end) -> list[tuple[str, nn.Module]]:
    order: list[tuple[str, nn.Module]] = []
    hooks = [m.register_forward_hook(lambda *_a, e=(p, m): order.append(e) if e not in order else None)
             for p, m in candidates]
    try:
        with torch.no_grad():
            trunk_end(x)
    finally:
        for h in hooks:
            h.remove()
    return order


def _called(run, children: dict[str, nn.Module]) -> set:
    used = set()
    hooks = [m.register_forward_hook(lambda mod, *_: used.add(mod)) for m in children.values()]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return used


def _verify(base, split: Split, cut: nn.Module, x: torch.Tensor, layer: str) -> None:
    """The split must give the library's own logits from the cut's output."""
    seen = {}
    hook = cut.register_forward_hook(lambda _m, _i, o: seen.__setitem__("cut", o))
    try:
        with torch.no_grad():
            want = base.features(x)["logits"]
    finally:
        hook.remove()
    with torch.no_grad():
        t = seen["cut"]
        for _, m in split.after:
            t = m(t)
        got = base.model.get_submodule(split.classifier_path)(split.pool(t))
    if got.shape != want.shape or not torch.allclose(got, want, atol=_TOL, rtol=0):
        raise OptionError(
            "from_layer", f"{layer!r}: the modules after this cut of {base.source} model do "
            f"not reproduce its forward pass as a chain (it calls them in another way), so it "
            f"cannot be fine-tuned from here; try a later stage or the registry's models",
            owner="finetune")


def build_top(model: str, layer: str, n_classes: int, dropout: float,
              weights: str | None = None, input_size: int | None = None) -> tuple[TopNet, str]:
    """A fresh :class:`TopNet` on the pretrained (or ``weights``) base, built for
    ``input_size`` (default: the model's own), and the base's SHA-256."""
    base = _base(model, weights, input_size)
    return TopNet(base, layer, n_classes, dropout), base.weights_sha256


#: the last base built in this process, untouched: ``(key, module)``
_PRISTINE: list[tuple[tuple, nn.Module]] = []


def _base(model: str, weights: str | None, input_size: int | None = None):
    """A fresh copy of the base model: a run builds one top per training (the main one and
    every cross-fitting fold) and one for export, and each trains or holds its own modules.
    Building a zoo model (create, load, hash the weights, probe its catalogue) takes seconds
    (10 s for a torchvision ResNet-50); a deep copy of the one built first takes under one.
    The weights file is keyed by path, size and modification time. Building draws no random
    numbers from torch's global generator (a library model is initialised randomly before
    its weights load), so a run seeds alike whether its base was built or copied."""
    from featurebank.export import build_torch_model
    from featurebank.finetune._data import refuse_onnx

    refuse_onnx(model)
    stat = Path(weights).stat() if weights is not None and Path(weights).is_file() else None
    key = (model, weights, stat and (stat.st_size, stat.st_mtime_ns), input_size)
    if not _PRISTINE or _PRISTINE[0][0] != key:
        with torch.random.fork_rng(devices=[]):
            _PRISTINE[:] = [(key, build_torch_model(model, weights, input_size=input_size))]
    return copy.deepcopy(_PRISTINE[0][1])


def assemble(model: str, top: TopNet, weights: str | None = None) -> nn.Module:
    """The whole classifier: pretrained trunk up to the cut, ``top``'s tuned layers, its new
    classifier; eval mode, ``features(x)`` like any registry model."""
    base = _base(model, weights, top.input_size)
    n = top.classifier.out_features
    if hasattr(base, "stem"):  # EfficientNetLite: a fresh module with n classes
        full = type(base)(base.variant, input_size=base.input_size, num_classes=n)
        state = {k: v for k, v in base.state_dict().items() if not k.startswith("classifier.")}
        full.load_state_dict(state, strict=False)  # the classifier is the tuned one, below
        target, clf = full, "classifier"
    else:  # the library's model, its classifier replaced by an n-class one
        full, target = base, base.model
        split = split_model(base, top.cut)
        clf = split.classifier_path
        parent, _, leaf = clf.rpartition(".")
        setattr(target.get_submodule(parent), leaf, nn.Linear(split.width, n))
    heads = top.head if isinstance(top.head, nn.ModuleList) else [top.head]
    tuned = [*zip(top.paths[0], top.blocks, strict=True), *zip(top.paths[1], heads, strict=True),
             (clf, top.classifier)]
    for path, module in tuned:
        target.get_submodule(path).load_state_dict(module.state_dict(), strict=True)
    full.weights_sha256 = state_sha256(full.state_dict())
    return full.eval()


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names and float32 bytes of a state dict, in name order."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(np.ascontiguousarray(state[key].detach().cpu().numpy()).tobytes())
    return h.hexdigest()
