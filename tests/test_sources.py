"""Inputs beyond folders (issue 25): list files, webdataset tar shards and parquet files with
image bytes embed to the same vectors as the same images in a folder, row for row, and every
stored path reads back the bytes its content key was made from."""

from __future__ import annotations

import hashlib
import json
import tarfile

import pytest

from featurebank.cli import main
from featurebank.errors import FeaturebankError, OptionError
from featurebank.extractor import collect, embed_collection
from featurebank.extractor.sources import (
    SourceOptions,
    open_source,
    parse_source,
    read_all,
)
from featurebank.extractor.store._store import FORMAT_VERSION, FeatureStore
from tests._collections import (
    assert_same_as_folder,
    reference_fixtures,
    write_bytes_parquet,
    write_folder,
    write_hf_parquet,
    write_shard,
)

pytest.importorskip("pyarrow", reason="parquet inputs need the io extra")


images, extractor, reference = reference_fixtures()


def test_each_input_kind_embeds_to_the_folders_vectors(tmp_path, images, extractor, reference):
    folder = write_folder(tmp_path / "images", images)
    shards = [write_shard(tmp_path / "shard-0.tar", images[:5], "cls"),
              write_shard(tmp_path / "shard-1.tar", images[5:], "json")]
    hf = write_hf_parquet(tmp_path / "hf.parquet", images)
    raw = write_bytes_parquet(tmp_path / "raw.parquet", images)
    files = sorted(folder.rglob("*.png"))
    (tmp_path / "plain.csv").write_text("".join(f"images/{p.parent.name}/{p.name},{p.parent.name}\n"
                                                for p in files))
    (tmp_path / "header.csv").write_text("split,label,path\n" + "".join(
        f"{'train' if i % 3 else 'test'},{p.parent.name},{p}\n" for i, p in enumerate(files)))
    (tmp_path / "list.jsonl").write_text("".join(
        json.dumps({"path": str(p), "label": p.parent.name}) + "\n" for p in files))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"path": [str(p) for p in files],
                             "label": [p.parent.name for p in files]}), tmp_path / "list.parquet")
    kw = dict(extractor=extractor, dtype="float32", progress=False, batch_size=4)
    cases = {"shards": ([str(s) for s in shards], {}),
             "glob": ([str(tmp_path / "shard-*.tar")], {}),
             "hf": ([f"file://{hf}"], {}),
             "raw": ([str(raw)], {"image_column": "jpg"}),
             "plain_csv": ([str(tmp_path / "plain.csv")], {}),
             "jsonl": ([str(tmp_path / "list.jsonl")], {}),
             "list_parquet": ([str(tmp_path / "list.parquet")], {})}
    for name, (inputs, extra) in cases.items():
        s = embed_collection(inputs, tmp_path / f"{name}.h5", **kw, **extra)
        assert (s.total, s.embedded, s.failed) == (len(images), len(images), 0), name
        f = assert_same_as_folder(tmp_path / f"{name}.h5", reference)
        forms = {parse_source(p).kind for p in f.paths}
        assert forms == {"shards": {"tar"}, "glob": {"tar"}, "hf": {"parquet"},
                         "raw": {"parquet"}}.get(name, {"file"}), name
    assert str(shards[0]) + "#" in FeatureStore(tmp_path / "shards.h5").read().paths[0]
    raw_paths = FeatureStore(tmp_path / "raw.h5").read().paths
    assert all(p.startswith(f"{raw}#row=") and p.endswith("&column=jpg") for p in raw_paths)
    # --split keeps the rows of one split
    s = embed_collection([str(tmp_path / "header.csv")], tmp_path / "train.h5", split="train",
                         **kw)
    assert s.total == sum(1 for i in range(len(files)) if i % 3)
    assert_same_as_folder(tmp_path / "train.h5", reference, expected_rows=s.total)


def test_containers_given_to_embed_are_never_taken_for_images(tmp_path, images, lite0_onnx,
                                                              capsys):
    a = write_shard(tmp_path / "a.tar", images[:4])
    b = write_shard(tmp_path / "b.tar", images[4:])
    store = tmp_path / "s.h5"
    assert main(["embed", str(a), str(b), "--store", str(store), "--no-progress", "--json",
                 "--threads", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["embedded"], summary["failed"]) == (len(images), 0)
    assert summary["labels"] == {"zero": 3, "one": 3, "two": 3}
    # rows of a parquet file by split, image bytes in a column named on the command line
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"png": [d for _, _, d in images], "label": [lab for _, lab, _ in images],
                             "split": ["val" if i % 2 else "train" for i in range(len(images))]}),
                   tmp_path / "t.parquet")
    assert main(["embed", str(tmp_path / "t.parquet"), "--store", str(tmp_path / "val.h5"),
                 "--split", "val", "--image-column", "png", "--no-progress", "--json",
                 "--threads", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["embedded"] == len(images) // 2
    assert FeatureStore(tmp_path / "val.h5").read().paths[0] == f"{tmp_path / 't.parquet'}#row=1"
    # a file named like a container that is not one is refused, before any store is created
    (tmp_path / "fake.tar").write_bytes(b"\x89PNG not a tar at all" * 40)
    (tmp_path / "fake.parquet").write_bytes(b"PAR1 nope")
    for fake, why in (("fake.tar", "not a readable tar shard"),
                      ("fake.parquet", "not a readable parquet file")):
        assert main(["embed", str(tmp_path / fake), "--store", str(tmp_path / "new.h5"),
                     "--no-progress"]) == 1
        assert why in capsys.readouterr().err
        assert not (tmp_path / "new.h5").exists()


def test_broken_members_rows_and_shards_are_recorded_and_the_run_goes_on(tmp_path, images,
                                                                         extractor):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = [("bad00", "zero", b"\xff\xd8 not really a jpeg")]
    shard = write_shard(tmp_path / "s.tar", images[:3] + bad)
    cut = write_shard(tmp_path / "cut.tar", images[3:6])
    with tarfile.open(cut) as tf:  # cut inside the second image's bytes
        second = [m for m in tf.getmembers() if m.name.endswith(".png")][1]
    cut.write_bytes(cut.read_bytes()[: second.offset_data + 20])
    pq.write_table(pa.table({"image": [{"bytes": images[6][2], "path": "a.png"},
                                       {"bytes": None, "path": "gone.png"}],
                             "label": ["two", "two"]}), tmp_path / "p.parquet")
    store = tmp_path / "s.h5"
    s = embed_collection([str(shard), str(cut), str(tmp_path / "p.parquet")], store,
                         extractor=extractor, progress=False, batch_size=4)
    failures = dict(FeatureStore(store).failures())
    assert failures[f"{shard}#bad00.png"].startswith("not an image")
    assert failures[f"{tmp_path / 'p.parquet'}#row=1"] == \
        "row holds no image bytes (only a path: gone.png)"
    # the member cut short is recorded, and the shard's break; the member before is embedded
    assert failures[f"{cut}#{images[4][0]}.png"].startswith("shard unreadable")
    assert failures[f"{cut}#(rest of shard)"].startswith("shard broken after 2 image members")
    embedded = FeatureStore(store).read()
    assert s.failed == len(failures) == 4
    assert s.embedded == len(embedded.keys) == 3 + 1 + 1
    for path, key in zip(embedded.paths, embedded.keys, strict=True):
        assert hashlib.sha256(open_source(path)).hexdigest() == key


def test_list_files_headers_split_and_refusals(tmp_path, images):
    folder = write_folder(tmp_path / "images", images[:2])
    a, b = sorted(folder.rglob("*.png"))
    (tmp_path / "h.csv").write_text(f"label,path\nx,{a}\ny,{b}\n")
    assert [(i.path, i.label) for i in collect([str(tmp_path / "h.csv")])] == \
        [(str(a), "x"), (str(b), "y")]
    (tmp_path / "plain.csv").write_text(f"# a comment\n{a},x\n{b}\n")
    assert [i.label for i in collect([str(tmp_path / "plain.csv")])] == ["x", ""]
    with pytest.raises(OptionError, match=r"^split is 'train', but list .*plain.csv \(no "
                                          r"header row.*has no 'split' column"):
        collect([str(tmp_path / "plain.csv")], sources=SourceOptions(split="train"))
    with pytest.raises(OptionError, match=r"^split is 'train': it selects rows.*is a folder"):
        collect([str(folder)], sources=SourceOptions(split="train"))
    write_shard(tmp_path / "s.tar", images[:2])
    (tmp_path / "c.csv").write_text("path\ns.tar\n")
    with pytest.raises(FeaturebankError, match="names a whole container"):
        collect([str(tmp_path / "c.csv")])
    (tmp_path / "m.csv").write_text("path\ns.parquet#17\n")
    with pytest.raises(FeaturebankError, match=r"m.csv row 2: .*is named '.*#row=N'"):
        collect([str(tmp_path / "m.csv")])
    (tmp_path / "bad.jsonl").write_text('{"path": "x.png"}\nnot json\n')
    with pytest.raises(FeaturebankError, match="line 2 is not JSON"):
        collect([str(tmp_path / "bad.jsonl")])
    write_bytes_parquet(tmp_path / "r.parquet", images[:2])
    with pytest.raises(FeaturebankError, match="neither image bytes.*columns"):
        collect([str(tmp_path / "r.parquet")])  # two binary columns, none named
    with pytest.raises(FeaturebankError, match="no image column 'png'"):
        collect([str(tmp_path / "r.parquet")], sources=SourceOptions(image_column="png"))


def test_stored_path_forms_parse_reopen_and_stream_once(tmp_path, images, monkeypatch):
    shard = write_shard(tmp_path / "s.tar", images)
    pq_file = write_hf_parquet(tmp_path / "h.parquet", images, row_group_size=2)
    ref = parse_source(f"{shard}#00001.png")
    assert (ref.kind, ref.container, ref.member) == ("tar", str(shard), "00001.png")
    ref = parse_source("s3://b/x/train.parquet#row=17&column=jpg")
    assert (ref.kind, ref.container, ref.row, ref.column) == ("parquet", "s3://b/x/train.parquet",
                                                              17, "jpg")
    assert str(ref) == "s3://b/x/train.parquet#row=17&column=jpg"
    assert parse_source("https://h/a.tar.gz#k/x.jpg").member == "k/x.jpg"
    odd = tmp_path / "odd.tar#1.png"  # a real file whose name looks like a member
    odd.write_bytes(images[0][2])
    assert parse_source(str(odd)).kind == "file" and open_source(odd) == images[0][2]
    # stored member forms are inputs too (fine-tuning re-embeds a store's paths mirrored)
    paths = [f"{shard}#{k}.png" for k, _, _ in images][::-1] + \
        [f"{pq_file}#row={i}" for i in range(len(images))]
    items = collect(paths)
    assert [i.path for i in items] == paths
    # many members of one container: the container is opened once
    opened = []
    real = tarfile.open
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: opened.append(1) or real(*a, **k))
    got = dict(read_all(paths))
    assert len(opened) == 1
    assert [got[i] for i in range(len(images))] == [d for _, _, d in images][::-1]
    assert [got[len(images) + i] for i in range(len(images))] == [d for _, _, d in images]
    with pytest.raises(FeaturebankError, match="not in the shard"):
        open_source(f"{shard}#nope.png")


def test_a_version_2_store_is_raised_to_3(tmp_path, images):
    import h5py

    store = tmp_path / "s.h5"
    with FeatureStore(store, mode="a") as s:
        s.add_paths(["a" * 64], [str(tmp_path / "x.png")])
    with h5py.File(store, "a") as f:
        f.attrs["format_version"] = 2
    assert FeatureStore(store).format_version == 2  # readers read it as it is
    assert main(["store", "upgrade", str(store)]) == 0
    assert FeatureStore(store).format_version == FORMAT_VERSION == 3
    with h5py.File(store, "a") as f:
        f.attrs["format_version"] = 2
    with FeatureStore(store, mode="a"):  # a writer raises it itself: nothing else changes
        pass
    s = FeatureStore(store)
    assert s.format_version == 3 and s.image_table()["a" * 64][0] == str(tmp_path / "x.png")


def test_without_the_io_extra_urls_and_parquet_name_it(tmp_path, images, monkeypatch):
    import sys

    write_hf_parquet(tmp_path / "h.parquet", images[:2])
    write_shard(tmp_path / "s.tar", images[:2])
    for module in ("fsspec", "fsspec.core", "pyarrow", "pyarrow.parquet"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(FeaturebankError, match=r"needs fsspec: pip install 'featurebank\[io\]'"):
        collect(["s3://bucket/x.tar"])
    with pytest.raises(FeaturebankError, match=r"needs pyarrow: pip install 'featurebank\[io\]'"):
        collect([str(tmp_path / "h.parquet")])
    assert len(collect([str(tmp_path / "s.tar")])) == 2  # local shards need no extra


def test_http_urls_through_fsspec(tmp_path, images, extractor, reference):
    """Shards, parquet files and image files behind plain HTTP (a server on 127.0.0.1)."""
    pytest.importorskip("aiohttp", reason="fsspec's HTTP file system needs aiohttp")
    import functools
    import http.server
    import threading

    serve = tmp_path / "www"
    serve.mkdir()
    write_shard(serve / "s.tar", images)
    write_hf_parquet(serve / "h.parquet", images)
    write_folder(serve / "img", images)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(serve))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        kw = dict(extractor=extractor, dtype="float32", progress=False, batch_size=4)
        for name, url in (("tar", f"{base}/s.tar"), ("pq", f"{base}/h.parquet")):
            s = embed_collection([url], tmp_path / f"{name}.h5", **kw)
            assert (s.embedded, s.failed) == (len(images), 0)
            assert_same_as_folder(tmp_path / f"{name}.h5", reference)
        key, label, data = images[0]
        assert open_source(f"{base}/img/{label}/{key}.png") == data
        with pytest.raises(FeaturebankError, match="does not exist or cannot be reached"):
            collect([f"{base}/nothing.tar"])
    finally:
        server.shutdown()
        server.server_close()
