"""Crash repair: rewrite a store from its committed rows after a writer died inside a commit.

HDF5 cannot roll back: a kill (or a full disk) mid-commit can leave file-space metadata that
still reads fine but breaks the next append. A ``STORE.h5.dirty`` marker, present only while a
commit has the file open, tells the next writer to call :func:`repair` first.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import h5py

from featurebank.errors import FeaturebankError
from featurebank.extractor.store._format import committed_rows

log = logging.getLogger(__name__)
__all__ = ["dirty_marker", "repair"]


def dirty_marker(path: Path) -> Path:
    """``STORE.h5.dirty``: present while a commit (or an upgrade) has the file open."""
    return path.with_name(path.name + ".dirty")


def repair(path: Path) -> None:
    """Copy the committed rows into a fresh file that atomically replaces ``path``."""
    log.warning("store %s: the last writer stopped inside a commit; rewriting it from its "
                "committed rows", path)
    tmp = path.with_name(f".{path.name}.repair.tmp")
    try:
        with h5py.File(path, "r", locking=False) as src, \
                h5py.File(tmp, "w", locking=False) as dst:
            dst.attrs.update(src.attrs)
            for name in src:
                _copy_committed_rows(src[name], dst.create_group(name))
        os.replace(tmp, path)
    except (OSError, RuntimeError, KeyError) as exc:
        tmp.unlink(missing_ok=True)
        raise FeaturebankError(
            f"store {path} was damaged by a crash inside a commit and cannot be rewritten "
            f"({exc}); free disk space, or read it with FeatureStore(..., mode='r') and "
            "embed into a new store") from exc


def _copy_committed_rows(src: h5py.Group, dst: h5py.Group) -> None:
    """Copy a group's attrs and the committed rows of its datasets (recursively)."""
    dst.attrs.update(src.attrs)
    n = committed_rows(src)
    for name, obj in src.items():
        if isinstance(obj, h5py.Group):
            _copy_committed_rows(obj, dst.create_group(name))
        else:
            dst.create_dataset(name, data=obj[:n], dtype=obj.dtype, chunks=obj.chunks,
                               maxshape=(None, *obj.shape[1:]))
