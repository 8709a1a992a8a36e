"""``featurebank compare``: which backbone, cut, pooling and classifier, on the user's data."""

from __future__ import annotations

import json

from featurebank.classical import CLASSIFIERS
from featurebank.cli.flags import (
    add_exclude_flag,
    add_option_flags,
    exclusions_from_args,
    options_from_args,
)
from featurebank.compare import CompareOptions
from featurebank.spec import SPATIAL_POOLS, TOKEN_POOLS

#: the repeatable flags: parameter -> (flag, metavar, choices)
_REPEATED = {
    "models": ("--model", "MODEL", None),
    "layers": ("--layer", "NAME", None),
    "pools": ("--pool", "POOL", (*SPATIAL_POOLS, *TOKEN_POOLS)),
    "classifiers": ("--classifier", "KIND", CLASSIFIERS),
}


def register(sub) -> None:
    p = sub.add_parser(
        "compare", help="rank backbones, cuts, poolings and classifiers on your data; choose one",
        description="Embed TRAIN once per backbone and pooling (stores in --work-dir; a killed "
        "run resumes), rank every feature set by LogME from the stored features, confirm the "
        "best by successive halving with cross-validation on TRAIN (every classifier kind, its "
        "regularisation searched), fit the choice on all of TRAIN and score TEST once. Writes "
        "the chosen classifier (-o, for predict, serve and evaluate), and with --report the "
        "JSON of every candidate and a plot of accuracy against ms per image.")
    p.add_argument("train", metavar="TRAIN", nargs="?", help="labelled images: a folder (one "
                   "sub-folder per class), a list file, or a store")
    p.add_argument("--suite", default=None, metavar="FILE.toml",
                   help="several data sets instead of TRAIN ([[dataset]] name, train, test): "
                   "one table with each feature set's rank per data set and its mean rank, "
                   "written to --report DIR with each data set's classifier")
    p.add_argument("--test", default=None, metavar="TEST",
                   help="held-out labelled images (folder, list or store), read once at the "
                   "end for the chosen configuration only")
    p.add_argument("-o", "--output", default=None, metavar="CHOSEN.joblib",
                   help="the chosen classifier file (required with TRAIN); when --budget's "
                   "fine-tuning is chosen, the tuned network is CHOSEN.onnx beside it (the "
                   ".joblib keeps the best frozen configuration)")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="write compare.json (every candidate) and compare.png")
    p.add_argument("--work-dir", default=None, metavar="DIR",
                   help="where the stores are kept (default: OUTPUT's name + .work)")
    add_exclude_flag(p, "TRAIN images (from ranking, halving and the fit)")
    # repeatable: None until given, then the dataclass's default is replaced, not appended to
    overrides = {name: {"action": "append", "default": None, "metavar": metavar, "type": str,
                        "choices": choices} for name, (_, metavar, choices) in _REPEATED.items()}
    overrides.update(budget={"metavar": "MINUTES"}, finetune_from={"metavar": "NAME"})
    add_option_flags(p.add_argument_group("candidates and selection (CompareOptions)"),
                     CompareOptions, flags={n: f for n, (f, *_) in _REPEATED.items()},
                     overrides=overrides)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_compare)


def run_compare(args) -> int:
    from featurebank.errors import FeaturebankError

    for name in _REPEATED:  # an unrepeated flag keeps the dataclass's default
        if getattr(args, name) is None:
            setattr(args, name, CompareOptions.__dataclass_fields__[name].default)
    options = options_from_args(CompareOptions, args)
    if args.suite:
        if args.train or args.test or args.output or args.work_dir:
            raise FeaturebankError("--suite replaces TRAIN, --test, -o and --work-dir (each data "
                                   "set's are in the suite file and under --report DIR)")
        if args.exclude:
            raise FeaturebankError("--exclude leaves out images of one TRAIN; it does not apply "
                                   "to a --suite")
        if not args.report:
            raise FeaturebankError("--suite needs --report DIR (one folder per data set)")
        return _run_suite(args, options)
    if not args.train or not args.output:
        raise FeaturebankError("give TRAIN and -o CHOSEN.joblib (or --suite FILE.toml)")
    exclude = exclusions_from_args(args)  # a bad file is refused before anything is embedded
    from featurebank.compare import compare

    result = compare(args.train, args.test, options=options, output=args.output,
                     report=args.report, work_dir=args.work_dir, progress=not args.no_progress,
                     exclude=exclude)
    if args.json:
        print(json.dumps(result.to_dict(), default=str))
        return 0
    print(result.table())
    print(f"chosen: {result.conclusion()}")
    if result.excluded_keys:
        print(f"left out: {len(result.excluded_keys)} TRAIN images (--exclude), recorded in "
              f"{args.output}")
    if args.report:
        print(f"report written to {args.report}")
    if result.finetuned:
        print(f"wrote {args.output} (the best frozen configuration) and {result.finetune.file} "
              "(the fine-tuned network: the choice, for predict, serve and evaluate)")
    else:
        print(f"wrote {args.output}")
    return 0


def _run_suite(args, options) -> int:
    from featurebank.compare import run_suite, suite_table

    table = run_suite(args.suite, options=options, report=args.report,
                      progress=not args.no_progress)
    if args.json:
        print(json.dumps(table, default=str))
        return 0
    print(suite_table(table))
    print(f"report written to {args.report} (suite.json; one folder per data set)")
    return 0
