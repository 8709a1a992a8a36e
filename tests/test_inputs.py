"""collect(): folders with ImageFolder labels, list files, globs; deterministic and safe."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from featurebank.extractor._inputs import ImageItem, collect

from featurebank.errors import FeaturebankError


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "data"
    for rel in ["cat/b.JPG", "cat/a.jpeg", "cat/deep/er/c.png", "dog/z.WebP", "dog/y.bmp",
                "dog/x.TIFF", "dog/w.tif", "dog/v.gif", "loose.png", "notes.txt", "dog/readme.md"]:
        _touch(root / rel)
    return root


def test_folder_labels_and_order(tree):
    items = collect([str(tree)])
    rel = [(os.path.relpath(i.path, tree), i.label) for i in items]
    assert rel == [
        ("loose.png", ""),
        ("cat/a.jpeg", "cat"), ("cat/b.JPG", "cat"), ("cat/deep/er/c.png", "cat"),
        ("dog/v.gif", "dog"), ("dog/w.tif", "dog"), ("dog/x.TIFF", "dog"),
        ("dog/y.bmp", "dog"), ("dog/z.WebP", "dog"),
    ]
    assert collect([str(tree)]) == items  # deterministic
    assert all(isinstance(i, ImageItem) for i in items)


def test_real_photo_folder(photo_dir):
    items = collect([photo_dir])
    assert len(items) == 6 and {i.label for i in items} == {"animal", "object", "scene"}
    assert all(Path(i.path).is_file() for i in items)


def test_list_files_resolve_relative_paths(tree, tmp_path):
    lst = tree / "cat" / "list.csv"
    lst.write_text("a.jpeg,kitten\n\n# a comment\ndeep/er/c.png\n" f"{tree / 'loose.png'}, other\n")
    items = collect([str(lst)])
    assert items == [ImageItem(str(tree / "cat" / "a.jpeg"), "kitten"),
                     ImageItem(str(tree / "cat" / "deep/er/c.png"), ""),
                     ImageItem(str(tree / "loose.png"), "other")]
    txt = tmp_path / "files.txt"
    txt.write_text("data/dog/y.bmp\n")
    assert collect([txt]) == [ImageItem(str(tmp_path / "data/dog/y.bmp"), "")]


def test_globs_and_single_files(tree):
    # patterns match case-sensitively, as in the shell; non-images (readme.md) are dropped
    items = collect([str(tree / "dog" / "*"), str(tree / "loose.png")])
    assert [Path(i.path).name for i in items] == ["v.gif", "w.tif", "x.TIFF", "y.bmp", "z.WebP",
                                                  "loose.png"]
    rec = collect([str(tree / "**" / "*.png")])
    assert [Path(i.path).name for i in rec] == ["c.png", "loose.png"]
    with pytest.raises(FeaturebankError, match="matches no file"):
        collect([str(tree / "*.nothing")])


def test_missing_input_is_named(tree):
    with pytest.raises(FeaturebankError, match="nowhere/at/all"):
        collect([str(tree), "nowhere/at/all"])


def test_symlink_loop_does_not_hang(tree):
    os.symlink(tree, tree / "cat" / "loop")
    os.symlink(tree / "dog", tree / "alias")
    items = collect([str(tree)])
    assert len(items) == 9  # links to folders not followed: nothing seen twice


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root reads any folder, so an unreadable folder cannot be made")
def test_unreadable_folder_skipped(tree):
    locked = tree / "dog"
    locked.chmod(0)
    try:
        labels = {i.label for i in collect([str(tree)])}
    finally:
        locked.chmod(0o755)
    assert labels == {"", "cat"}
