"""collect(): folders with ImageFolder labels, list files, globs; deterministic and safe."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from featurebank.errors import FeaturebankError
from featurebank.extractor._inputs import ImageItem, collect, input_roots, split_layout_warning


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


def test_inputs_without_images_are_errors_naming_what_was_found(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FeaturebankError, match=r"no image to embed: folder .*empty holds no file at all"):
        collect([str(empty)])
    docs = tmp_path / "docs"
    for name in ("a.txt", "b.txt", "c.csv", "README"):
        _touch(docs / "sub" / name)
    with pytest.raises(FeaturebankError,
                       match=r"holds 4 file\(s\), none an image \(2 \.txt, 1 \(no extension\), 1 \.csv\)"):
        collect([str(docs)])
    assert collect([str(docs)], require_images=False) == []
    _touch(tmp_path / "one" / "x.png")  # one input with images is enough
    assert len(collect([str(docs), str(tmp_path / "one")])) == 1


def test_paths_come_back_absolute(tree, monkeypatch):
    monkeypatch.chdir(tree.parent)
    items = collect(["data/cat", "data/loose.png", "data/dog/*.bmp"])
    assert [i.path for i in items] == [str(tree / "cat/a.jpeg"), str(tree / "cat/b.JPG"),
                                       str(tree / "cat/deep/er/c.png"), str(tree / "loose.png"),
                                       str(tree / "dog/y.bmp")]
    assert input_roots(["data/cat", "data/loose.png", "data/dog/*.bmp"]) == [
        str(tree / "cat"), str(tree), str(tree / "dog")]


def test_split_folders_as_labels_get_a_warning_naming_the_folder(tmp_path):
    for rel in ("train/cat/a.png", "train/dog/b.png", "test/cat/c.png"):
        _touch(tmp_path / "photos" / rel)
    photos = str(tmp_path / "photos")
    warning = split_layout_warning([photos], collect([photos]))
    assert warning and "(test, train)" in warning and os.path.join(photos, "train") in warning
    train = os.path.join(photos, "train")
    assert split_layout_warning([train], collect([train])) is None
