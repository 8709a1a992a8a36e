"""Start-up time of the ``featurebank`` command: ``--version``, ``--help`` and subcommand helps.

Each command runs ``--repeat`` times (default 5) in a fresh process; the median is the figure
(issue 22's target: under 0.3 s for ``--version`` and ``--help`` at a load below 1). The load
average is recorded beside it, since the machine is shared.

    python -m benchmarks.startup                          # this checkout's .venv/bin/featurebank
    python -m benchmarks.startup --command /work/main/.venv/bin/featurebank --out before.json
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._common import REPO, load_average, spread, write_result

#: what is timed: the top-level answers, and commands whose stages differ in weight
CASES = (("--version",), ("--help",), ("embed", "--help"), ("train", "--help"),
         ("serve", "--help"), ("finetune", "--help"))


def default_command() -> str:
    local = REPO / ".venv" / "bin" / "featurebank"
    return str(local) if local.exists() else shutil.which("featurebank") or "featurebank"


def time_once(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-500:]}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--command", default=default_command(), help="the featurebank executable")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default="startup", help="result name or JSON path")
    parser.add_argument("--label", default="", help="what was measured (e.g. 'before: main')")
    args = parser.parse_args(argv)
    load_before = load_average()
    time_once([args.command, "--version"])  # warm the file cache: the figures are warm starts
    rows = {}
    for case in CASES:
        times = [time_once([args.command, *case]) for _ in range(args.repeat)]
        rows[" ".join(case)] = spread(times)
        print(f"{' '.join(case):<18} median {rows[' '.join(case)]['median']:.3f} s "
              f"(min {min(times):.3f}, max {max(times):.3f})")
    payload = {"command": args.command, "label": args.label, "repeat": args.repeat,
               "load_before": load_before, "load_after": load_average(), "seconds": rows,
               "python": sys.version.split()[0]}
    path = write_result(args.out if args.out.endswith(".json") is False else Path(args.out),
                        payload)
    print(f"load average {load_before} -> {payload['load_after']}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
