"""What to embed: folders (ImageFolder labels), list files, globs, tar shards, parquet files
and URLs -> (path, label) items.

Paths come back absolute (against the current folder) or as URLs, so a store written here is
read correctly from anywhere; items inside containers get the path forms of
:mod:`featurebank.extractor.sources`. An input holding no image at all is an error naming what
it holds.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from pathlib import Path

from featurebank.errors import FeaturebankError
from featurebank.extractor.sources import (
    CONTAINER_EXTENSIONS,
    DEFAULT_SOURCES,
    IMAGE_EXTENSIONS,
    LIST_EXTENSIONS,
    ImageItem,
    SourceOptions,
    collect_remote,
    container_kind,
    expand_file,
    is_image_name,
    is_list_name,
    is_remote,
    is_url,
    local_form,
    parent_of,
    parse_source,
    remote_info,
)

__all__ = ["IMAGE_EXTENSIONS", "ImageItem", "collect", "describe_input", "input_roots",
           "is_image_name", "split_layout_warning"]
# Sub-folder names that are dataset splits rather than classes.
SPLIT_NAMES = {"train", "training", "test", "testing", "val", "valid", "validation", "dev",
               "eval", "holdout"}


def collect(inputs: list[str] | tuple[str, ...], require_images: bool = True,
            sources: SourceOptions = DEFAULT_SOURCES) -> list[ImageItem]:
    """Expand inputs into image items (absolute paths or URLs), in a deterministic order.

    - a folder: every image below it (symlinked folders not followed, so loops can't hang);
      the label is the first sub-folder under the folder (ImageFolder convention), '' for files
      directly in it;
    - a list file (``.txt``/``.csv``/``.lst``/``.jsonl``, or ``.parquet`` with a ``path``
      column): relative paths resolved against the list file's folder;
    - a webdataset tar shard (``.tar``): its image members, labelled by ``KEY.cls``/``KEY.json``;
    - a parquet file with image bytes: one item per row;
    - a glob pattern (``photos/**/*.jpg``, ``shards/*.tar``);
    - an image file, or a stored path form (``shard.tar#KEY.jpg``, ``file.parquet#row=N``);
    - any of these as an fsspec URL (``s3://``, ``gs://``, ``az://``, ``https://``,
      ``file://``); a URL prefix is read like a folder.

    With ``require_images``, inputs holding no image at all raise :class:`FeaturebankError`
    naming what was found instead (nothing, or only non-image files). ``sources`` picks rows
    and columns of list and parquet files (:class:`featurebank.extractor.sources.SourceOptions`).
    """
    items: list[ImageItem] = []
    containers: set[str] = set()  # those of member inputs, checked once each
    for raw in inputs:
        text = str(raw)
        if is_url(text) and not is_remote(text):  # file://
            text = local_form(text)
        ref = parse_source(text)
        if ref.kind != "file":  # a stored member/row form, as fine-tuning gives them back
            container = local_form(ref.container)
            if container not in containers:
                _check_container(text, container)
                containers.add(container)
            items.append(ImageItem(container + text[len(ref.container):]))
            continue
        if is_remote(text):
            items.extend(collect_remote(text, sources))
            continue
        path = Path(text)
        if path.is_dir():
            _no_split(sources, text, "a folder")
            items.extend(_walk(path))
        elif path.is_file() and (container_kind(text) or is_list_name(text)):
            items.extend(expand_file(os.path.abspath(text), sources) or [])
        elif path.is_file() or (path.is_symlink() and is_image_name(text)):
            _no_split(sources, text, "an image file")
            items.append(ImageItem(os.path.abspath(text), ""))
        elif any(ch in text for ch in "*?["):
            items.extend(_glob(text, sources))
        else:
            raise FeaturebankError(f"input {text!r} does not exist (give folders, image files, "
                                   "list files, tar shards, parquet files, URLs or glob patterns)")
    if require_images and not items:
        found = "; ".join(describe_input(str(raw)) for raw in inputs) or "no input given"
        raise FeaturebankError(f"no image to embed: {found}. Images are files ending in "
                               f"{', '.join(sorted(IMAGE_EXTENSIONS))}")
    return items


def _check_container(text: str, container: str) -> None:
    if is_remote(container):
        remote_info(container)  # refuses a missing bucket or object, naming it
    elif not os.path.isfile(container):
        raise FeaturebankError(f"input {text!r}: container {container} does not exist")


def _no_split(sources: SourceOptions, text: str, what: str) -> None:
    if sources.split is not None:
        raise sources.not_tabular(text, what)


def _glob(text: str, sources: SourceOptions) -> list[ImageItem]:
    matches = sorted(glob.glob(text, recursive=True))
    if not matches:
        raise FeaturebankError(f"input pattern {text!r} matches no file")
    items: list[ImageItem] = []
    for m in matches:
        if container_kind(m) and os.path.isfile(m):  # shards/*.tar: each shard's members
            items.extend(expand_file(os.path.abspath(m), sources) or [])
        elif is_image_name(m):
            _no_split(sources, text, "a pattern of image files")
            items.append(ImageItem(os.path.abspath(m), ""))
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
    if container_kind(text) or text.lower().endswith(CONTAINER_EXTENSIONS):
        return f"{text} holds no image"
    if is_remote(text):
        return f"{text} holds no image"
    if any(ch in text for ch in "*?["):
        return f"pattern {text!r} matches only non-image files"
    return f"{text} is not an image"


def input_roots(inputs) -> list[str]:
    """The folders (absolute) a collection lives in: a folder itself, else the folder holding a
    list file, a file or the fixed part of a pattern."""
    roots: list[str] = []
    for raw in inputs:
        text = str(raw)
        if is_url(text) and not is_remote(text):
            text = local_form(text)
        if is_remote(text):
            prefix = text.split("*")[0].split("?")[0].split("[")[0]
            named_file = container_kind(text) or is_image_name(text) or is_list_name(text)
            root = parent_of(prefix) if named_file or prefix != text else text.rstrip("/")
            if root not in roots:
                roots.append(root)
            continue
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
