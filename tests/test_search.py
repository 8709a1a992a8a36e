"""Neighbour search over a store: exact blocked search against brute force, a sharded store read
through its virtual file, the faiss index (recall, lazy extension, a refused fingerprint, a
kill while indexing), and `featurebank neighbors` on real photos."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits

from featurebank.errors import FeaturebankError
from featurebank.extractor import (
    IndexMismatchError,
    NeighbourIndex,
    SearchOptions,
    StoreSearch,
    exact_search,
    self_neighbours,
)
from featurebank.extractor.store import FeatureStore
from featurebank.spec import FeatureSpec, ModelSpec, Preprocessing

SPEC = FeatureSpec(ModelSpec("digits-pixels", "0" * 64, Preprocessing((8, 8), 8), "test"),
                   "pixels", "none")


@pytest.fixture(scope="module")
def digits():
    """Real handwritten digits: the 64 pixels as the 'features', one content key per image."""
    d = load_digits()
    keys = [f"{i:064x}" for i in range(len(d.data))]
    paths = [f"/data/digits/{d.target[i]}/{i:04d}.png" for i in range(len(d.data))]
    return d.data.astype(np.float32), keys, paths, d.target.astype(str)


def _store(path, digits, rows=slice(None)):
    X, keys, paths, labels = digits
    idx = np.arange(len(X))[rows]
    with FeatureStore(path, mode="a") as s:
        s.add_rows(SPEC, [keys[i] for i in idx], X[idx], [paths[i] for i in idx],
                   [labels[i] for i in idx], dtype="float32")
    return FeatureStore(path)


def _brute(X, Q, k, self_excluded=False):
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    S = Qn @ Xn.T
    if self_excluded:
        np.fill_diagonal(S, -np.inf)
    return np.argsort(-S, axis=1, kind="stable")[:, :k], np.sort(S, axis=1)[:, ::-1][:, :k]


def test_exact_search_in_blocks_equals_brute_force(tmp_path, digits):
    X = digits[0]
    store = _store(tmp_path / "s.h5", digits)
    queries = X[::97] + np.random.default_rng(0).normal(0, 0.5, X[::97].shape).astype(np.float32)
    got = exact_search(store, SPEC.fingerprint(), queries, 7, block_rows=128)  # 15 blocks
    rows, sims = _brute(X, queries, 7)
    np.testing.assert_allclose(got.similarity, sims, atol=1e-5)
    assert (got.rows == rows).mean() > 0.99  # ties of equal similarity may swap
    np.testing.assert_array_equal(got.keys[:, 0], [digits[1][i] for i in got.rows[:, 0]])
    near = self_neighbours(store, SPEC.fingerprint(), 5, block_rows=300)
    rows, sims = _brute(X, X, 5, self_excluded=True)
    np.testing.assert_allclose(near.similarity, sims, atol=1e-5)
    assert (near.rows != np.arange(len(X))[:, None]).all()  # never itself


def test_sharded_store_is_searched_through_its_virtual_file(tmp_path, digits):
    from featurebank.extractor.store._shards import ShardedStore, write_shard

    X, keys, paths, labels = digits
    path = tmp_path / "sharded.h5"
    with ShardedStore(path) as sharded:
        for name, idx in (("a", np.arange(0, 900)), ("b", np.arange(900, len(X)))):
            write_shard(sharded.dir, f"{sharded.new_run_id()}-{name}.h5",
                        {SPEC: ([keys[i] for i in idx], X[idx])},
                        [(keys[i], paths[i], labels[i]) for i in idx], [], dtype="float32")
        sharded.rebuild()
    shard_files = sorted(p.name for p in sharded.dir.iterdir())
    search = StoreSearch(path, options=SearchOptions(top=3, block_rows=200, index="exact"))
    found = search.matches(X[[5, 1500]])
    assert [m[0].path for m in found] == [paths[5], paths[1500]]  # both shards answer
    assert found[0][0].similarity == pytest.approx(1.0, abs=1e-6)
    assert sorted(p.name for p in sharded.dir.iterdir()) == shard_files  # nothing copied


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_index_recall_and_lazy_extension(tmp_path, digits, kind):
    X = digits[0]
    store = _store(tmp_path / "s.h5", digits, slice(0, 1500))
    index = NeighbourIndex(store, SPEC.fingerprint(), kind=kind, block_rows=256)
    assert index.update() == 1500 and index.path.is_file()
    _store(tmp_path / "s.h5", digits, slice(1500, None))  # the store grows
    assert NeighbourIndex(store, SPEC.fingerprint(), kind=kind).load()  # persisted
    assert index.update() == len(X) - 1500  # only the new rows are added
    assert index.update() == 0
    found = index.search(X[::5], 10)
    exact = exact_search(store, SPEC.fingerprint(), X[::5], 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.rows, exact.rows, strict=True)])
    assert recall >= (0.95 if kind == "hnsw" else 0.6)
    assert (found.rows[:, 0] >= 1500).any()  # the added rows are found
    np.testing.assert_array_equal(found.keys[:, 0], [digits[1][i] for i in found.rows[:, 0]])


def test_index_of_another_fingerprint_is_refused(tmp_path, digits):
    store = _store(tmp_path / "s.h5", digits)
    built = NeighbourIndex(store, SPEC.fingerprint(), kind="hnsw")
    built.update()
    # the store's set embedded again with other pooling: a new fingerprint
    other = FeatureSpec(SPEC.model, "pixels", "avg").fingerprint()
    with pytest.raises(IndexMismatchError, match=f"built for feature set {SPEC.fingerprint()}"):
        NeighbourIndex(store, other, kind="hnsw").load(built.path)
    moved = built.path.with_name(f"{other}.hnsw.faiss")  # an index renamed to pass for another set
    built.path.rename(moved)
    with pytest.raises(IndexMismatchError, match="delete it"):
        NeighbourIndex(store, other, kind="hnsw").load()


_INDEXER = """
import sys, logging
from featurebank.extractor import NeighbourIndex
from featurebank.extractor.store import FeatureStore
store = FeatureStore(sys.argv[1])
def progress(done, total):
    print(done, flush=True)
NeighbourIndex(store, sys.argv[2], kind="hnsw", block_rows=64).update(progress)
"""


def test_a_kill_while_indexing_leaves_store_and_old_index_usable(tmp_path, digits):
    X = digits[0]
    store = _store(tmp_path / "s.h5", digits, slice(0, 600))
    old = NeighbourIndex(store, SPEC.fingerprint(), kind="hnsw")
    old.update()
    before = old.path.read_bytes()
    big = np.tile(X, (4, 1)) + np.random.default_rng(1).normal(0, 0.3, (4 * len(X), 64)).astype(np.float32)
    with FeatureStore(tmp_path / "s.h5", mode="a") as s:  # 7k more rows to index
        s.add_rows(SPEC, [f"{i:064x}" for i in range(10_000, 10_000 + len(big))], big,
                   [f"/data/more/{i}.png" for i in range(len(big))], dtype="float32")
    proc = subprocess.Popen([sys.executable, "-c", _INDEXER, str(tmp_path / "s.h5"), SPEC.fingerprint()],
                            stdout=subprocess.PIPE, text=True)
    first = proc.stdout.readline()  # it is adding rows now
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.strip().isdigit()
    assert old.path.read_bytes() == before  # the old index is whole and untouched
    reread = NeighbourIndex(FeatureStore(tmp_path / "s.h5"), SPEC.fingerprint(), kind="hnsw")
    assert reread.load() and reread.rows == 600
    assert reread.search(X[:3], 1).rows[:, 0].tolist() == [0, 1, 2]
    assert FeatureStore(tmp_path / "s.h5").read().X.shape == (600 + len(big), 64)
    # the lock died with the process: it is free at once, and the next update goes through
    import filelock

    with filelock.FileLock(reread.path.with_name(f"{SPEC.fingerprint()}.lock"), timeout=0):
        pass  # would raise filelock.Timeout if the killed builder still held it
    assert reread.update() == len(big)


@pytest.fixture(scope="module")
def photo_store(tmp_path_factory, lite0_onnx, photo_dir):
    from featurebank import embed_collection

    store = tmp_path_factory.mktemp("photo-store") / "photos.h5"
    embed_collection([str(photo_dir)], store, lite0_onnx, layers=["head"])
    return store


@pytest.mark.slow  # embeds photos with Lite0 and starts a process
def test_neighbors_command_finds_the_stored_photo(tmp_path, lite0_onnx, photo_dir, photo_store):
    store = photo_store
    query = next(photo_dir.glob("*/chelsea.jpg"))
    out = subprocess.run([sys.executable, "-m", "featurebank", "neighbors", str(query), "--store",
                          str(store), "--top", "3", "--json", "--model", str(lite0_onnx)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["error"] is None and len(answer["neighbors"]) == 3
    best = answer["neighbors"][0]
    assert best["path"] == str(query) and best["label"] == "animal"
    assert best["similarity"] > 0.999 > answer["neighbors"][1]["similarity"]
    bad = subprocess.run([sys.executable, "-m", "featurebank", "neighbors", str(query), "--store",
                          str(tmp_path / "absent.h5")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "does not exist" in bad.stderr


def test_search_options_are_checked():
    with pytest.raises(FeaturebankError, match="top"):
        SearchOptions(top=0)
    assert SearchOptions().method(1000, 1280) == "exact"
    assert SearchOptions(index_above=10).method(1_000_000, 1280) == "ivfpq"
    assert SearchOptions(index_above=10).method(100_000, 192) == "hnsw"


@pytest.mark.slow  # embeds photos with Lite0 and starts the service
def test_neighbors_route_answers_from_the_served_store(lite0_onnx, photo_dir, photo_store):
    pytest.importorskip("fastapi", reason="the service extra")
    from fastapi.testclient import TestClient

    from featurebank.service import create_app
    from featurebank.spec import FeatureOptions

    query = next(photo_dir.glob("*/coffee.jpg"))
    body, jpeg = query.read_bytes(), {"content-type": "image/jpeg"}
    with TestClient(create_app(FeatureOptions(model=str(lite0_onnx)), store=photo_store)) as c:
        r = c.post("/v1/neighbors?top=2", content=body, headers=jpeg)
        assert r.status_code == 200, r.text
        found = r.json()
        assert found["layer"] == "head" and len(found["neighbors"][0]) == 2
        assert found["neighbors"][0][0]["path"] == str(query)
        assert found["neighbors"][0][0]["similarity"] > 0.999
        assert c.post("/v1/neighbors?top=0", content=body, headers=jpeg).status_code == 422
        bad_layer = c.post("/v1/neighbors?layer=blocks.3", content=body, headers=jpeg)
        assert bad_layer.status_code == 422 and "not served" in bad_layer.json()["detail"]
        assert c.post("/v1/neighbors", content=b"not an image", headers=jpeg).status_code == 422
    with TestClient(create_app(FeatureOptions(model=str(lite0_onnx)))) as c:  # no store
        r = c.post("/v1/neighbors", content=body, headers=jpeg)
        assert r.status_code == 409 and "--store" in r.json()["detail"]
