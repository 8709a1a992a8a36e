"""``featurebank store upgrade``: an older store rewritten in place at the current version (3).

Version 1 stored paths as given to ``embed`` -- relative to the folder it ran in -- so reading
them from anywhere else found no image or, worse, another one. Version 2 stores them absolute.
Only the user knows which folder version-1 paths were relative to, so the upgrade asks for it.

Version 3 lets a path also be a URL, a tar shard member or a parquet row
(:mod:`featurebank.extractor.sources`). A version-2 path is a valid version-3 path, so 2 -> 3
changes only the version number (a writer does it when it first opens a version-2 store); it
exists so that an older featurebank refuses a store whose paths it could not read.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from featurebank.errors import FeaturebankError
from featurebank.extractor.store._format import (
    BYTES_DTYPE,
    FORMAT_VERSION,
    TABLES,
    committed_rows,
    decode_path,
    encode_path,
    is_sharded,
    write_roots,
)
from featurebank.extractor.store._lock import WriterLock
from featurebank.extractor.store._repair import dirty_marker


def upgrade_store(path: str | Path, root: str | Path | None = None, force: bool = False) -> dict:
    """Rewrite an older store at the current version: version-1 relative paths become absolute
    against ``root``; a version-2 store only has its version raised.

    Parameters
    ----------
    path : path
        The store.
    root : path, optional
        The folder ``featurebank embed`` ran in when a version-1 store was written (required
        for version 1 only).
    force : bool
        Upgrade even when no image exists under ``root`` (images deleted since).

    Returns
    -------
    dict
        ``{"from_version", "to_version", "paths", "made_absolute", "found"}``: how many stored
        paths there are, how many were relative, and how many name an existing file now.
    """
    path = Path(path)
    if not path.is_file():
        raise FeaturebankError(f"store {path} does not exist")
    lock = WriterLock(path).acquire()
    try:
        with h5py.File(path, "r", locking=False) as f:
            version = int(f.attrs.get("format_version", -1))
            sharded = is_sharded(f)
        unchanged = {"from_version": version, "to_version": FORMAT_VERSION, "paths": 0,
                     "made_absolute": 0, "found": 0}
        if version == FORMAT_VERSION:
            return unchanged
        if version not in (1, 2):
            raise FeaturebankError(f"store {path} has format version {version}; this featurebank "
                                   f"upgrades versions 1 and 2 to {FORMAT_VERSION} only")
        if sharded:
            raise FeaturebankError(f"store {path} is a version-{version} sharded store; embed its "
                                   "images again into a new store")
        if version == 2:
            raise_version(path)
            return unchanged
        if root is None or not Path(root).is_dir():
            raise FeaturebankError(f"store {path} has format version 1 (relative paths): give "
                                   "the folder 'featurebank embed' ran in as --root"
                                   + (f" ({root} is not a folder)" if root is not None else ""))
        root = Path(root).resolve()
        rewritten, counts = _absolute_paths(path, root)
        if counts["paths"] and not counts["found"] and not force:
            raise FeaturebankError(
                f"store {path}: none of its {counts['paths']} image paths exists under {root}; "
                "give the folder 'featurebank embed' ran in as --root (or --force to upgrade "
                "anyway, for images that are gone)")
        # the same marker as a commit: a kill inside this write gets the file rewritten first
        dirty = dirty_marker(path)
        dirty.touch()
        with h5py.File(path, "a", locking=False) as f:
            for group, new in rewritten.items():
                f[group]["paths"][:len(new)] = np.array([encode_path(p) for p in new],
                                                        dtype=BYTES_DTYPE)
            for group in TABLES:
                g = f.require_group(group)
                if group != "features":
                    g.attrs.setdefault("committed", 0)
            for g in f["features"].values():
                g.attrs.setdefault("row_shape", np.array([int(g.attrs["dim"])], np.int64))
            write_roots(f, [str(root)])
            f.attrs["format_version"] = FORMAT_VERSION  # last: a kill before it leaves version 1
        dirty.unlink()
    finally:
        lock.release()
    return counts


def raise_version(path: Path) -> None:
    """Version 2 -> 3 in place (the caller holds the writer lock): the paths stay as they are."""
    dirty = dirty_marker(path)
    dirty.touch()
    with h5py.File(path, "a", locking=False) as f:
        f.attrs["format_version"] = FORMAT_VERSION
    dirty.unlink()


def _absolute_paths(path: Path, root: Path) -> tuple[dict[str, list[str]], dict]:
    counts = {"from_version": 1, "to_version": FORMAT_VERSION, "paths": 0, "made_absolute": 0,
              "found": 0}
    rewritten = {}
    with h5py.File(path, "r", locking=False) as f:
        for group in ("images", "paths", "failures"):
            g = f[group]
            n = committed_rows(g)
            if not n or "paths" not in g:
                continue
            old = [decode_path(p) for p in g["paths"][:n]]
            new = [p if os.path.isabs(p) else os.path.normpath(os.path.join(root, p)) for p in old]
            rewritten[group] = new
            if group == "images":
                counts["paths"] = n
                counts["found"] = sum(os.path.exists(p) for p in new)
                counts["made_absolute"] = sum(a != b for a, b in zip(old, new, strict=True))
    return rewritten, counts
