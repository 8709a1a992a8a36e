"""Reliability figures: the bad-input corpus, decode fuzzing, SIGKILLs of embed runs, service abuse.

Usage::

    python -m benchmarks.reliability                 # 20 kills, 2000 fuzz examples
    python -m benchmarks.reliability --kills 5 --fuzz 300

Prints the figures and writes ``benchmarks/results/reliability.json``. The same checks run (in
smaller numbers) in the default ``pytest`` run, ``tests/reliability/``; both take the corpus,
the decode checks and the fault injection from :mod:`benchmarks.harness`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

from benchmarks._common import RESULTS, write_result

os.environ.setdefault("OMP_NUM_THREADS", "1")


def corpus_figures(folder: Path) -> dict:
    from benchmarks.harness.corpus import build_corpus
    from benchmarks.harness.decode import KNOWN_BUGS, check_kind, run_kind
    from featurebank.extractor import decode
    from featurebank.spec import Preprocessing

    kinds = build_corpus(folder)
    ref = decode(kinds[0].path, Preprocessing())
    results = {}
    for k in kinds:
        if k.unprivileged and os.geteuid() == 0:  # tests/reliability checks it as user nobody
            results[k.name] = {"outcome": "skipped", "why": k.unprivileged}
            continue
        status, value, seconds = run_kind(k)
        try:
            check_kind(k, ref)
            outcome, why = "as expected", ""
        except AssertionError as exc:
            outcome, why = "BUG", str(exc)
        results[k.name] = {"expect": k.expect, "got": status, "seconds": round(seconds, 3),
                           "reason": value if status != "ok" else "", "outcome": outcome,
                           "why": why, "known_bug": KNOWN_BUGS.get(k.name, "")}
    return results


def fuzz_figures(folder: Path, examples: int) -> dict:
    from benchmarks.harness.corpus import build_corpus
    from benchmarks.harness.decode import fuzz_decode

    by_name = {k.name: k for k in build_corpus(folder)}
    t0 = time.perf_counter()
    with warnings.catch_warnings():  # Pillow warns about every broken TIFF tag; errors are counted
        warnings.simplefilter("ignore")
        counts = fuzz_decode(by_name, max_examples=examples)
    return {"examples": examples, **counts, "seconds": round(time.perf_counter() - t0, 1)}


def kill_figures(work: Path, kills: int) -> dict:
    from benchmarks.harness.faults import kill_campaign, make_kill_dataset, run_embed, snapshot

    src = make_kill_dataset(work / "src")
    # A warm-up run first: the first run in a fresh cache also writes onnxruntime's optimised
    # graph, so its time would overstate how long a run works and kills would come too late.
    run_embed(src, work / "warmup.h5")
    seconds = run_embed(src, work / "clean.h5")
    clean = snapshot(work / "clean.h5")
    t0 = time.perf_counter()
    trials, problems = kill_campaign(src, work, clean, seconds, kills=kills, seed=20)
    return {
        "kills": kills, "clean_run_s": round(seconds, 2), "rows_in_clean_run": len(clean.vectors),
        "killed_mid_run": sum(t.killed for t in trials),
        "killed_inside_a_commit": sum(t.in_commit for t in trials),
        "stores_used": len({t.store for t in trials}),
        "trials_with_problems": sum(bool(t.problems) for t in trials),
        "trials": [{"delay_s": round(t.delay_s, 2), "rows_before": t.rows_before,
                    "rows_after_kill": t.rows_after_kill, "killed": t.killed,
                    "in_commit": t.in_commit, "store": t.store,
                    "problems": t.problems} for t in trials],
        "final_store_problems": problems, "seconds": round(time.perf_counter() - t0, 1),
    }


def service_figures(work: Path, rounds: int, examples: int) -> dict:
    """As tests/reliability/test_service.py, for more rounds: a service with a trained
    classifier and a small queue, fuzzed in-process and from its schema against a real uvicorn
    server, then ``rounds`` of overload / malformed / slow / hung-up requests."""
    from benchmarks.harness import service_abuse as sa
    from featurebank.export import ensure_exported
    from featurebank.service import create_app

    work.mkdir(parents=True, exist_ok=True)
    onnx = ensure_exported("efficientnet_lite0")
    classifier = sa.train_classifier(onnx, work / "photos.joblib")
    kw = sa.app_kwargs(create_app, onnx, work, classifier=classifier, config=sa.ABUSE_CONFIG)
    app = sa.make_app(kw)
    routes = sa.served_routes(app)
    t0 = time.perf_counter()
    fuzz = sa.fuzz_requests(app, routes, examples=examples)
    fuzz["seconds"] = round(time.perf_counter() - t0, 1)
    fuzz["statuses"] = {str(k): v for k, v in sorted(fuzz["statuses"].items())}
    t0 = time.perf_counter()
    with sa.running_server(kw) as (proc, base):
        schema = sa.fuzz_server(base, examples=max(1, examples // 10))
        server = sa.abuse(proc, base, routes[0], rounds=rounds)
    server["seconds"] = round(time.perf_counter() - t0, 1)
    return {"routes": [r[0] for r in routes], "fuzz": fuzz, "schema_fuzz": schema,
            "server": server, "config": sa.ABUSE_CONFIG}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--fuzz", type=int, default=2000, help="hypothesis examples for decode")
    ap.add_argument("--service-rounds", type=int, default=5,
                    help="rounds of overload/hang-ups/slow/malformed against a real server")
    ap.add_argument("--service-fuzz", type=int, default=500, help="fuzzed service requests")
    ap.add_argument("--out", default=str(RESULTS / "reliability.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fb-reliability-") as tmp:
        tmp = Path(tmp)
        corpus = corpus_figures(tmp / "corpus")
        bugs = {n: r for n, r in corpus.items() if r["outcome"] == "BUG"}
        skipped = sum(r["outcome"] == "skipped" for r in corpus.values())
        print(f"corpus: {len(corpus)} kinds, {len(corpus) - len(bugs) - skipped} as expected, "
              f"{len(bugs)} bugs, {skipped} skipped")
        for name, r in bugs.items():
            print(f"  BUG {name}: {r['why']}")
        fuzz = fuzz_figures(tmp / "fuzz", args.fuzz)
        print(f"fuzz: {fuzz['examples']} mutated images in {fuzz['seconds']} s: "
              f"{fuzz['decoded']} decoded, {fuzz['decode_error']} DecodeError, "
              f"{len(fuzz['unhandled'])} other exceptions")
        for line in sorted(set(u.split(" (seed")[0] for u in fuzz["unhandled"])):
            print(f"  BUG decode raised {line}")
        kill = kill_figures(tmp / "kill", args.kills)
        print(f"kill: {kill['kills']} SIGKILLs ({kill['killed_mid_run']} mid-run, "
              f"{kill['killed_inside_a_commit']} inside a commit), "
              f"{kill['trials_with_problems']} trials with problems, final store problems: "
              f"{kill['final_store_problems'] or 'none'} ({kill['seconds']} s)")
        svc = service_figures(tmp / "service", args.service_rounds, args.service_fuzz)
        srv = svc["server"]
        print(f"service: {svc['fuzz']['examples']} fuzzed requests, statuses "
              f"{svc['fuzz']['statuses']}, {len(svc['fuzz']['server_errors'])} 5xx; schema fuzz "
              f"failures: {len(svc['schema_fuzz'].get('failures', []))}; server: {srv['rounds']} "
              f"rounds, overload statuses {srv['overload_statuses']} (Retry-After "
              f"{srv['retry_after']}), unexpected answers {len(srv['unexpected'])}, other 5xx "
              f"{srv['server_5xx'] or 'none'}: alive {srv['server_alive']}, next request "
              f"{srv['request_after']}, RSS {srv['rss_baseline_mb']} MB + {srv['rss_growth_mb']} MB")
    write_result(Path(args.out), {"corpus": corpus, "fuzz": fuzz, "kill": kill, "service": svc})
    ok = (not kill["trials_with_problems"] and not kill["final_store_problems"]
          and not svc["fuzz"]["server_errors"] and srv["server_alive"] and not srv["unexpected"]
          and not srv["server_5xx"] and not svc["schema_fuzz"].get("failures"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
