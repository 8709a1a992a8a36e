"""``make demo`` as a newcomer meets it: a fresh clone, an empty model cache (issue 31).

    python -m benchmarks.fresh_clone [--rev HEAD] [--keep]

Clones this repository at ``--rev`` into a temporary folder, points ``FEATUREBANK_CACHE`` at a
new empty folder, and runs ``nice make demo`` there: the install of ``.venv`` (from the
machine's pip cache where it has the wheels), the one-time export of EfficientNet-Lite0, and
the demo itself (write 1,500 Fashion-MNIST PNGs, embed them, train, evaluate). It records the
wall time of the whole and the demo's own time (the figure the demo prints), the disk the
``.venv`` and the model cache take, the demo's accuracies and the load average before and after
(the machine is shared). Writes ``benchmarks/results/fresh_clone.json``. What ``make test``
adds (the suite's time, the zoo venv, the test model cache) is CI's figure, in README.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks._common import REPO, load_average, write_result


def _size_mb(path: Path) -> float:
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
    return round(total / 2**20, 1)


def run(rev: str = "HEAD", keep: bool = False) -> dict:
    work = Path(tempfile.mkdtemp(prefix="fresh-clone-"))
    clone, cache = work / "featurebank", work / "empty-cache"
    cache.mkdir()
    commit = subprocess.run(["git", "rev-parse", rev], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.strip()
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    subprocess.run(["git", "checkout", "-q", commit], cwd=clone, check=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("FEATUREBANK_TEST_CACHE", "VIRTUAL_ENV", "PYTHONPATH")}
    env["FEATUREBANK_CACHE"] = str(cache)
    before = load_average()
    started = time.perf_counter()
    done = subprocess.run(["nice", "-n", "10", "make", "demo"], cwd=clone, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    after = load_average()
    if done.returncode != 0:
        raise SystemExit(f"make demo failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    demo = json.loads((clone / "runs" / "demo" / "report" / "demo.json").read_text())
    result = {"commit": commit, "make_demo_seconds": round(seconds, 1),
              "demo_seconds": demo["seconds"], "install_and_start_seconds":
              round(seconds - demo["seconds"], 1),
              "venv_mb": _size_mb(clone / ".venv"), "model_cache_mb": _size_mb(cache),
              "accuracy": demo["accuracy"],
              "raw_pixel_baseline_accuracy": demo["raw_pixel_baseline_accuracy"],
              "images": {"train": demo["train"], "test": demo["test"]},
              "load_before": before, "load_after": after}
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", default="HEAD", help="the commit to clone (default: HEAD)")
    ap.add_argument("--keep", action="store_true", help="keep the clone and its cache")
    args = ap.parse_args()
    result = run(args.rev, args.keep)
    print(json.dumps(result, indent=2))
    write_result("fresh_clone", result)


if __name__ == "__main__":
    main()
