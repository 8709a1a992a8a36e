"""``train --classifier auto`` against today's default (logistic regression, C on a validation
split) on the demo store: wall time of ``featurebank.classical.train`` (raw-pixel baseline
included, as the command runs it) and the accuracy of each on the demo's test store.

    featurebank demo --work-dir runs/demo      # makes runs/demo/train.h5 and test.h5
    python -m benchmarks.train_auto [--work-dir runs/demo] [--repeats 2]

The default becomes ``auto`` only if auto stays within 3x of logistic regression's time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks._common import load_average, spread, write_result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", default="runs/demo")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    from featurebank.classical import evaluate, train

    work = Path(args.work_dir)
    stores = {s: work / f"{s}.h5" for s in ("train", "test")}
    if not all(p.is_file() for p in stores.values()):
        raise SystemExit(f"no demo stores in {work}: run 'featurebank demo --work-dir {work}'")
    layers = ["blocks.13", "head"]  # the demo's cuts
    times: dict[str, list[float]] = {"logreg": [], "auto": []}
    accuracy, chosen = {}, {}
    load_before = load_average()
    for _ in range(args.repeats):
        for kind in times:  # alternated, so that the load weighs on both alike
            start = time.perf_counter()
            model = train(stores["train"], layers, kind)
            times[kind].append(time.perf_counter() - start)
            accuracy[kind] = evaluate(model, stores["test"], baseline=False)["accuracy"]
            chosen[kind] = {"classifier": model.info["classifier"], "C": model.info["C"]}
            print(kind, round(times[kind][-1], 1), "s", chosen[kind], accuracy[kind], flush=True)
    ratio = min(times["auto"]) / min(times["logreg"])
    write_result("train_auto", {
        "store": str(stores["train"]), "layers": layers, "repeats": args.repeats,
        "seconds": {k: spread(v, 2) for k, v in times.items()},
        "auto_over_logreg_time": round(ratio, 2), "test_accuracy": accuracy, "chosen": chosen,
        "auto_is_default": ratio <= 3.0, "load_before": load_before,
        "load_after": load_average()})


if __name__ == "__main__":
    main()
