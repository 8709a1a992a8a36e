"""FeatureStore: write/read round trips, locking, versions, errors; read back with plain h5py.

Vectors are real data (sklearn digits pixels, 64-D) so float16 rounding is checked on real values.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from featurebank.errors import FeaturebankError
from featurebank.extractor.store._store import FORMAT_VERSION, FeatureStore, StoreLockedError
from featurebank.spec import FeatureSpec, ModelSpec


def _spec(layer: str = "head", pool: str = "avg") -> FeatureSpec:
    return FeatureSpec(ModelSpec("efficientnet_lite0", "ab" * 32), layer, pool)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    X = d.data[:60].astype(np.float32)
    keys = [hashlib.sha256(row.tobytes()).hexdigest() for row in d.images[:60]]
    paths = [f"/data/{t}/{i:04d}.png" for i, t in enumerate(d.target[:60])]
    labels = [str(t) for t in d.target[:60]]
    return X, keys, paths, labels


def test_round_trip_float16_and_float32(tmp_path, digits):
    X, keys, paths, labels = digits
    with FeatureStore(tmp_path / "s.h5", mode="a") as s:
        s.add_rows(_spec("head"), keys[:30], X[:30], paths[:30], labels[:30])
        s.add_rows(_spec("head"), keys[30:], X[30:], paths[30:], labels[30:])
        s.add_rows(_spec("blocks.3"), keys, X * 1.001, paths, labels, dtype="float32")
    s = FeatureStore(tmp_path / "s.h5")
    head = s.read("head")
    np.testing.assert_array_equal(head.keys, keys)
    np.testing.assert_array_equal(head.y, labels)
    np.testing.assert_array_equal(head.paths, paths)
    assert head.X.dtype == np.float32
    np.testing.assert_allclose(head.X, X, rtol=1e-3)  # float16 holds 0..16 pixel values closely
    b3 = s.read(_spec("blocks.3").fingerprint())
    np.testing.assert_array_equal(b3.X, (X * 1.001).astype(np.float32))  # float32: exact
    infos = {i.spec.layer: i for i in s.feature_sets()}
    assert (infos["head"].dtype, infos["head"].rows, infos["head"].dim) == ("float16", 60, 64)
    assert infos["blocks.3"].dtype == "float32"
    assert head.spec == _spec("head")
    # get: any order, float32
    order = [5, 2, 59, 0]
    np.testing.assert_allclose(s.get(_spec().fingerprint(), [keys[i] for i in order]), X[order],
                               rtol=1e-3)
    assert s.has(_spec().fingerprint(), [keys[0], "0" * 64]).tolist() == [True, False]
    with pytest.raises(FeaturebankError, match=r"2 feature sets; choose one with "
                       r"layer_or_fingerprint=LAYER \(a layer name or fingerprint\)"):
        s.read()
    with pytest.raises(FeaturebankError, match="no feature set.*blocks.9"):
        s.read("blocks.9")


def test_plain_h5py_reads_the_documented_layout(tmp_path, digits):
    X, keys, paths, labels = digits
    with FeatureStore(tmp_path / "s.h5", mode="a") as s:
        s.add_rows(_spec(), keys[:10], X[:10], paths[:10], labels[:10])
        s.record_failure("/data/bad.jpg", "truncated image")
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f.attrs["format_version"] == FORMAT_VERSION
        g = f["features"][_spec().fingerprint()]
        assert FeatureSpec.from_json(g.attrs["spec"]) == _spec()
        assert g.attrs["committed"] == 10 and g["X"].dtype == np.float16
        assert g["keys"].dtype == np.dtype("S64")
        assert list(g["keys"][:10].astype(str)) == keys[:10]
        assert f["images"].attrs["committed"] == 10
        assert [os.fsdecode(p) for p in f["images/paths"][:10]] == paths[:10]
        assert f["failures"].attrs["committed"] == 1
        assert f["failures/reasons"][0].decode() == "truncated image"


def test_duplicate_content_keeps_one_row_and_all_paths(tmp_path, digits):
    X, keys, paths, labels = digits
    with FeatureStore(tmp_path / "s.h5", mode="a") as s:
        s.add_rows(_spec(), keys[:5], X[:5], paths[:5], labels[:5])
        s.add_rows(_spec(), keys[:5], X[:5] + 100, ["/other/" + p for p in paths[:5]], labels[:5])
        s.add_paths(keys[:2], ["/third/a.png", "/third/b.png"])
        s.add_paths(keys[:2], ["/third/a.png", "/third/b.png"])  # idempotent
        s.record_failure("/x.jpg", "not an image")
        s.record_failure("/x.jpg", "not an image")  # a re-run does not record it twice
    s = FeatureStore(tmp_path / "s.h5")
    feats = s.read()
    assert len(feats.keys) == 5
    np.testing.assert_allclose(feats.X, X[:5], rtol=1e-3)  # the first vectors stay
    info = s.info()
    assert info["images"] == 5 and info["paths"] == 12
    assert s.failures() == [("/x.jpg", "not an image")]


def test_rows_past_committed_are_ignored_and_overwritten(tmp_path, digits):
    """A commit cut short (data written, counter not) is invisible and replaced on resume."""
    X, keys, paths, labels = digits
    path = tmp_path / "s.h5"
    with FeatureStore(path, mode="a") as s:
        s.add_rows(_spec(), keys[:4], X[:4], paths[:4], labels[:4])
    with h5py.File(path, "a") as f:  # simulate a kill between data and counter
        g = f["features"][_spec().fingerprint()]
        for name, fill in (("X", 7.0), ("keys", b"f" * 64)):
            g[name].resize(8, axis=0)
            g[name][4:8] = fill
    s = FeatureStore(path)
    assert len(s.read().keys) == 4 and not s.has(_spec().fingerprint(), ["f" * 64])[0]
    with FeatureStore(path, mode="a") as s:
        s.add_rows(_spec(), keys[4:6], X[4:6], paths[4:6], labels[4:6])
    feats = FeatureStore(path).read()
    np.testing.assert_array_equal(feats.keys, keys[:6])
    np.testing.assert_allclose(feats.X, X[:6], rtol=1e-3)


def test_second_writer_is_refused_and_lock_dies_with_the_process(tmp_path):
    path = tmp_path / "s.h5"
    with FeatureStore(path, mode="a"):
        with pytest.raises(StoreLockedError, match="another process"):
            FeatureStore(path, mode="a")
        FeatureStore(path, mode="r").feature_sets()  # readers are never blocked
    # A writer killed with SIGKILL leaves no stale lock.
    code = (f"from featurebank.extractor.store._store import FeatureStore; s = FeatureStore({str(path)!r}, mode='a'); "
            "print('locked', flush=True); import time; time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError):
            FeatureStore(path, mode="a")
    finally:
        proc.kill()
        proc.wait()
    FeatureStore(path, mode="a").close()


def test_newer_format_and_foreign_files_are_refused(tmp_path):
    newer = tmp_path / "newer.h5"
    with h5py.File(newer, "w") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
        f.create_group("images")
    for mode in ("r", "a"):
        with pytest.raises(FeaturebankError, match="newer than this featurebank"):
            FeatureStore(newer, mode=mode)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(FeaturebankError, match="not a featurebank store"):
        FeatureStore(foreign)
    junk = tmp_path / "junk.h5"
    junk.write_text("hello")
    with pytest.raises(FeaturebankError, match="junk.h5"):
        FeatureStore(junk)
    with pytest.raises(FeaturebankError, match="does not exist"):
        FeatureStore(tmp_path / "absent.h5")


def test_writes_need_writer_mode_and_valid_input(tmp_path, digits):
    X, keys, paths, labels = digits
    with FeatureStore(tmp_path / "s.h5", mode="a") as s:
        with pytest.raises(FeaturebankError, match="dtype"):
            s.add_rows(_spec(), keys[:2], X[:2], paths[:2], dtype="float64")
        with pytest.raises(FeaturebankError, match="len\\(keys\\)"):
            s.add_rows(_spec(), keys[:2], X[:3], paths[:2])
    r = FeatureStore(tmp_path / "s.h5")
    with pytest.raises(FeaturebankError, match="read-only"):
        r.add_rows(_spec(), keys[:2], X[:2], paths[:2])
    with pytest.raises(FeaturebankError, match="no feature set yet"):
        r.read()


def test_a_later_label_for_known_content_wins(tmp_path, digits):
    """Embedding `data/cats/` (no label) then `data/` (label 'cats') labels the rows 'cats'."""
    X, keys, paths, labels = digits
    with FeatureStore(tmp_path / "s.h5", mode="a") as s:
        s.add_rows(_spec(), keys[:3], X[:3], paths[:3], ["", "", ""])
        s.add_paths(keys[:2], paths[:2], ["cats", "cats"])
        s.add_paths(keys[:1], paths[:1], [""])  # an unlabelled re-run does not erase it
        s.add_paths(keys[:1], ["/elsewhere/x.png"], ["dogs"])  # the first label given stays
    feats = FeatureStore(tmp_path / "s.h5").read()
    assert feats.y.tolist() == ["cats", "cats", ""]
    assert feats.paths.tolist() == paths[:3]
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f["paths"].attrs["committed"] == 6
        assert [v.decode() for v in f["paths/labels"][:6]] == ["", "", "", "cats", "cats", "dogs"]


def test_full_disk_refuses_the_commit_and_keeps_the_store(tmp_path, digits):
    """With the file size capped (RLIMIT_FSIZE, as a full disk), a commit fails cleanly."""
    X, keys, paths, labels = digits
    path = tmp_path / "s.h5"
    with FeatureStore(path, mode="a") as s:
        s.add_rows(_spec(), keys[:20], X[:20], paths[:20], labels[:20])
    np.save(tmp_path / "more.npy", X[20:])
    code = f"""
import resource, sys, numpy as np
from featurebank.errors import FeaturebankError
from tests.test_store import _spec
from featurebank.extractor.store._store import FeatureStore
limit = {path.stat().st_size + 4096}
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
with FeatureStore({str(path)!r}, mode="a") as s:
    try:
        s.add_rows(_spec(), {keys[20:]!r}, np.load({str(tmp_path / "more.npy")!r}), {paths[20:]!r})
    except FeaturebankError as exc:
        print(exc)
        sys.exit(3)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 3, out.stderr[-1500:]
    assert "free disk space" in out.stdout and "intact" in out.stdout
    feats = FeatureStore(path).read()
    np.testing.assert_array_equal(feats.keys, keys[:20])
    np.testing.assert_allclose(feats.X, X[:20], rtol=1e-3)
    with FeatureStore(path, mode="a") as s:  # room again: the same batch goes in
        s.add_rows(_spec(), keys[20:], X[20:], paths[20:], labels[20:])
    assert len(FeatureStore(path).read().keys) == 60


def test_waiting_writers_take_turns_and_leave_no_lock_file(tmp_path, digits):
    X, keys, paths, labels = digits
    path = tmp_path / "s.h5"
    lock = tmp_path / "s.h5.lock"
    with FeatureStore(path, mode="a") as s:
        assert lock.is_file()
        s.add_rows(_spec(), keys[:5], X[:5], paths[:5], labels[:5])
    assert not lock.exists()  # a finished writer leaves only the store
    # A writer in another process holds the lock until told to stop; a waiting writer gets it
    # after. Each step waits on a line or a log record, never on the clock.
    code = (f"import sys; from featurebank.extractor.store._store import FeatureStore\n"
            f"s = FeatureStore({str(path)!r}, mode='a'); print('locked', flush=True)\n"
            "sys.stdin.readline(); s.close()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    waiting, done, errors = threading.Event(), threading.Event(), []

    class Waiting(logging.Handler):
        def emit(self, record):
            if "waiting up to" in record.getMessage():
                waiting.set()

    def writer():
        try:
            with FeatureStore(path, mode="a", wait=120) as s:
                s.add_rows(_spec(), keys[5:8], X[5:8], paths[5:8], labels[5:8])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        done.set()

    handler = Waiting(logging.INFO)
    logger = logging.getLogger("featurebank.extractor.store._lock")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError, match=rf"another process \(pid {proc.pid}\)"):
            FeatureStore(path, mode="a")  # no wait: refused at once, naming the holder
        thread = threading.Thread(target=writer)
        thread.start()
        assert waiting.wait(60), "the waiting writer never said it waits"
        assert not done.is_set()  # the holder still holds it: the writer is waiting its turn
        proc.stdin.write("\n")
        proc.stdin.flush()
        thread.join(120)
        assert done.is_set() and not errors, errors
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
        proc.kill()
        proc.wait(timeout=30)
    assert len(FeatureStore(path).read().keys) == 8 and not lock.exists()


def test_a_store_in_a_missing_folder_is_refused_not_created(tmp_path):
    with pytest.raises(FeaturebankError, match="folder .*missing.* does not exist"):
        FeatureStore(tmp_path / "missing" / "s.h5", mode="a")
    assert not (tmp_path / "missing").exists()


def test_reads_retry_in_one_layer_then_fail_clearly(tmp_path, digits, monkeypatch):
    """A read that keeps failing is tried 1 + len(DELAYS) times in all, however many read
    methods it goes through (read -> resolve -> feature_sets), then named in a clear error."""
    from featurebank.extractor.store import _retry, _store

    X, keys, paths, labels = digits
    path = tmp_path / "s.h5"
    with FeatureStore(path, mode="a") as s:
        s.add_rows(_spec(), keys[:2], X[:2], paths[:2], labels[:2])
    store = FeatureStore(path)
    opens = []

    def half_written(*args, **kwargs):
        opens.append(args[0])
        raise OSError("Unable to synchronously open object (bad heap free list)")

    monkeypatch.setattr(_store.h5py, "File", half_written)
    monkeypatch.setattr(_retry.time, "sleep", lambda s: None)
    with pytest.raises(FeaturebankError, match="cannot read store .*s.h5 .*bad heap.*try again"):
        store.read()
    assert len(opens) == 1 + len(_retry.DELAYS)


def test_relative_paths_are_stored_absolute(tmp_path, digits, monkeypatch):
    X, keys, _, labels = digits
    monkeypatch.chdir(tmp_path)
    with FeatureStore("s.h5", mode="a") as s:
        s.add_rows(_spec(), keys[:2], X[:2], ["imgs/a.png", "../b.png"], labels[:2])
        s.record_failure("bad.png", "truncated image")
    got = FeatureStore(tmp_path / "s.h5")
    assert got.read().paths.tolist() == [str(tmp_path / "imgs/a.png"), str(tmp_path.parent / "b.png")]
    assert got.failures()[0][0] == str(tmp_path / "bad.png")


def _as_version_1(path: Path, root: Path) -> None:
    """Turn a store into the version-1 layout: paths relative to ``root``, no roots attr, no
    row_shape, no /commits (what featurebank wrote before format 2)."""
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 1
        del f.attrs["collection_roots"]
        del f["commits"]
        for g in f["features"].values():
            del g.attrs["row_shape"]
        for group in ("images", "paths", "failures"):
            ds = f[group]["paths"]
            ds[:] = np.array([os.fsencode(os.path.relpath(os.fsdecode(bytes(p)), root)) for p in ds[:]],
                             dtype=h5py.vlen_dtype(bytes))


def test_version_1_store_reads_refuses_writes_and_upgrades(tmp_path, digits, capsys):
    from featurebank.cli import main

    X, keys, _, labels = digits
    root = tmp_path / "where-embed-ran"
    files = [root / "imgs" / f"{i}.png" for i in range(4)]
    for p in files:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"png")
    path = tmp_path / "old.h5"
    with FeatureStore(path, mode="a") as s:
        s.add_rows(_spec(), keys[:4], X[:4], [str(p) for p in files], labels[:4])
        s.record_failure(str(root / "imgs" / "bad.png"), "truncated image")
    _as_version_1(path, root)
    old = FeatureStore(path)  # read-only works: vectors and labels
    assert old.format_version == 1 and old.read().y.tolist() == labels[:4]
    assert old.read().paths.tolist() == ["imgs/0.png", "imgs/1.png", "imgs/2.png", "imgs/3.png"]
    with pytest.raises(FeaturebankError, match=r"format version 1.*store upgrade .*--root"):
        FeatureStore(path, mode="a")
    assert not (tmp_path / "old.h5.lock").exists()
    assert main(["store", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "(format 1)" in out and "note:" in out and "store upgrade" in out
    # a wrong root is refused (nothing found under it), the file is untouched
    assert main(["store", "upgrade", str(path), "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err  # the library names its parameters, the CLI its flags
    assert "error: --root must be the folder 'featurebank embed' ran in: none of the 4 image " \
        "paths" in err and "(set --force to upgrade anyway" in err
    assert main(["store", "upgrade", str(path)]) == 1
    assert "--root must be the folder 'featurebank embed' ran in (is not given)" in \
        capsys.readouterr().err
    assert FeatureStore(path).format_version == 1
    assert main(["store", "upgrade", str(path), "--root", str(root)]) == 0
    assert "4 of 4 image paths made absolute" in capsys.readouterr().out
    new = FeatureStore(path)
    assert new.format_version == FORMAT_VERSION
    assert new.read().paths.tolist() == [str(p) for p in files]
    assert new.failures()[0][0] == str(root / "imgs" / "bad.png") and new.roots() == [str(root)]
    assert new.feature_sets()[0].row_shape == (64,)
    with FeatureStore(path, mode="a") as s:  # and it takes writes again
        s.add_rows(_spec(), keys[4:6], X[4:6], [str(root / "x.png"), str(root / "y.png")])
    assert len(FeatureStore(path).read().keys) == 6
    assert main(["store", "upgrade", str(path), "--root", str(root)]) == 0
    assert f"already format {FORMAT_VERSION}" in capsys.readouterr().out
