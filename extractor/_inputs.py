"""What to embed: folders (ImageFolder labels), list files and globs -> (path, label) items."""

from __future__ import annotations

import csv
import glob
import os
from dataclasses import dataclass
from pathlib import Path

from featurebank.errors import FeaturebankError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
LIST_EXTENSIONS = {".txt", ".csv", ".lst"}


@dataclass(frozen=True)
class ImageItem:
    path: str
    label: str = ""


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def collect(inputs: list[str] | tuple[str, ...]) -> list[ImageItem]:
    """Expand inputs into image items, in a deterministic order.

    - a folder: every image below it (symlinked folders not followed, so loops can't hang);
      the label is the first sub-folder under the folder (ImageFolder convention), '' for files
      directly in it;
    - a list file (``.txt``/``.csv``/``.lst``): ``path[,label]`` per line, relative paths
      resolved against the list file's folder;
    - a glob pattern (``photos/**/*.jpg``);
    - an image file.
    """
    items: list[ImageItem] = []
    for raw in inputs:
        text = str(raw)
        path = Path(text)
        if path.is_dir():
            items.extend(_walk(path))
        elif path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
            items.extend(_read_list(path))
        elif path.is_file() or (path.is_symlink() and is_image_name(text)):
            items.append(ImageItem(text, ""))
        elif any(ch in text for ch in "*?["):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise FeaturebankError(f"input pattern {text!r} matches no file")
            items.extend(ImageItem(m, "") for m in matches if is_image_name(m))
        else:
            raise FeaturebankError(f"input {text!r} does not exist (give folders, image files, "
                                   "list files or glob patterns)")
    return items


def _walk(root: Path) -> list[ImageItem]:
    found = []
    for folder, dirs, files in os.walk(root, followlinks=False, onerror=None):
        dirs.sort()
        rel = Path(folder).relative_to(root)
        label = rel.parts[0] if rel.parts else ""
        for name in sorted(files):
            if is_image_name(name):
                found.append(ImageItem(os.path.join(folder, name), label))
        # a directory whose name looks like an image (x.jpg/) is passed as a file: it is
        # recorded as a failure ("is a directory") rather than silently skipped
        found.extend(ImageItem(os.path.join(folder, d), label) for d in dirs if is_image_name(d))
    return found


def _read_list(path: Path) -> list[ImageItem]:
    base = path.parent
    items = []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                continue
            p = Path(row[0].strip())
            p = p if p.is_absolute() else base / p
            items.append(ImageItem(str(p), row[1].strip() if len(row) > 1 else ""))
    return items
