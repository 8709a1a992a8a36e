"""What to embed: folders (ImageFolder labels), list files and globs -> (path, label) items.

Paths come back absolute (against the current folder), so a store written here is read
correctly from anywhere. An input holding no image at all is an error naming what it holds.
"""

from __future__ import annotations

import csv
import glob
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from featurebank.errors import FeaturebankError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
LIST_EXTENSIONS = {".txt", ".csv", ".lst"}
# Sub-folder names that are dataset splits rather than classes.
SPLIT_NAMES = {"train", "training", "test", "testing", "val", "valid", "validation", "dev",
               "eval", "holdout"}


@dataclass(frozen=True)
class ImageItem:
    path: str
    label: str = ""


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def collect(inputs: list[str] | tuple[str, ...], require_images: bool = True) -> list[ImageItem]:
    """Expand inputs into image items (absolute paths), in a deterministic order.

    - a folder: every image below it (symlinked folders not followed, so loops can't hang);
      the label is the first sub-folder under the folder (ImageFolder convention), '' for files
      directly in it;
    - a list file (``.txt``/``.csv``/``.lst``): ``path[,label]`` per line, relative paths
      resolved against the list file's folder;
    - a glob pattern (``photos/**/*.jpg``);
    - an image file.

    With ``require_images``, inputs holding no image at all raise :class:`FeaturebankError`
    naming what was found instead (nothing, or only non-image files).
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
            items.append(ImageItem(os.path.abspath(text), ""))
        elif any(ch in text for ch in "*?["):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise FeaturebankError(f"input pattern {text!r} matches no file")
            items.extend(ImageItem(os.path.abspath(m), "") for m in matches if is_image_name(m))
        else:
            raise FeaturebankError(f"input {text!r} does not exist (give folders, image files, "
                                   "list files or glob patterns)")
    if require_images and not items:
        found = "; ".join(describe_input(str(raw)) for raw in inputs) or "no input given"
        raise FeaturebankError(f"no image to embed: {found}. Images are files ending in "
                               f"{', '.join(sorted(IMAGE_EXTENSIONS))}")
    return items


def describe_input(text: str) -> str:
    """What an input holds, for the error about an input without images."""
    path = Path(text)
    if path.is_dir():
        counts = Counter(os.path.splitext(name)[1].lower() or "(no extension)"
                         for _, _, files in os.walk(path) for name in files)
        if not counts:
            return f"folder {text} holds no file at all"
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        kinds = ", ".join(f"{n} {ext}" for ext, n in top)
        return f"folder {text} holds {sum(counts.values())} file(s), none an image ({kinds})"
    if path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
        return f"list file {text} names no file"
    if any(ch in text for ch in "*?["):
        return f"pattern {text!r} matches only non-image files"
    return f"{text} is not an image"


def input_roots(inputs) -> list[str]:
    """The folders (absolute) a collection lives in: a folder itself, else the folder holding a
    list file, a file or the fixed part of a pattern."""
    roots: list[str] = []
    for raw in inputs:
        text = str(raw)
        if any(ch in text for ch in "*?[") and not Path(text).exists():
            parts = Path(text).parts
            fixed = next(i for i, p in enumerate(parts) if any(ch in p for ch in "*?["))
            text = str(Path(*parts[:fixed])) if fixed else "."
        path = Path(text)
        root = os.path.abspath(path if path.is_dir() else path.parent)
        if root not in roots:
            roots.append(root)
    return roots


def split_layout_warning(inputs, items: list[ImageItem]) -> str | None:
    """A warning when every label looks like a dataset split (train/test/...): the folder passed
    is one level too high, and its images would be labelled by split instead of by class."""
    labels = {i.label.lower() for i in items if i.label}
    if not labels or not labels <= SPLIT_NAMES:
        return None
    folders = [str(raw) for raw in inputs if Path(str(raw)).is_dir()]
    base = folders[0] if folders else "FOLDER"
    first = sorted({i.label for i in items if i.label})
    example = os.path.join(base, "train" if "train" in first else first[0])
    return (f"the labels ({', '.join(first)}) look like dataset splits, not classes: every image "
            f"would be labelled by its split. Pass the split folder instead, e.g. {example} "
            "(one store per split)")


def _walk(root: Path) -> list[ImageItem]:
    found = []
    base = os.path.abspath(root)
    for folder, dirs, files in os.walk(base, followlinks=False, onerror=None):
        dirs.sort()
        rel = Path(folder).relative_to(base)
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
            items.append(ImageItem(os.path.abspath(p), row[1].strip() if len(row) > 1 else ""))
    return items
