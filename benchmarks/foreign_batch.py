"""What a foreign graph's batch axis costs: adopt's check, and chunked vs batched embedding.

Graphs exported at a fixed batch of 1 are rewritten to take any batch (checked by a run,
``featurebank.export.plan_batch``); a graph that cannot be rewritten keeps its batch and runs
in chunks inside a ``Scan``. For the classic CNN shapes of ``benchmarks/harness/classic_cnns.py``
(64 px) and the pretrained Lite0 as a converted foreign file (224 px), this measures the time
``adopt`` takes, and images/s of the rewritten graph against the same graph forced to run one
image at a time in chunks, at batch 32 on one thread (best of 3 passes).

    python -m benchmarks.foreign_batch [--images 64]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from benchmarks._common import write_result


def rate(path: Path, layers: list[str], pixels: np.ndarray, repeats: int = 3) -> float:
    """Images per second embedding ``pixels`` at batch 32 (after one warm-up batch), the best
    of ``repeats`` passes: the machine is shared, the best pass is the least disturbed."""
    from featurebank.extractor import Extractor

    ex = Extractor(str(path), layers=layers, device="cpu", threads=1, batch_size=32)
    ex.embed_pixels(pixels[:32])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(pixels), 32):
            ex.embed_pixels(pixels[i:i + 32])
        best = min(best, time.perf_counter() - start)
    return len(pixels) / best


def forced_chunks(adopted: Path, out: Path) -> Path:
    """The adopted file told to run one image at a time (as a graph that keeps batch 1)."""
    from featurebank.spec import META_INPUT

    proto = onnx.load(str(adopted))
    meta = next(p for p in proto.metadata_props if p.key == META_INPUT)
    meta.value = json.dumps({**json.loads(meta.value), "batch": 1, "batch_reason": "forced"})
    onnx.save(proto, str(out))
    return out


def measure(name: str, src: Path, flags: dict, size: int, n: int, root: Path) -> dict:
    from featurebank.export import adopt, read_onnx_metadata

    adopted = root / f"{name}.adopted.onnx"
    start = time.perf_counter()
    adopt(src, adopted, **flags)
    adopt_s = time.perf_counter() - start
    info = read_onnx_metadata(adopted)
    layers = [la.name for la in info.layers if la.name.startswith("stage.")][-1:] + ["pool"]
    pixels = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), np.uint8)
    batched = rate(adopted, layers, pixels)
    chunked = rate(forced_chunks(adopted, root / f"{name}.chunked.onnx"), layers, pixels)
    row = {"adopt_s": round(adopt_s, 2), "rewrite": info.extra.get("batch_rewrite", []),
           "batch_parity": info.extra.get("batch_parity"), "layers": layers,
           "batched_images_per_s": round(batched, 1), "chunked_images_per_s": round(chunked, 1),
           "chunked_over_batched": round(chunked / batched, 3)}
    print(f"{name:28s} adopt {adopt_s:5.2f} s  batched {batched:7.1f}/s  chunked {chunked:7.1f}/s "
          f"({100 * chunked / batched:.0f} %)")
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--out", default="foreign_batch")
    args = parser.parse_args()
    from benchmarks.harness.classic_cnns import SIZE, make_classics
    from benchmarks.harness.foreign_models import LITE_FLAGS, make_foreign_lite

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for c in make_classics(root, variants=("fixed", "converted", "fp16")):
            rows[f"{c.family}.{c.variant}"] = measure(f"{c.family}.{c.variant}", c.path, c.flags,
                                                      SIZE, args.images, root)
        rows["lite0.converted"] = measure("lite0.converted", make_foreign_lite(root), LITE_FLAGS,
                                          224, args.images, root)
    write_result(args.out, {"images": args.images, "batch_size": 32, "threads": 1, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
