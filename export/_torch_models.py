"""Build the torch module behind a registry name, with weights loaded and checked.

Every model returned has ``features(x) -> dict[catalogue name, tensor]`` so that the exporter
can name the cut points and tests can compare truncated ONNX graphs with torch activations.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from featurebank.errors import FeaturebankError
from featurebank.export._efficientnet_lite import EfficientNetLite, translate_state_dict
from featurebank.export._registry import get_model_entry
from featurebank.spec import sha256_file


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a .pth/.pt file (plain, or wrapped as {'state_dict': ...})."""
    path = Path(path)
    if not path.is_file():
        raise FeaturebankError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FeaturebankError(f"weights file {path} is not a torch state dict: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FeaturebankError(f"weights file {path} does not hold a state dict of tensors")
    return state


def load_checked(module: nn.Module, state: dict[str, torch.Tensor], origin: str,
                 aliases: dict[str, str] | None = None) -> None:
    """Load ``state`` strictly, naming the first parameter whose shape or name is wrong.

    ``aliases`` maps a key of ``state`` to the name the file uses for it, so the message names
    the parameter as the user's checkpoint spells it.
    """
    own = module.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            given = (aliases or {}).get(key, key)
            name = repr(given) if given == key else f"{given!r} ({key} here)"
            raise FeaturebankError(
                f"weights {origin}: parameter {name} has shape {tuple(value.shape)}, the "
                f"architecture needs {tuple(own[key].shape)}; are these weights for another model?"
            )
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing parameter(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        raise FeaturebankError(f"weights {origin} do not fit the architecture: {'; '.join(parts)}")
    module.load_state_dict(state, strict=True)


def build_torch_model(
    name: str, weights: str | Path | None = None, input_size: int | None = None
) -> nn.Module:
    """The eval-mode torch module for ``name``, weights loaded and checked.

    Parameters
    ----------
    name : str
        Registry name (``efficientnet_lite0``, ``torchvision:resnet50``, ...).
    weights : path, optional
        A state dict of the same architecture (e.g. fine-tuned); default: bundled ImageNet weights.
    input_size : int, optional
        Square input side; default: the model's pretrained size.

    Returns
    -------
    torch.nn.Module
        In eval mode, with ``features(x) -> dict[catalogue name, tensor]`` and
        ``weights_sha256`` (SHA-256 of the state-dict file used, or of the library's tensors).
    """
    entry = get_model_entry(name)
    if entry.source == "featurebank":
        path = str(weights) if weights else entry.default_weights()
        module = EfficientNetLite(name, input_size=input_size)
        raw = load_state_dict_file(path)
        state = translate_state_dict(raw)
        load_checked(module, state, path, aliases=dict(zip(state, raw, strict=False)))
        digest = sha256_file(path)
    else:
        module, digest = _build_optional(entry.source, name.partition(":")[2], weights)
    module.weights_sha256 = digest
    return module.eval()


def _build_optional(source: str, arch: str, weights: str | Path | None) -> tuple[nn.Module, str]:
    if source == "torchvision":
        import torchvision

        module = torchvision.models.get_model(arch, weights=None if weights else "DEFAULT")
    else:
        import timm

        module = timm.create_model(arch, pretrained=not weights)
    digest = "library-default"
    if weights:
        load_checked(module, load_state_dict_file(weights), str(weights))
        digest = sha256_file(str(weights))
    else:  # digest of the tensors themselves: the library's download has no stable path
        import hashlib

        h = hashlib.sha256()
        for key, value in sorted(module.state_dict().items()):
            h.update(key.encode())
            h.update(value.detach().cpu().numpy().tobytes())
        digest = h.hexdigest()
    return ChildrenFeatures(module), digest


class ChildrenFeatures(nn.Module):
    """Catalogue for third-party classifiers: the outputs of their top-level children."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        hooks = [
            child.register_forward_hook(lambda _m, _i, o, n=name: out.__setitem__(n, o))
            for name, child in self.model.named_children()
        ]
        try:
            logits = self.model(x)
        finally:
            for h in hooks:
                h.remove()
        feats = {k: v for k, v in out.items() if isinstance(v, torch.Tensor) and v.dim() == 4}
        feats["logits"] = logits
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
