"""FeatureStore: write/read round trips, locking, versions, errors; read back with plain h5py.

Vectors are real data (sklearn digits pixels, 64-D) so float16 rounding is checked on real values.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from featurebank.extractor.store._store import FORMAT_VERSION, FeatureStore, StoreLockedError

from featurebank.errors import FeaturebankError
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
    with FeatureStore(tmp_path / "s.h5", "a") as s:
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
    with pytest.raises(FeaturebankError, match="several feature sets"):
        s.read()
    with pytest.raises(FeaturebankError, match="no feature set.*blocks.9"):
        s.read("blocks.9")


def test_plain_h5py_reads_the_documented_layout(tmp_path, digits):
    X, keys, paths, labels = digits
    with FeatureStore(tmp_path / "s.h5", "a") as s:
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
    with FeatureStore(tmp_path / "s.h5", "a") as s:
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
    with FeatureStore(path, "a") as s:
        s.add_rows(_spec(), keys[:4], X[:4], paths[:4], labels[:4])
    with h5py.File(path, "a") as f:  # simulate a kill between data and counter
        g = f["features"][_spec().fingerprint()]
        for name, fill in (("X", 7.0), ("keys", b"f" * 64)):
            g[name].resize(8, axis=0)
            g[name][4:8] = fill
    s = FeatureStore(path)
    assert len(s.read().keys) == 4 and not s.has(_spec().fingerprint(), ["f" * 64])[0]
    with FeatureStore(path, "a") as s:
        s.add_rows(_spec(), keys[4:6], X[4:6], paths[4:6], labels[4:6])
    feats = FeatureStore(path).read()
    np.testing.assert_array_equal(feats.keys, keys[:6])
    np.testing.assert_allclose(feats.X, X[:6], rtol=1e-3)


def test_second_writer_is_refused_and_lock_dies_with_the_process(tmp_path):
    path = tmp_path / "s.h5"
    with FeatureStore(path, "a"):
        with pytest.raises(StoreLockedError, match="another process"):
            FeatureStore(path, "a")
        FeatureStore(path, "r").feature_sets()  # readers are never blocked
    # A writer killed with SIGKILL leaves no stale lock.
    code = (f"from featurebank.extractor.store._store import FeatureStore; s = FeatureStore({str(path)!r}, 'a'); "
            "print('locked', flush=True); import time; time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError):
            FeatureStore(path, "a")
    finally:
        proc.kill()
        proc.wait()
    FeatureStore(path, "a").close()


def test_newer_format_and_foreign_files_are_refused(tmp_path):
    newer = tmp_path / "newer.h5"
    with h5py.File(newer, "w") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
        f.create_group("images")
    for mode in ("r", "a"):
        with pytest.raises(FeaturebankError, match="newer than this featurebank"):
            FeatureStore(newer, mode)
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


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_store_gives_clear_error_and_keeps_data(tmp_path, digits):
    X, keys, paths, labels = digits
    path = tmp_path / "s.h5"
    with FeatureStore(path, "a") as s:
        s.add_rows(_spec(), keys[:3], X[:3], paths[:3], labels[:3])
    path.chmod(0o444)
    try:
        with pytest.raises(FeaturebankError, match="read-only"):
            FeatureStore(path, "a")
        assert len(FeatureStore(path).read().keys) == 3
    finally:
        path.chmod(0o644)


def test_writes_need_writer_mode_and_valid_input(tmp_path, digits):
    X, keys, paths, labels = digits
    with FeatureStore(tmp_path / "s.h5", "a") as s:
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
    with FeatureStore(tmp_path / "s.h5", "a") as s:
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
    with FeatureStore(path, "a") as s:
        s.add_rows(_spec(), keys[:20], X[:20], paths[:20], labels[:20])
    np.save(tmp_path / "more.npy", X[20:])
    code = f"""
import resource, sys, numpy as np
from featurebank.errors import FeaturebankError
from tests.test_store import _spec
from featurebank.extractor.store._store import FeatureStore
limit = {path.stat().st_size + 4096}
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
with FeatureStore({str(path)!r}, "a") as s:
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
    with FeatureStore(path, "a") as s:  # room again: the same batch goes in
        s.add_rows(_spec(), keys[20:], X[20:], paths[20:], labels[20:])
    assert len(FeatureStore(path).read().keys) == 60
