"""Reading cost of each input kind (issue 25): list and read the same real photos as a folder,
webdataset tar shards, a parquet file with image bytes, and the same shards and parquet file
behind an S3 endpoint (moto's server on 127.0.0.1, in this process: a loopback figure, not a
network one). No decoding: these are the bytes-in figures of a run.

    python -m benchmarks.sources_read [--images 1000] [--shard-size 250] [--repeat 3]

For each kind: the time to collect (list) the inputs, and to read every item's bytes
(:func:`featurebank.extractor.sources.iter_payloads`, plain files read one after the other
here) -- images/s and MB/s, median of ``--repeat`` runs. Writes
``benchmarks/results/sources_read.json``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks._common import make_photos, spread, write_result


def _build(root: Path, n: int, shard_size: int) -> dict[str, list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests._collections import write_shard

    files = make_photos(root / "folder", n)
    images = [(f"{i:05d}", p.parent.name, p.read_bytes()) for i, p in enumerate(files)]
    shards = []
    for s in range(0, n, shard_size):
        shards.append(str(write_shard(root / f"shard-{s // shard_size:04d}.tar",
                                      [(k, lab, d) for k, lab, d in images[s:s + shard_size]])))
    pq.write_table(pa.table({"image": [{"bytes": d, "path": k} for k, _, d in images],
                             "label": [lab for _, lab, _ in images]}),
                   root / "images.parquet", row_group_size=100)
    return {"folder": [str(root / "folder")], "tar": shards,
            "parquet": [str(root / "images.parquet")]}


def _time(inputs: list[str], repeat: int) -> dict:
    from featurebank.extractor import collect
    from featurebank.extractor.sources import iter_payloads, open_source

    listing, reading, nbytes, count = [], [], 0, 0
    for _ in range(repeat):
        started = time.perf_counter()
        items = collect(inputs)
        listing.append(time.perf_counter() - started)
        started = time.perf_counter()
        nbytes = count = 0
        for item, data in iter_payloads(items):
            data = open_source(item.path) if data is None else data
            nbytes += len(data)
            count += 1
        reading.append(time.perf_counter() - started)
    read_s = sorted(reading)[len(reading) // 2]
    return {"images": count, "megabytes": round(nbytes / 1e6, 2), "list_s": spread(listing),
            "read_s": spread(reading), "images_per_s": round(count / read_s, 1),
            "mb_per_s": round(nbytes / 1e6 / read_s, 1)}


def _s3(paths: dict[str, list[str]]):
    """Start moto's S3 server, upload the shards and the parquet file; return the S3 inputs."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise

    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ["AWS_ENDPOINT_URL"] = f"http://{host}:{port}"
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir("bench")
    for p in [*paths["tar"], *paths["parquet"]]:
        fs.put(p, f"bench/{Path(p).name}")
    inputs = {"s3_tar": ["s3://bench/shard-*.tar"], "s3_parquet": ["s3://bench/images.parquet"]}
    return server, inputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--shard-size", type=int, default=250)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-s3", action="store_true", help="skip the moto S3 figures")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = _build(Path(tmp), args.images, args.shard_size)
        for kind, inputs in paths.items():
            results[kind] = _time(inputs, args.repeat)
            print(kind, results[kind])
        if not args.no_s3:
            server, s3_inputs = _s3(paths)
            try:
                for kind, inputs in s3_inputs.items():
                    results[kind] = _time(inputs, args.repeat)
                    print(kind, results[kind])
            finally:
                server.stop()
    write_result("sources_read", {"images": args.images, "shard_size": args.shard_size,
                                  "repeat": args.repeat, "results": results})


if __name__ == "__main__":
    main()
