"""The room check before a commit: refuse a batch that may not fit, before the file is touched.

HDF5 cannot roll back a write that fails half-way (a full disk mid-commit can leave metadata
pointing past the end of the file), so the room a commit may need is checked first.
"""

from __future__ import annotations

import resource
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from featurebank.errors import FeaturebankError

__all__ = ["check_room"]


def check_room(path: Path, rows: Mapping[Any, tuple[Sequence[str], ArrayLike]] | None,
               images: Sequence[tuple[str, str, str]] | None,
               failures: Sequence[tuple[str, str]] | None) -> None:
    """Raise :class:`FeaturebankError` when the disk (or the per-file size cap) may not hold
    the batch: its bytes plus whole new chunks (<= 1 MiB each) and metadata, with a generous
    margin."""
    payload = sum(np.asarray(X).size * 4 + 80 * len(k) for k, X in (rows or {}).values())
    payload += sum(len(str(p)) + len(str(lab)) + 96 for _, p, lab in images or ())
    payload += sum(len(str(p)) + len(str(r)) + 32 for p, r in failures or ())
    need = 2 * payload + (1 << 20) * (2 + 2 * len(rows or {})) + (4 << 20)
    free = shutil.disk_usage(path.parent).free
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]  # a per-file size cap acts like a full disk
    size = path.stat().st_size if path.exists() else 0
    if limit != resource.RLIM_INFINITY:
        free = min(free, limit - size)
    if free < need:
        raise FeaturebankError(
            f"not enough room to write store {path}: {free / 1e6:.1f} MB free, a batch "
            f"needs up to {need / 1e6:.1f} MB; rows committed before are intact — free disk "
            "space and run again to continue")
