"""Loading a state dict file and checking it against an architecture (no registry import, so
both the registry models and the timm/torchvision sources use it)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from featurebank.errors import FeaturebankError


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
