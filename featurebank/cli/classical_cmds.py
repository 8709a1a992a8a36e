"""``featurebank train | evaluate | predict | sweep``: classifiers on stored features."""

from __future__ import annotations

import json

from featurebank.classical import CLASSIFIERS, TrainOptions
from featurebank.cli.flags import (
    add_deprecated_flag,
    add_exclude_flag,
    add_option_flags,
    exclusions_from_args,
    options_from_args,
    register_flags,
)
from featurebank.paths import check_writable
from featurebank.predict import PredictOptions

#: command-specific exit statuses (featurebank.cli puts them in each --help)
EXIT_CODES = {"predict": {1: "an error, or an input file could not be read (every other file "
                             "is still predicted and printed; the broken one gets an error line)"}}


#: TrainOptions fields whose flags are not spelt --field-name
_TRAIN_FLAGS = {"layers": "--layer", "random_state": "--seed"}
_LAYER_FLAG = {"layers": {"action": "append", "metavar": "NAME"}}
CLASSIFIER_HELP = ("a 'featurebank train' classifier (.joblib) or a 'featurebank finetune' "
                   "network (.onnx)")


def register(sub) -> None:
    p = sub.add_parser("train", help="train a classifier on a store's labelled features")
    p.add_argument("store")
    p.add_argument("-o", "--output", required=True, metavar="CLASSIFIER.joblib",
                   help="the classifier file written")
    add_option_flags(p, TrainOptions, flags=_TRAIN_FLAGS, overrides=_LAYER_FLAG)
    add_exclude_flag(p, "rows")
    p.set_defaults(func=run_train)

    p = sub.add_parser("evaluate", help="score a classifier on a store (images it was not "
                       "trained on)")
    p.add_argument("classifier", metavar="CLASSIFIER",
                   help=CLASSIFIER_HELP + "; a tuned network reads its own logits: embed the "
                   "test images with --model TUNED.onnx --layer logits")
    p.add_argument("store")
    p.add_argument("--report", default=None, metavar="DIR", help="write metrics.json and PNGs")
    add_option_flags(p, TrainOptions, only=("baseline",), overrides={"baseline": {
        "help": "also score the raw-pixel baseline (re-reads the images)"}})
    p.add_argument("--unseen-as-wrong", action="store_true",
                   help="score images of labels the classifier never saw as wrong (default: "
                        "refuse such a store)")
    register_flags(p, "evaluate", {"unseen='wrong'": "--unseen-as-wrong"})
    p.set_defaults(func=run_evaluate)

    p = sub.add_parser("predict", help="predict labels of images",
                       description="Print the most likely labels of each image, one line per "
                       "file in input order (tab-separated, or JSON with --json). A file that "
                       "cannot be read gets an error line and the others go on.")
    p.add_argument("classifier", metavar="CLASSIFIER", help=CLASSIFIER_HELP)
    p.add_argument("images", nargs="+", metavar="INPUT",
                   help="folders, image files, list files or glob patterns (as for embed)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    add_option_flags(p, PredictOptions, overrides={"top": {"metavar": "K"},
                                                   "model": {"metavar": "FILE.onnx"}})
    p.set_defaults(func=run_predict)

    p = sub.add_parser("sweep", help="accuracy per layer (and concatenated layers) with its cost")
    p.add_argument("store")
    p.add_argument("--test", default=None, metavar="STORE",
                   help="score on this store instead of a --holdout split")
    add_deprecated_flag(p, "--test-store", "--test", "test", metavar="STORE")
    add_option_flags(p, TrainOptions, only=("classifier", "holdout", "random_state"),
                     flags=_TRAIN_FLAGS, overrides={"holdout": {"default": 0.25},
                                                    "classifier": {"choices": CLASSIFIERS,
                                                                   "default": CLASSIFIERS[0]}})
    register_flags(p, "sweep", {"holdout": "--holdout", "test_store": "--test"})
    p.add_argument("--report", default=None, metavar="DIR", help="write sweep.json and sweep.png")
    p.set_defaults(func=run_sweep)


def run_train(args) -> int:
    from dataclasses import asdict

    from featurebank.classical import PROBABILITIES, train

    check_writable(args.output)
    options = options_from_args(TrainOptions, args)
    exclude = exclusions_from_args(args)  # read (and checked) before any work
    classifier = train(args.store, **asdict(options), exclude=exclude)
    classifier.save(args.output)
    info = classifier.info
    kind = info["classifier"]
    chosen = " (chosen by 5-fold cross-validation on the training images)" if (
        options.classifier == "auto") else ""
    reg = f"k={info['C']:g}" if kind == "knn" else f"C={info['C']:g}"
    print(f"trained {kind}{chosen} on {info['n_train']} images, "
          f"{len(classifier.classes)} classes, "
          f"features {', '.join(s.describe() for s in classifier.specs)}; {reg}"
          + (f"; {info['excluded']} rows excluded" if info.get("excluded") else ""))
    print(f"probabilities: {PROBABILITIES[kind]}")
    print(f"wrote {args.output}")
    return 0


def run_evaluate(args) -> int:
    from featurebank.classical import evaluate
    from featurebank.predict import load_classifier

    result = evaluate(load_classifier(args.classifier), args.store, args.report,
                      baseline=args.baseline,
                      unseen="wrong" if args.unseen_as_wrong else "error")
    print(f"accuracy: {result['accuracy']:.4f}")
    print(f"balanced accuracy: {result['balanced_accuracy']:.4f}")
    print(f"macro F1: {result['macro_f1']:.4f}")
    print(f"images: {result['n']}")
    if result.get("excluded_skipped"):
        print(f"skipped: {result['excluded_skipped']} rows excluded from training (--exclude)")
    if "raw_pixel_baseline_accuracy" in result:
        print(f"raw-pixel baseline accuracy: {result['raw_pixel_baseline_accuracy']:.4f} "
              f"(gain {100 * result['gain_over_raw_pixels']:+.1f} points)")
    for label, acc in sorted(result["per_class_accuracy"].items()):
        print(f"  {label:<20} {acc:.4f}")
    if "note" in result:
        print(f"note: {result['note']}")
    if args.report:
        print(f"report written to {args.report}")
    return 0


def run_predict(args) -> int:
    from featurebank.predict import load_classifier, predict_images

    options = options_from_args(PredictOptions, args)
    classifier = load_classifier(args.classifier)
    _say_what_probabilities_are(classifier)
    status = 0
    for answer in predict_images(classifier, args.images,
                                 top=options.top, model=options.model):
        print(json.dumps(answer.to_dict()) if args.json else answer.to_line(), flush=True)
        status = status or (1 if answer.error is not None else 0)
    return status


def _say_what_probabilities_are(classifier) -> None:
    """One log line (stderr): the classifier's kind and what its probabilities are."""
    import logging

    from featurebank.classical import PROBABILITIES

    kind = (getattr(classifier, "info", None) or {}).get("classifier")
    if kind in PROBABILITIES:
        logging.getLogger("featurebank.predict").info(
            "classifier: %s; its probabilities are %s", kind, PROBABILITIES[kind])


def run_sweep(args) -> int:
    from featurebank.classical import sweep

    options = options_from_args(TrainOptions, args)
    rows = sweep(args.store, args.test, options.classifier, options.holdout,
                 report=args.report, random_state=options.random_state)
    print(f"{'cut':<40}{'dim':>6}{'accuracy':>10}{'FLOPs %':>9}")
    for r in rows:
        cost = f"{100 * r['flops_share']:.1f}" if r["flops_share"] is not None else "-"
        print(f"{r['layer']:<40}{r['dim']:>6}{r['accuracy']:>10.4f}{cost:>9}")
    if args.report:
        print(f"report written to {args.report}")
    return 0
