"""Decode time per image: featurebank's decode (JPEG draft) vs a full decode, JPEG and PNG.

Usage::

    python -m benchmarks.decode_times [--repeat 30]

Real photos (scikit-learn's ``china`` 427x640, scikit-image's ``astronaut`` 512x512 and
``retina`` 1411x1411), encoded in memory as JPEG (quality 92) and PNG, decoded to the default
spec's 224x224 uint8 pixels on one thread. ``draft`` is :func:`featurebank.extractor.decode`
(large JPEGs decoded at 1/2-1/8 scale by libjpeg, never below 2x the resize target); ``full``
decodes every pixel and then resizes, as featurebank does for every other format. Each figure
is min / median / max over ``--repeat`` decodes; the load average says how busy the machine was.
Writes ``benchmarks/results/decode_times.json``.
"""

from __future__ import annotations

import argparse
import io
import os
import time

import numpy as np

from benchmarks._common import load_average, spread, write_result

os.environ.setdefault("OMP_NUM_THREADS", "1")


def photos() -> dict[str, np.ndarray]:
    from skimage import data
    from sklearn.datasets import load_sample_images

    china = load_sample_images().images[0]
    return {"china_427x640": china, "astronaut_512x512": data.astronaut(),
            "retina_1411x1411": data.retina()}


def encode(arr: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


def timed_ms(fn, repeat: int) -> dict:
    fn()  # warm: imports, Pillow plugin registry
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return spread(times, 1)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--out", default="decode_times")
    args = ap.parse_args(argv)

    from PIL import Image

    import featurebank.extractor._preprocess as P
    from featurebank.extractor import decode
    from featurebank.spec import Preprocessing

    pre = Preprocessing()
    load_before = load_average()
    rows = []
    for name, arr in photos().items():
        for fmt in ("JPEG", "PNG"):
            raw = encode(arr, fmt)
            draft = timed_ms(lambda raw=raw: decode(raw, pre), args.repeat)
            full = timed_ms(lambda raw=raw: P.resize_crop(P.to_rgb(Image.open(io.BytesIO(raw))), pre),
                            args.repeat)
            rows.append({"image": name, "format": fmt.lower(), "bytes": len(raw),
                         "decode_ms": draft, "full_decode_ms": full,
                         "speedup_median": round(full["median"] / draft["median"], 2)})
            print(f"{name:20s} {fmt:5s} decode {draft['median']:6.1f} ms (min {draft['min']}, "
                  f"max {draft['max']})   full {full['median']:6.1f} ms   "
                  f"x{rows[-1]['speedup_median']}", flush=True)
    result = {"benchmark": "decode_times", "spec": "default (resize 256, crop 224)",
              "threads": 1, "repeat": args.repeat, "load_average_before": load_before,
              "load_average_after": load_average(), "rows": rows}
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
