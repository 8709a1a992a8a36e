"""``featurebank neighbors | audit``: which stored images look like these, and what is wrong
with a train/test split (duplicates, leakage, suspect labels, outliers)."""

from __future__ import annotations

import json

from featurebank.classical import AuditOptions
from featurebank.cli.flags import add_option_flags, options_from_args
from featurebank.extractor import SearchOptions

EXIT_CODES = {"neighbors": {1: "an error, or an input file could not be read (every other file "
                               "is still answered; the broken one gets an error line)"}}


def register(sub) -> None:
    p = sub.add_parser("neighbors", help="the stored images most similar to these images",
                       description="Embed each image with the store's model and cut and print "
                       "the most similar stored images (cosine similarity), one line per "
                       "neighbour (tab-separated: input, rank, similarity, stored path, label), "
                       "or one JSON object per input with --json. Exact search streams the "
                       "store in blocks; beyond --index-above rows a faiss index kept beside "
                       "the store answers (built or extended on first use).")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="folders, image files, list files or glob patterns (as for embed)")
    p.add_argument("--store", required=True, help="the feature store searched (read only)")
    p.add_argument("--layer", default=None, metavar="NAME",
                   help="feature set by layer or fingerprint (needed when the store has several)")
    p.add_argument("--json", action="store_true", help="one JSON object per input")
    p.add_argument("--model", default=None, metavar="FILE.onnx",
                   help="where the store's ONNX model is (registry models come from the cache, "
                        "adopted ones are found by their SHA-256)")
    add_option_flags(p, SearchOptions)
    p.set_defaults(func=run_neighbors)
    register_audit(sub)


def run_neighbors(args) -> int:
    from featurebank.extractor import StoreSearch

    search = StoreSearch(args.store, args.layer, options=options_from_args(SearchOptions, args))
    status = 0
    for path, matches, error in search.images(args.images, model=args.model):
        if args.json:
            print(json.dumps({"path": path, "error": error,
                              "neighbors": [m.to_dict() for m in matches or ()]}), flush=True)
        elif error is not None:
            print(f"{path}\terror: {error}", flush=True)
        else:
            for rank, m in enumerate(matches or (), 1):
                print(f"{path}\t{rank}\t{m.similarity:.4f}\t{m.path}\t{m.label}", flush=True)
        status = status or (1 if error is not None else 0)
    return status


def register_audit(sub) -> None:
    p = sub.add_parser("audit", help="duplicates, train/test leaks, suspect labels and outliers",
                       description="Audit a training store (and held-out stores) at one cut: "
                       "exact duplicates (content keys), near-duplicate groups (cosine "
                       "similarity at or above --near-threshold, and far nearer each other "
                       "than their other neighbours: --near-ratio), test images with a "
                       "near-duplicate in training (leaks), likely label errors (confident "
                       "learning on out-of-fold probabilities) and outliers (distance to the "
                       "k-th neighbour). With --report DIR: report.json, a CSV per finding, "
                       "exclude.txt (for --exclude) and contact_sheet.png.")
    p.add_argument("train", metavar="TRAIN", help="the training store")
    p.add_argument("--test", action="append", default=[], metavar="TEST",
                   help="a held-out store (repeatable): leaks are its images found in TRAIN")
    p.add_argument("--layer", default=None, metavar="NAME",
                   help="feature set by layer or fingerprint (needed when a store has several)")
    p.add_argument("--report", default=None, metavar="DIR", help="write the report folder")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    # the command line spells it as the `neighbors` command does; the British spelling stays
    add_option_flags(p, AuditOptions, flags={"neighbours": ("--neighbors", "--neighbours")})
    p.set_defaults(func=run_audit)


def run_audit(args) -> int:
    from featurebank.classical import audit_stores

    report = audit_stores(args.train, args.test, args.layer,
                          options=options_from_args(AuditOptions, args), report=args.report)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
        return 0
    counts = report.to_dict()["counts"]
    print(f"audit of {report.train} ({report.rows[report.train]} rows) at {report.spec}")
    print(f"exact duplicates: {counts['exact_duplicates']}")
    print(f"near-duplicate groups: {counts['near_duplicates']}")
    print(f"leaks (test images near-duplicated in training): {counts['leaks']}")
    for r in report.leaks[:5]:
        print(f"  {r['similarity']:.4f}  {r['test']['path']}  <-  {r['train']['path']}"
              f"  ({r.get('found_by', 'features')})")
    pixels = report.pixel_check
    if pixels.get("on"):
        print(f"pixel check: {pixels['signatures']} image signatures compared")
        if pixels["unreadable_count"]:
            print(f"  WARNING: {pixels['unreadable_count']} image(s) could not be read (first: "
                  f"{pixels['unreadable'][0]['path']}: {pixels['unreadable'][0]['reason']}); "
                  "their pairs were judged by the features alone (pixel_unreadable.csv)")
    else:
        print("pixel check: off (features alone)")
    sample = f" (of a sample of {report.label_sample})" if report.label_sample else ""
    print(f"suspect labels{sample}: {counts['label_issues']}")
    for r in report.label_issues[:5]:
        print(f"  {r['score']:.3f}  {r['path']}  {r['given']} -> {r['suggested']}")
    print(f"outliers listed: {counts['outliers']}")
    if args.report:
        print(f"report written to {args.report} (contact_sheet.png, exclude.txt)")
    return 0
