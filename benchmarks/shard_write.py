"""Cost of writing one shard of the sharded store: seconds, rows/s and bytes per row.

Usage::

    python -m benchmarks.shard_write [--rows 512 818 8192] [--dim 1280] [--total 16384]

Writes ``benchmarks/results/shard_write.json``. Shards of synthetic rows (a content key, an
``s3://`` path, a label and a float16 vector of ``--dim``: EfficientNet-Lite0's ``head``) are
written with :func:`featurebank.extractor.store._shards.write_shard`, as the Ray engine's driver
writes them (HDF5 file, fsync, key index, rename), ``--total`` rows per shard size. The file
and index sizes show the padding of HDF5 chunks (409 rows of X at 1280 float16 values).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import RESULTS, load_average, spread, write_result
from benchmarks.ray_transport import _spec, _synth
from featurebank.extractor.store._shard_index import index_path
from featurebank.extractor.store._shards import write_shard


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[512, 818, 8192])
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--total", type=int, default=16384, help="rows written per shard size")
    ap.add_argument("--out", type=Path, default=RESULTS / "shard_write.json")
    args = ap.parse_args(argv)
    load_before, runs = load_average(), []
    for rows in args.rows:
        folder = Path(tempfile.mkdtemp(prefix="shard-write-"))
        try:
            times, size, isize, n = [], 0, 0, max(2, args.total // rows)
            for s in range(n):
                r = _synth({"id": np.arange(s * rows, (s + 1) * rows)}, args.dim)
                keys = list(r["key"])
                images = [(k, p.decode(), lab) for k, p, lab in zip(keys, r["path"], r["label"], strict=True)]
                t = time.perf_counter()
                shard = write_shard(folder, f"shard-1-{s:06d}.h5", {_spec(): (keys, r["f0"])}, images, [])
                times.append(time.perf_counter() - t)
                size += shard.stat().st_size
                isize += index_path(shard).stat().st_size
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        med = float(np.median(times))
        runs.append({"rows_per_shard": rows, "shards": n, "write_s": spread(times),
                     "rows_per_s_median": round(rows / med), "payload_bytes_per_row": 2 * args.dim,
                     "file_bytes_per_row": round(size / (n * rows)),
                     "index_bytes_per_row": round(isize / (n * rows))})
        print(runs[-1], flush=True)
    result = {"benchmark": "shard_write", "dim": args.dim, "dtype": "float16",
              "load_average_before": load_before, "load_average_after": load_average(), "runs": runs}
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
