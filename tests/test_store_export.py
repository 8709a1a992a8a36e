"""``featurebank store export``: parquet (read back with pyarrow and pandas), npz and npy, the
format by the output's extension, streamed in bounded memory."""

from __future__ import annotations

import hashlib
import json
import tracemalloc

import numpy as np
import pytest

from featurebank.cli import main
from featurebank.extractor.store._store import FeatureStore
from featurebank.spec import FeatureSpec, ModelSpec

pa = pytest.importorskip("pyarrow", reason="parquet export needs the io extra")
pq = pytest.importorskip("pyarrow.parquet")


def _spec(layer: str = "head", pool: str = "avg") -> FeatureSpec:
    return FeatureSpec(ModelSpec("efficientnet_lite0", "ab" * 32), layer, pool)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Digits as 64-d vectors (float32), paths in every stored form, and a set of 4x4x4 maps."""
    from sklearn.datasets import load_digits

    d = load_digits()
    n = 50
    keys = [hashlib.sha256(img.tobytes()).hexdigest() for img in d.images[:n]]
    forms = ["/data/{i}.png", "s3://b/shard-0.tar#{i:05d}.png", "/d/train.parquet#row={i}",
             "https://h/\u00e9t\u00e9/{i}.jpg"]
    paths = [forms[i % 4].format(i=i) for i in range(n)]
    path = tmp_path_factory.mktemp("export") / "s.h5"
    with FeatureStore(path, mode="a") as s:
        s.add_rows(_spec(), keys, d.data[:n].astype(np.float32), paths,
                   [str(t) for t in d.target[:n]], dtype="float32")
        s.add_rows(_spec("blocks.3", "none"), keys[:10],
                   d.data[:10].reshape(10, 4, 4, 4).astype(np.float32), paths[:10])
    return path


def test_parquet_reads_back_with_pyarrow_and_pandas(tmp_path, store, capsys):
    out = tmp_path / "head.parquet"
    assert main(["store", "export", str(store), "-o", str(out), "--layer", "head"]) == 0
    assert out.read_bytes()[:4] == b"PAR1"  # not an npz under a parquet name (issue 25)
    feats = FeatureStore(store).read("head")
    table = pq.read_table(out)
    assert table.schema.field("vector").type == pa.list_(pa.float32(), 64)
    assert table.column_names == ["key", "path", "label", "vector"]
    meta = table.schema.metadata
    assert FeatureSpec.from_json(meta[b"featurebank.spec"].decode()) == feats.spec
    assert meta[b"featurebank.fingerprint"].decode() == feats.spec.fingerprint()
    assert json.loads(meta[b"featurebank.row_shape"]) == [64]
    np.testing.assert_array_equal(np.stack(table.column("vector").to_numpy(zero_copy_only=False)),
                                  feats.X)
    assert table.column("key").to_pylist() == feats.keys.tolist()
    assert table.column("path").to_pylist() == feats.paths.tolist()
    import pandas as pd

    df = pd.read_parquet(out)
    assert list(df.columns) == ["key", "path", "label", "vector"] and len(df) == 50
    assert df["label"].tolist() == feats.y.tolist()
    np.testing.assert_array_equal(np.stack(df["vector"].to_numpy()), feats.X)
    assert df["path"][1] == "s3://b/shard-0.tar#00001.png"


def test_npz_npy_and_chunks_give_the_same_rows(tmp_path, store):
    s = FeatureStore(store)
    feats = s.read("head")
    for chunk in (7, None):  # 7 rows a chunk: the last chunk is short
        s.export(tmp_path / "a.npz", "head", chunk_rows=chunk)
        s.export(tmp_path / "a.npy", "head", chunk_rows=chunk)
        s.export(tmp_path / "a.parquet", "head", chunk_rows=chunk)
        got = np.load(tmp_path / "a.npz")
        np.testing.assert_array_equal(got["features"], feats.X)
        for name, arr in (("keys", feats.keys), ("paths", feats.paths), ("labels", feats.y)):
            np.testing.assert_array_equal(got[name], arr)
        assert FeatureSpec.from_json(str(got["spec"])) == feats.spec
        np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), feats.X)
        assert pq.read_table(tmp_path / "a.parquet").num_rows == 50
    maps = tmp_path / "maps.parquet"
    s.export(maps, "blocks.3")
    table = pq.read_table(maps)
    assert json.loads(table.schema.metadata[b"featurebank.row_shape"]) == [4, 4, 4]
    np.testing.assert_array_equal(
        np.stack(table.column("vector").to_numpy(zero_copy_only=False)).reshape(10, 4, 4, 4),
        s.read_maps("blocks.3"))


def test_an_extension_it_cannot_write_is_refused(tmp_path, store, capsys):
    for name in ("x.csv", "x"):
        assert main(["store", "export", str(store), "-o", str(tmp_path / name), "--layer",
                     "head"]) == 1
        assert "the format follows the extension, one of .parquet, .npz, .npy" in \
            capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    # a folder that does not exist (issue 31: a traceback), or a folder as the output
    assert main(["store", "export", str(store), "-o", str(tmp_path / "missing" / "x.npz")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write export" in err and "missing does not exist" in err
    assert main(["store", "export", str(store), "-o", str(tmp_path / "d.npz"), "--layer", "head"]) == 0
    (tmp_path / "d.npz").unlink()
    (tmp_path / "d.npz").mkdir()
    assert main(["store", "export", str(store), "-o", str(tmp_path / "d.npz"), "--layer", "head"]) == 1
    assert "is a folder; give a file name ending in .npz" in capsys.readouterr().err


def test_export_streams_in_bounded_memory(tmp_path, store):
    # 41 MB of float32 vectors; keys, paths and labels (held whole) are about 1 kB a row
    rows, dim = 2_500, 4096
    rng = np.random.default_rng(0)
    path = tmp_path / "big.h5"
    with FeatureStore(path, mode="a") as s:
        for start in range(0, rows, 500):
            keys = [f"{i:064x}" for i in range(start, start + 500)]
            s.add_rows(_spec(), keys, rng.standard_normal((500, dim), np.float32),
                       [f"/data/{i}.png" for i in range(start, start + 500)], dtype="float16")
    total = rows * dim * 4
    for fmt in ("npy", "npz", "parquet"):
        # warm up first: the lazy imports of the first export would be counted as its memory
        FeatureStore(store).export(tmp_path / f"small.{fmt}", "head")
        tracemalloc.start()
        FeatureStore(path).export(tmp_path / f"big.{fmt}", chunk_rows=125)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < total / 4, (fmt, peak, total)
    X = np.load(tmp_path / "big.npy", mmap_mode="r")
    assert X.shape == (rows, dim)
    np.testing.assert_array_equal(X[-3:], FeatureStore(path).rows(_spec().fingerprint(),
                                                                   [rows - 3, rows - 2, rows - 1]))
