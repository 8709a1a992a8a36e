"""Start-up time of the ``featurebank`` command: ``--version``, ``--help`` and subcommand helps.

Each command runs ``--repeat`` times (default 5) in a fresh process; the median is the figure
(issue 22's target: under 0.3 s for ``--version`` and ``--help`` at a load below 1). The load
average is recorded beside it, since the machine is shared, and so is the CPU time (user +
system) of each run, which the load barely moves.

    python -m benchmarks.startup --label after             # this checkout's .venv/bin/featurebank
    python -m benchmarks.startup --label before --command /other/checkout/.venv/bin/featurebank

Each run is kept in ``benchmarks/results/startup.json`` under its label (a run with the same
label replaces the earlier one), so the file holds the figures before and after a change side
by side, each with its load average and date.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._common import REPO, RESULTS, load_average, machine, spread

#: what is timed: the top-level answers, and commands whose stages differ in weight
CASES = (("--version",), ("--help",), ("embed", "--help"), ("train", "--help"),
         ("serve", "--help"), ("finetune", "--help"))


def default_command() -> str:
    local = REPO / ".venv" / "bin" / "featurebank"
    return str(local) if local.exists() else shutil.which("featurebank") or "featurebank"


def time_once(command: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one run of ``command``. The CPU time
    barely moves with the machine's load; the wall time is what a user waits."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--command", default=default_command(), help="the featurebank executable")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS / "startup.json"), help="JSON file")
    parser.add_argument("--label", default="current", help="what was measured ('before', ...)")
    args = parser.parse_args(argv)
    load_before = load_average()
    time_once([args.command, "--version"])  # warm the file cache: the figures are warm starts
    rows, cpu = {}, {}
    for case in CASES:
        name = " ".join(case)
        walls, cpus = zip(*(time_once([args.command, *case]) for _ in range(args.repeat)),
                          strict=True)
        rows[name], cpu[name] = spread(walls), spread(cpus)
        print(f"{name:<18} median {rows[name]['median']:.3f} s "
              f"(min {rows[name]['min']:.3f}, max {rows[name]['max']:.3f}); "
              f"CPU {cpu[name]['median']:.3f} s")
    run = {"command": args.command, "repeat": args.repeat, "load_before": load_before,
           "load_after": load_average(), "median_s": {k: v["median"] for k, v in rows.items()},
           "median_cpu_s": {k: v["median"] for k, v in cpu.items()},
           "seconds": rows, "cpu_seconds": cpu, "machine": machine()}
    out = Path(args.out)
    runs = json.loads(out.read_text())["runs"] if out.is_file() else {}
    runs[args.label] = run
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"target_s": 0.3, "runs": runs}, indent=2) + "\n")
    print(f"load average {load_before} -> {run['load_after']}; wrote {out} ({args.label!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
