"""Questions about paths that every stage and command asks the same way (ground floor).

- :func:`check_writable`: can this output file be written? Asked before any work, so a long
  export, embedding or training never ends in "cannot write".
- :func:`check_folder`: the same for an output folder (a report, a work folder), made if
  absent.
- :func:`is_onnx_path`: does this name an ONNX file (rather than a registry name or a
  ``.joblib`` classifier)?
- :func:`write_json`: a report's JSON, written whole or not at all (every report writes it
  this way: metrics, sweeps, audits, comparisons, fine-tuning, the demo).

Whether a store is sharded needs h5py and so lives with the store
(:func:`featurebank.extractor.store.is_sharded`). This module imports only the standard library.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from featurebank.errors import FeaturebankError

__all__ = ["check_folder", "check_writable", "is_onnx_path", "write_json"]

#: The first byte of a serialised ONNX ``ModelProto``: its field 1 (``ir_version``, a varint),
#: which every ONNX writer puts first. A joblib file starts with a zlib (0x78) or pickle (0x80)
#: header instead.
_ONNX_FIRST_BYTE = b"\x08"


def check_writable(path: str | Path, *, what: str = "output", suffix: str | None = None) -> Path:
    """Refuse, before any work, an output file that cannot be written; return it as a Path.

    The folder must exist and take a new file (a real probe file: permission bits say
    nothing for root or on a read-only file system); the path must not be a folder.

    Parameters
    ----------
    path : str or Path
        The file to be written (it may exist: it will be replaced).
    what : str
        How messages name it (``'output'``, ``'report'``, ...).
    suffix : str, optional
        The extension the file should have (``'.onnx'``): named in the message when ``path``
        is a folder.

    Raises
    ------
    FeaturebankError
        Naming the path and why it cannot be written.
    """
    out = Path(path)
    if out.is_dir():
        name = f"a file name ending in {suffix}" if suffix else "a file name"
        raise FeaturebankError(f"{what} path {out} is a folder; give {name}")
    folder = out.parent
    if not folder.is_dir():
        why = "is not a folder" if folder.exists() else "does not exist"
        raise FeaturebankError(f"cannot write {what} {out}: folder {folder} {why}; create it "
                               "first or choose another path")
    if out.exists() and not os.access(out, os.W_OK):
        raise FeaturebankError(f"cannot write {what} {out}: the file is read-only")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{out.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise FeaturebankError(f"cannot write {what} {out}: {exc.strerror or exc}") from exc
    return out


def check_folder(path: str | Path, *, what: str = "report") -> Path:
    """Refuse, before any work, an output folder that cannot be made or written into; return
    it as a Path (not made yet: the caller makes it when it writes).

    The folder may exist (its files are replaced); if not, its parent must, as for
    :func:`check_writable`'s files. Either must take a new file (a real probe file).

    Raises
    ------
    FeaturebankError
        Naming the folder and why it cannot be written.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise FeaturebankError(f"cannot write {what} {out}: it exists and is not a folder")
    where = out if out.is_dir() else out.parent
    if not where.is_dir():
        raise FeaturebankError(f"cannot write {what} {out}: folder {where} does not exist; "
                               "create it first or choose another path")
    try:
        with tempfile.NamedTemporaryFile(dir=where, prefix=".featurebank-", suffix=".probe"):
            pass
    except OSError as exc:
        raise FeaturebankError(f"cannot write {what} {out}: {exc.strerror or exc}") from exc
    return out


def is_onnx_path(path: str | Path) -> bool:
    """Whether ``path`` names an ONNX file: its name ends in ``.onnx`` (any case), or it is an
    existing file whose bytes begin as an ONNX model's do.

    A registry name (``efficientnet_lite0``) is no file, and a classifier saved by
    ``featurebank train`` (joblib) begins otherwise, so this tells a network file from both.
    """
    name = str(path)
    if name.lower().endswith(".onnx"):
        return True
    try:
        with open(name, "rb") as f:
            return f.read(1) == _ONNX_FIRST_BYTE
    except OSError:  # not a file (a registry name, a folder, a URL)
        return False


def write_json(data: object, path: str | Path) -> Path:
    """Write ``data`` as indented JSON to ``path`` through a temporary file and a rename, so a
    reader (or a run killed mid-write) never sees half a report. A numpy scalar is written as
    its number; other values JSON does not know (paths) as their ``str``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_plain))
    os.replace(tmp, path)
    return path


def _plain(value: object) -> object:
    item = getattr(value, "item", None)  # numpy scalars (no numpy import on the ground floor)
    return item() if callable(item) and getattr(value, "shape", None) == () else str(value)
