"""Sharded store (no Ray needed): shards + manifest + virtual HDF5 file read as one store."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
from sklearn.datasets import load_digits

from featurebank.errors import FeaturebankError
from featurebank.extractor.store._shards import (
    MANIFEST,
    ShardedStore,
    is_sharded,
    shard_dir,
    write_shard,
)
from featurebank.extractor.store._store import FeatureStore, StoreLockedError
from featurebank.spec import FeatureSpec, ModelSpec, Preprocessing

SPEC = FeatureSpec(ModelSpec("digits-pixels", "0" * 64, Preprocessing((8, 8), 8), "test"), "pixels", "none")


@pytest.fixture(scope="module")
def digits():
    """Real handwritten digits: the 64 pixels as the 'features', content keys per image."""
    d = load_digits()
    keys = [f"{i:064x}" for i in range(len(d.data))]
    paths = [f"/data/digits/{d.target[i]}/{i:04d}.png" for i in range(len(d.data))]
    return d.data.astype(np.float32), keys, paths, d.target.astype(str)


def _shard(store, name, digits, idx, failures=()):
    X, keys, paths, labels = digits
    ks = [keys[i] for i in idx]
    return write_shard(store.dir, f"{store.new_run_id()}-{name}.h5", {SPEC: (ks, X[idx])},
                       [(keys[i], paths[i], labels[i]) for i in idx], list(failures))


def test_shards_read_as_one_store_without_duplicates(tmp_path, digits):
    X, keys, paths, labels = digits
    path = tmp_path / "s.h5"
    with ShardedStore(path) as store:
        _shard(store, "a", digits, np.arange(0, 300))
        # overlaps the first shard: rows 250..299 must appear once, from the first shard
        _shard(store, "b", digits, np.arange(250, 500), [("/data/bad.png", "truncated image")])
        _shard(store, "c", digits, np.arange(500, 520), [("/data/bad.png", "truncated image")])
        state = store.rebuild()
    assert state.done([SPEC.fingerprint()]) == set(keys[:520])
    assert is_sharded(path) and not any(p.name.endswith(".tmp") for p in shard_dir(path).iterdir())
    feats = FeatureStore(path).read()
    np.testing.assert_array_equal(feats.keys, keys[:520])
    np.testing.assert_array_equal(feats.X, X[:520].astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(feats.y, labels[:520])
    np.testing.assert_array_equal(feats.paths, paths[:520])
    assert FeatureStore(path).failures() == [("/data/bad.png", "truncated image")]
    got = FeatureStore(path).get(SPEC.fingerprint(), [keys[511], keys[3], keys[260]])
    np.testing.assert_array_equal(got, X[[511, 3, 260]].astype(np.float16))
    with h5py.File(path, "r") as f:  # plain h5py sees the same rows
        assert f["features"][SPEC.fingerprint()]["X"].shape == (520, 64)
    manifest = json.loads((shard_dir(path) / MANIFEST).read_text())
    assert [s["rows"][f"features/{SPEC.fingerprint()}"] for s in manifest["shards"]] == [300, 200, 20]
    assert manifest["feature_sets"][SPEC.fingerprint()]["rows"] == 520


def test_store_can_move_and_cwd_does_not_matter(tmp_path, digits, monkeypatch):
    path = tmp_path / "a" / "s.h5"
    with ShardedStore(path) as store:
        _shard(store, "a", digits, np.arange(40))
        store.rebuild()
    moved = tmp_path / "b"
    os.rename(tmp_path / "a", moved)
    monkeypatch.chdir("/")
    np.testing.assert_array_equal(FeatureStore(moved / "s.h5").read().X,
                                  digits[0][:40].astype(np.float16))


def test_missing_shard_is_an_error_not_zeros(tmp_path, digits):
    path = tmp_path / "s.h5"
    with ShardedStore(path) as store:
        lost = _shard(store, "a", digits, np.arange(10))
        _shard(store, "b", digits, np.arange(10, 20))
        store.rebuild()
        lost.unlink()
        with pytest.raises(FeaturebankError, match="missing"):
            store.rebuild()


def test_local_store_is_adopted_as_first_shard_and_lock_is_shared(tmp_path, digits):
    X, keys, paths, labels = digits
    path = tmp_path / "s.h5"
    with FeatureStore(path, mode="a") as local:
        local.commit({SPEC: (keys[:30], X[:30])}, list(zip(keys[:30], paths[:30], labels[:30], strict=True)))
        with pytest.raises(StoreLockedError):
            ShardedStore(path).__enter__()
    with ShardedStore(path) as store:
        _shard(store, "a", digits, np.arange(20, 50))
        state = store.rebuild()
    assert len(state.shards) == 2 and state.shards[0].startswith("shard-0-base")
    np.testing.assert_array_equal(FeatureStore(path).read().keys, keys[:50])


def test_rebuild_reads_key_indexes_and_repairs_missing_or_stale_ones(tmp_path, digits, monkeypatch):
    from featurebank.extractor.store import _shard_index

    X, keys, _, _ = digits
    path = tmp_path / "s.h5"
    opened: list[str] = []
    real_file = _shard_index.h5py.File

    def counting_file(name, *a, **kw):  # counts shard files opened (not the virtual file)
        if os.path.basename(str(name)).startswith("shard-"):
            opened.append(os.path.basename(str(name)))
        return real_file(name, *a, **kw)

    with ShardedStore(path) as store:
        shards = [_shard(store, n, digits, np.arange(i, i + 40)) for n, i in (("a", 0), ("b", 30), ("c", 70))]
        monkeypatch.setattr(_shard_index.h5py, "File", counting_file)
        store.rebuild()
        assert opened == []  # every shard committed with its index: no shard file opened
        _shard_index.index_path(shards[0]).unlink()  # a shard from before the indexes
        stale = json.loads(_shard_index.index_path(shards[1]).read_text())
        stale["size"] += 1  # an index that does not describe the file beside it
        _shard_index.index_path(shards[1]).write_text(json.dumps(stale))
        state = store.rebuild()
        assert sorted(opened) == sorted(s.name for s in shards[:2])
        opened.clear()
        store.rebuild()
        assert opened == []  # both indexes were rewritten
    assert state.done([SPEC.fingerprint()]) == set(keys[:110])
    feats = FeatureStore(path).read()
    np.testing.assert_array_equal(feats.keys, keys[:110])
    np.testing.assert_array_equal(feats.X, X[:110].astype(np.float16).astype(np.float32))


def test_content_twice_in_one_shard_is_one_row(tmp_path, digits):
    X, keys, paths, labels = digits
    path = tmp_path / "s.h5"
    with ShardedStore(path) as store:
        _shard(store, "a", digits, np.arange(10))
        # the content of row 11 comes three times in this shard (a file and two copies of it)
        feats, images = [keys[i] for i in (10, 11, 11, 12, 11)], [(keys[11], f"/copy/{i}.png", "x") for i in (1, 2)]
        write_shard(store.dir, f"{store.new_run_id()}-b.h5",
                    {SPEC: (feats, X[[10, 11, 11, 12, 11]])},
                    [(keys[i], paths[i], labels[i]) for i in (10, 11, 12)] + images, [])
        state = store.rebuild()
    assert state.done([SPEC.fingerprint()]) == set(keys[:13])
    got = FeatureStore(path).read()
    np.testing.assert_array_equal(got.keys, keys[:13])
    np.testing.assert_array_equal(got.X, X[:13].astype(np.float16).astype(np.float32))
