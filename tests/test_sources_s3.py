"""Inputs on a real S3 endpoint (moto's server on 127.0.0.1, started by the tests): shards,
parquet files, prefixes and lists embed with the local engine to the folder's vectors; bad
endpoints, credentials, buckets and objects are refused before any file is created; broken and
vanishing objects are recorded while the run goes on."""

from __future__ import annotations

import json
import socket

import pytest

from featurebank.cli import main
from featurebank.errors import FeaturebankError
from featurebank.extractor import embed_collection
from featurebank.extractor.store._store import FeatureStore
from tests._collections import (
    assert_same_as_folder,
    reference_fixtures,
    write_folder,
    write_hf_parquet,
    write_shard,
)

pytestmark = pytest.mark.slow


images, extractor, reference = reference_fixtures()


def test_s3_inputs_embed_to_the_folders_vectors(tmp_path, s3_bucket, images, extractor,
                                                 reference, capsys):
    fs, bucket = s3_bucket
    write_folder(tmp_path / "images", images)
    write_shard(tmp_path / "shard-0.tar", images[:4])
    write_shard(tmp_path / "shard-1.tar", images[4:], "json")
    write_hf_parquet(tmp_path / "hf.parquet", images)
    fs.put(str(tmp_path / "images"), f"{bucket}/images", recursive=True)
    for name in ("shard-0.tar", "shard-1.tar", "hf.parquet"):
        fs.put(str(tmp_path / name), f"{bucket}/data/{name}")
    keys = sorted(fs.find(f"{bucket}/images"))
    fs.pipe(f"{bucket}/lists/rel.csv", ("path,label\n" + "".join(
        f"../{k.split('/', 1)[1]},{k.split('/')[-2]}\n" for k in keys)).encode())
    fs.pipe(f"{bucket}/lists/urls.jsonl", "".join(
        json.dumps({"path": f"s3://{k}", "label": k.split("/")[-2]}) + "\n"
        for k in keys).encode())
    kw = dict(extractor=extractor, dtype="float32", progress=False, batch_size=4)
    cases = {"prefix": [f"s3://{bucket}/images"],
             "shards": [f"s3://{bucket}/data/shard-*.tar"],
             "parquet": [f"s3://{bucket}/data/hf.parquet"],
             "csv": [f"s3://{bucket}/lists/rel.csv"],
             "jsonl": [f"s3://{bucket}/lists/urls.jsonl"]}
    for name, inputs in cases.items():
        s = embed_collection(inputs, tmp_path / f"{name}.h5", **kw)
        assert (s.embedded, s.failed) == (len(images), 0), name
        f = assert_same_as_folder(tmp_path / f"{name}.h5", reference)
        assert all(p.startswith(f"s3://{bucket}/") for p in f.paths), name
    assert FeatureStore(tmp_path / "shards.h5").read().paths[0] == \
        f"s3://{bucket}/data/shard-0.tar#{images[0][0]}.png"
    assert FeatureStore(tmp_path / "shards.h5").roots() == [f"s3://{bucket}/data"]
    # a re-run reads the shards again but embeds nothing: resume works on content keys
    s = embed_collection(cases["shards"], tmp_path / "shards.h5", **kw)
    assert (s.cached, s.embedded) == (len(images), 0)
    # stored paths are inputs too (fine-tuning re-embeds a store's paths mirrored)
    stored = FeatureStore(tmp_path / "parquet.h5").read().paths.tolist()
    s = embed_collection(stored[::-1], tmp_path / "again.h5", **kw)
    assert (s.embedded, s.failed) == (len(images), 0)
    # and the command line takes the same URLs
    assert main(["embed", f"s3://{bucket}/data/hf.parquet", "--store", str(tmp_path / "c.h5"),
                 "--no-progress", "--json", "--threads", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["embedded"] == len(images)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_s3_refusals_come_before_any_file(tmp_path, s3_bucket, images, extractor, monkeypatch):
    import s3fs

    fs, bucket = s3_bucket
    write_shard(tmp_path / "s.tar", images[:2])
    fs.put(str(tmp_path / "s.tar"), f"{bucket}/s.tar")
    store = tmp_path / "out" / "s.h5"
    store.parent.mkdir()

    def refused(url: str, match: str) -> None:
        with pytest.raises(FeaturebankError, match=match):
            embed_collection([url], store, extractor=extractor, progress=False)
        assert list(store.parent.iterdir()) == []

    refused(f"s3://no-such-bucket-{bucket}/s.tar", "bucket 'no-such-bucket-.*' does not exist")
    refused(f"s3://{bucket}/missing.tar", f"input s3://{bucket}/missing.tar does not exist")
    refused(f"s3://{bucket}/missing/*.tar", "matches no object")
    refused(f"s3://{bucket}/gone.tar#00001.png", f"input s3://{bucket}/gone.tar does not exist")
    with monkeypatch.context() as m:  # no credentials anywhere
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            m.delenv(var)
        m.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        m.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        s3fs.S3FileSystem.clear_instance_cache()
        refused(f"s3://{bucket}/s.tar", "access refused: check the credentials")
    with monkeypatch.context() as m:  # nothing listens there
        m.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
        m.setenv("AWS_MAX_ATTEMPTS", "1")
        s3fs.S3FileSystem.clear_instance_cache()
        refused(f"s3://{bucket}/s.tar", "endpoint unreachable")
    s3fs.S3FileSystem.clear_instance_cache()


def test_s3_broken_and_vanishing_objects_are_recorded(tmp_path, s3_bucket, images, extractor,
                                                      monkeypatch):
    import featurebank.extractor.engines._dispatch as dispatch

    fs, bucket = s3_bucket
    bad = [("bad00", "zero", b"\x89PNG\r\n\x1a\n cut")]
    write_shard(tmp_path / "ok.tar", images[:3] + bad)
    write_shard(tmp_path / "gone.tar", images[3:6])
    write_folder(tmp_path / "images", images[6:])
    for name in ("ok.tar", "gone.tar"):
        fs.put(str(tmp_path / name), f"{bucket}/{name}")
    fs.put(str(tmp_path / "images"), f"{bucket}/images", recursive=True)
    vanishing = sorted(fs.find(f"{bucket}/images"))[0]
    real_collect = dispatch.collect

    def collect_then_delete(*args, **kwargs):  # the objects go after listing, before reading
        items = real_collect(*args, **kwargs)
        fs.rm([f"{bucket}/gone.tar", vanishing])
        return items

    monkeypatch.setattr(dispatch, "collect", collect_then_delete)
    store = tmp_path / "s.h5"
    s = embed_collection([f"s3://{bucket}/ok.tar", f"s3://{bucket}/gone.tar",
                          f"s3://{bucket}/images"], store, extractor=extractor, progress=False,
                         batch_size=4)
    failures = dict(FeatureStore(store).failures())
    assert failures[f"s3://{bucket}/ok.tar#bad00.png"] == "not an image (unrecognised format)"
    assert failures[f"s3://{vanishing}"].startswith("unreadable (not found")
    gone = {p: r for p, r in failures.items() if p.startswith(f"s3://{bucket}/gone.tar#")}
    assert len(gone) == 3 and all(r.startswith("shard unreadable (not found") for r in gone.values())
    assert (s.failed, s.embedded) == (5, 3 + 2)
    assert len(FeatureStore(store).read().keys) == 5
