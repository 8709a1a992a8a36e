"""embed_collection and the embed / store CLI on real images (sklearn digits, real photos).

Vectors in the store are compared with the Extractor run directly on the same files.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featurebank.cli import main
from featurebank.errors import FeaturebankError
from featurebank.extractor import Extractor, embed_collection
from featurebank.extractor.store._store import FeatureStore


@pytest.fixture(scope="module")
def extractor(lite0_onnx) -> Extractor:
    return Extractor("efficientnet_lite0", layers=("head", "blocks.3"), threads=1)


@pytest.fixture(scope="module")
def collection(tmp_path_factory, digits_dir, photo_dir) -> Path:
    """16 digits in 4 label folders plus the 6 real photos: 22 distinct images."""
    root = tmp_path_factory.mktemp("coll")
    for label in ("0", "1", "2", "3"):
        (root / label).mkdir()
        for p in sorted((digits_dir / label).glob("*.png"))[:4]:
            shutil.copy(p, root / label / p.name)
    shutil.copytree(photo_dir, root / "photos")
    return root


def test_incremental_rerun_embeds_only_new_content(tmp_path, collection, extractor):
    src = tmp_path / "src"
    shutil.copytree(collection, src)
    held_back = sorted((src / "photos").rglob("*.jpg"))[:3]
    hidden = tmp_path / "later"
    hidden.mkdir()
    for p in held_back:
        p.rename(hidden / p.name)
    store = tmp_path / "s.h5"
    kw = dict(layers=("head",), batch_size=8, workers=2, threads=1, progress=False)
    first = embed_collection([str(src)], store, **kw)
    assert (first.embedded, first.cached, first.duplicates, first.failed) == (19, 0, 0, 0)
    before = FeatureStore(store).read("head")

    for p in held_back:  # new content, plus one identical file under a new name
        shutil.copy(hidden / p.name, p)
    shutil.copy(src / "0" / sorted(x.name for x in (src / "0").iterdir())[0], src / "1" / "copy.png")
    second = embed_collection([str(src)], store, **kw)
    assert (second.embedded, second.cached, second.duplicates, second.failed) == (3, 20, 0, 0)
    # the copy's content is cached (counted so), and its path is recorded
    info = FeatureStore(store).info()
    assert info["images"] == 22 and info["paths"] == 23

    after = FeatureStore(store).read("head")
    assert len(after.keys) == 22 and len(set(after.keys)) == 22
    np.testing.assert_array_equal(after.X[:19], before.X)  # cached rows untouched
    ref = extractor.embed(list(after.paths))["head"]
    np.testing.assert_allclose(after.X, ref, rtol=2e-3, atol=2e-3)  # float16 storage
    labels = dict(zip(after.paths, after.y, strict=True))
    assert labels[str(src / "2" / sorted(x.name for x in (src / "2").iterdir())[0])] == "2"
    third = embed_collection([str(src)], store, **kw)
    assert (third.embedded, third.cached) == (0, 23)


def test_identical_files_embedded_once_two_layers_float32(tmp_path, collection, extractor):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    photos = sorted((collection / "photos").rglob("*.jpg"))[:4]
    for p in photos:
        shutil.copy(p, src / "a" / p.name)
        shutil.copy(p, src / "a" / f"dup_{p.name}")
    store = tmp_path / "s.h5"
    s = embed_collection([str(src)], store, layers=("head", "blocks.3"), dtype="float32",
                         batch_size=3, workers=2, threads=1, progress=False)
    assert (s.embedded, s.duplicates, s.cached, s.failed) == (4, 4, 0, 0)
    fs = FeatureStore(store)
    sets = {i.spec.layer: i for i in fs.feature_sets()}
    assert set(sets) == {"head", "blocks.3"}
    assert sets["head"].dtype == sets["blocks.3"].dtype == "float32"
    assert (sets["head"].dim, sets["blocks.3"].dim) == (1280, 40)
    for layer in ("head", "blocks.3"):
        feats = fs.read(layer)
        assert len(feats.keys) == 4
        ref = extractor.embed(list(feats.paths))[layer]
        np.testing.assert_allclose(feats.X, ref, rtol=1e-4, atol=1e-4)
    assert fs.info()["paths"] == 8
    # adding a layer later embeds everything again for that layer only
    s2 = embed_collection([str(src)], store, layers=("head", "blocks.5"), batch_size=8,
                          workers=2, threads=1, progress=False)
    assert (s2.embedded, s2.cached) == (4, 0)
    assert len(FeatureStore(store).feature_sets()) == 3


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bad_inputs(root: Path) -> dict[str, str]:
    """name -> 'ok' | 'fail' for files that stress the decoder."""
    from skimage import data

    cat = Image.fromarray(data.chelsea()).resize((160, 120))
    buf = io.BytesIO()
    cat.save(buf, "JPEG", quality=90)
    jpeg = buf.getvalue()
    (root / "zero.jpg").write_bytes(b"")
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (root / "text.jpg").write_text("this is not a picture\n")
    (root / "vector.png").write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n")
    # a valid PNG header declaring 60000 x 60000 pixels: must be refused before allocating
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 100)
    (root / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                                    + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))
    cat.convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray(np.asarray(cat.convert("L"), np.uint16) * 257).save(root / "gray16.png")
    pal = cat.convert("P", palette=Image.ADAPTIVE, colors=64)
    pal.info["transparency"] = 0
    pal.save(root / "palette_alpha.png", transparency=0)
    frames = [cat, cat.rotate(90), cat.rotate(180)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    (root / "good.jpg").write_bytes(jpeg)
    return {"zero.jpg": "fail", "truncated.jpg": "any", "text.jpg": "fail", "vector.png": "fail",
            "huge.png": "fail", "cmyk.jpg": "ok", "gray16.png": "ok", "palette_alpha.png": "ok",
            "anim.gif": "ok", "good.jpg": "ok"}


def test_bad_inputs_are_embedded_or_recorded_never_abort(tmp_path, lite0_onnx):
    src = tmp_path / "bad"
    src.mkdir()
    expected = _bad_inputs(src)
    store = tmp_path / "s.h5"
    s = embed_collection([str(src)], store, batch_size=4, workers=2, threads=1, progress=False)
    fs = FeatureStore(store)
    stored = {Path(p).name for p in fs.read().paths}
    failed = {Path(p).name: reason for p, reason in fs.failures()}
    assert s.embedded + s.failed == len(expected) and s.failed == len(failed)
    for name, want in expected.items():
        assert (name in stored) != (name in failed), name  # exactly one outcome each
        if want == "ok":
            assert name in stored, (name, failed.get(name))
        elif want == "fail":
            assert name in failed, name
            assert failed[name].strip(), name
    assert "empty" in failed["zero.jpg"]
    assert "pixels" in failed["huge.png"]
    assert np.isfinite(fs.read().X).all()
    # the summary a user reads names each failed file and why, not only a count
    shown = str(s).splitlines()
    for path, reason in s.failures:
        assert f"  {path}: {reason}" in shown
    s.failures *= 4  # past the lines shown: the rest is counted and where to see it said
    text = str(s)
    assert text.count(f"{src}/") == s.SHOWN_FAILURES
    assert f"... and {len(s.failures) - s.SHOWN_FAILURES} more ('featurebank store info" in text


def test_cli_embed_info_and_export_npz(tmp_path, collection, capsys):
    store = tmp_path / "s.h5"
    assert main(["embed", str(collection / "photos"), "--store", str(store), "--batch-size", "4",
                 "--workers", "2", "--threads", "1", "--no-progress", "--layer", "head",
                 "--layer", "blocks.3"]) == 0
    out = capsys.readouterr().out
    assert "embedded 6" in out and "failed 0" in out
    assert main(["store", "info", str(store)]) == 0
    out = capsys.readouterr().out
    assert "6 images" in out and "efficientnet_lite0" in out and "blocks.3/avg" in out
    assert "1280" in out and "float16" in out and "failures: 0" in out
    npz = tmp_path / "head.npz"
    assert main(["store", "export", str(store), "-o", str(npz), "--layer", "head"]) == 0
    got = np.load(npz)
    feats = FeatureStore(store).read("head")
    np.testing.assert_array_equal(got["features"], feats.X)
    for name, arr in (("keys", feats.keys), ("paths", feats.paths), ("labels", feats.y)):
        np.testing.assert_array_equal(got[name], arr)
    assert main(["store", "export", str(store), "-o", str(npz)]) == 1  # two sets: must name one
    assert "2 feature sets; choose one with --layer" in capsys.readouterr().err
    # the old export_npz still writes the same file, whatever its name, with a warning
    with pytest.warns(DeprecationWarning, match="use export"):
        old = FeatureStore(store).export_npz(tmp_path / "head.bin", "head")
    with np.load(old) as legacy:
        np.testing.assert_array_equal(legacy["features"], got["features"])


def test_bad_arguments_raise_clear_errors(tmp_path, collection):
    with pytest.raises(FeaturebankError, match="dtype"):
        embed_collection([str(collection)], tmp_path / "s.h5", dtype="int8", progress=False)
    with pytest.raises(FeaturebankError, match="engine"):
        embed_collection([str(collection)], tmp_path / "s.h5", engine="spark", progress=False)


class _StoppedClock:
    """A clock that stands still until the test moves it: no file can time out because the
    machine is slow, and the stuck one times out when the test says (issue 31)."""

    def __init__(self) -> None:
        self.t = 0.0
        self.read = threading.Event()  # a wait began (its deadline was read)

    def now(self) -> float:
        self.read.set()
        return self.t

    def wait(self, future, seconds: float) -> None:
        from concurrent.futures import wait

        wait([future], timeout=0.01)  # real time passes; this clock's time does not


def test_a_file_stuck_in_the_decoder_is_skipped_not_hung(tmp_path, collection, monkeypatch):
    """A decoder wedged on one file: the run records it as timed out and goes on without
    waiting for it. The engine's clock is injected: it moves past the deadline only once the
    file is known stuck and its wait has begun, and stands still for every other file however
    slow the machine."""
    import featurebank.extractor.engines._common as pipeline  # the per-file step both engines use
    import featurebank.extractor.engines._local as local

    real_decode = pipeline.decode
    stuck = sorted((collection / "photos").rglob("*.jpg"))[0]  # the first file waited for
    entered, released = threading.Event(), threading.Event()
    clock = _StoppedClock()

    def wedged_decode(data, pre, max_pixels, name):
        if Path(name) == stuck:
            entered.set()
            released.wait(600)  # a decoder wedged on one file, until the test lets it go
        return real_decode(data, pre, max_pixels, name)

    def time_runs_out() -> None:
        entered.wait(600)
        clock.read.wait(600)  # the wait for the stuck file (the first one) has begun
        clock.t += 3601.0  # an hour: only this clock, not real time, can get there

    monkeypatch.setattr(pipeline, "decode", wedged_decode)
    monkeypatch.setattr(local, "CLOCK", clock)
    mover = threading.Thread(target=time_runs_out, daemon=True)
    mover.start()
    try:
        s = embed_collection([str(collection / "photos")], tmp_path / "s.h5", batch_size=2,
                             workers=2, threads=1, progress=False, file_timeout=3600.0)
        # the run ended while the decoder was still wedged: it did not wait for it
        assert entered.is_set() and not released.is_set()
    finally:
        released.set()
    assert (s.embedded, s.failed) == (5, 1)
    assert FeatureStore(tmp_path / "s.h5").failures() == [(str(stuck), "timed out after 3600 s")]


def test_wait_for_file_expires_a_file_that_never_finishes():
    """The real wait: a result that never comes becomes a failure naming the timeout."""
    from concurrent.futures import Future

    from featurebank.extractor import ImageItem
    from featurebank.extractor.engines._local import wait_for_file

    never: Future = Future()
    got = wait_for_file(never, ImageItem("x.jpg"), 0.01)
    assert got.error == "timed out after 0.01 s" and got.pixels is None


def test_ray_engine_missing_names_the_extra(tmp_path, collection, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "featurebank.extractor.engines._ray", None)  # as if Ray were absent
    with pytest.raises(FeaturebankError, match=r"pip install 'featurebank\[ray\]'"):
        embed_collection([str(collection)], tmp_path / "s.h5", engine="ray", progress=False)


def test_bad_requests_fail_before_any_file_is_created(tmp_path, collection, capsys, lite0_onnx):
    store = tmp_path / "s.h5"
    empty = tmp_path / "empty"
    empty.mkdir()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("x")
    cases = {
        "layer": (["embed", str(collection / "0"), "--layer", "blocks.99"], "blocks.99"),
        "model": (["embed", str(collection / "0"), "--model", "efficientnet_lite9"], "efficientnet_lite9"),
        "empty": (["embed", str(empty)], "holds no file at all"),
        "no images": (["embed", str(notes)], "holds 1 file(s), none an image (1 .txt)"),
    }
    for what, (argv, named) in cases.items():
        assert main([*argv, "--store", str(store), "--no-progress"]) == 1, what
        assert named in capsys.readouterr().err, what
        assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "notes"], what


def test_inputs_are_checked_before_the_model_is_exported(tmp_path, monkeypatch, capsys):
    """An input without images fails at once, not after a first-use export of the model."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FEATUREBANK_CACHE", str(cache))
    (tmp_path / "empty").mkdir()
    assert main(["embed", str(tmp_path / "empty"), "--store", str(tmp_path / "s.h5")]) == 1
    assert "holds no file at all" in capsys.readouterr().err
    assert not cache.exists() or not any(cache.iterdir())  # nothing was exported


def test_a_failed_start_removes_the_store_it_created(tmp_path, collection, monkeypatch):
    import featurebank.extractor.engines._local as local

    def broken(*args, **kwargs):
        raise FeaturebankError("engine failed at start")

    monkeypatch.setattr(local, "embed_local", broken)
    with pytest.raises(FeaturebankError, match="engine failed"):
        embed_collection([str(collection / "0")], tmp_path / "s.h5", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_summary_ends_with_labels_and_warns_about_split_folders(tmp_path, collection, capsys):
    photos = tmp_path / "photos"
    for split, labels in (("train", ("0", "1")), ("test", ("2",))):
        for label in labels:
            shutil.copytree(collection / label, photos / split / label)
    store = tmp_path / "s.h5"
    assert main(["embed", str(photos / "train"), "--store", str(store), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "2 label(s), images stored per label:" in out
    assert [line.split() for line in out.splitlines()[-2:]] == [["0", "4"], ["1", "4"]]
    # everything already stored: not an error, and the table is there again
    assert main(["embed", str(photos / "train"), "--store", str(store), "--no-progress",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["embedded"], summary["cached"], summary["labels"]) == (0, 8, {"0": 4, "1": 4})
    assert main(["store", "info", str(store)]) == 0
    info = capsys.readouterr().out
    assert "2 label(s), images per label:" in info and f"collection: {photos / 'train'}" in info
    # the folder one level too high: labels are split names, and the warning says what to pass
    assert main(["embed", str(photos), "--store", str(tmp_path / "wrong.h5"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "warning: the labels (test, train) look like dataset splits" in out
    assert f"e.g. {photos / 'train'}" in out


def test_input_with_no_readable_image_is_an_error_and_counts_are_of_stored_images(
        tmp_path, collection, capsys):
    """issue 31: an input of only unreadable files exited 0 and left an empty store; per-label
    counts included the files that failed."""
    broken = tmp_path / "photos"
    for label in ("a", "b"):
        (broken / label).mkdir(parents=True)
        for i in range(2):
            (broken / label / f"{i}.jpg").write_bytes(b"not an image %d" % i)
    store = tmp_path / "s.h5"
    assert main(["embed", str(broken), "--store", str(store), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "none of the 4 input files could be read as an image" in err
    assert str(broken / "a" / "0.jpg") in err and "no store was written" in err
    assert not store.exists() and "Traceback" not in err
    # two good images of label b beside the broken ones: the table counts what was stored
    for src in sorted((collection / "1").iterdir())[:2]:
        shutil.copy(src, broken / "b" / src.name)
    assert main(["embed", str(broken), "--store", str(store), "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["failed"] == 4 and summary["labels"] == {"b": 2}
    assert sorted(p for p, _ in summary["failures"]) == sorted(
        str(p) for p in broken.rglob("?.jpg"))
