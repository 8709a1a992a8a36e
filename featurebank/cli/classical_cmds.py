"""``featurebank train | evaluate | predict | sweep``: classifiers on stored features."""

from __future__ import annotations

import json

from featurebank.classical import CLASSIFIERS

#: command-specific exit statuses (featurebank.cli puts them in each --help)
EXIT_CODES = {"predict": {1: "an error, or an input file could not be read (every other file "
                             "is still predicted and printed; the broken one gets an error line)"}}


def register(sub) -> None:
    p = sub.add_parser("train", help="train a classifier on a store's labelled features")
    p.add_argument("store")
    p.add_argument("-o", "--output", required=True, help="model file (.joblib)")
    p.add_argument("--layer", dest="layers", action="append", metavar="NAME",
                   help="feature set by layer or fingerprint; repeat to concatenate")
    p.add_argument("--classifier", default=CLASSIFIERS[0], choices=CLASSIFIERS,
                   help="default: %(default)s")
    p.add_argument("--shots", type=int, default=None, help="use only K labelled images per class")
    p.add_argument("--holdout", type=float, default=0.0,
                   help="keep this fraction out of training (evaluate it later on the same store)")
    p.add_argument("--no-baseline", action="store_true", help="skip the raw-pixel baseline")
    p.set_defaults(func=run_train)

    p = sub.add_parser("evaluate", help="score a model on a store (images it was not trained on)")
    p.add_argument("model")
    p.add_argument("store")
    p.add_argument("--report", default=None, metavar="DIR", help="write metrics.json and PNGs")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the raw-pixel baseline (it re-reads the images)")
    p.add_argument("--unseen-as-wrong", action="store_true",
                   help="score images of labels the classifier never saw as wrong (default: "
                        "refuse such a store)")
    p.set_defaults(func=run_evaluate)

    p = sub.add_parser("predict", help="predict labels of images",
                       description="Print the most likely labels of each image, one line per "
                       "file in input order (tab-separated, or JSON with --json). A file that "
                       "cannot be read gets an error line and the others go on.")
    p.add_argument("model", metavar="MODEL",
                   help="a 'featurebank train' model (.joblib) or a 'featurebank finetune' "
                        "model (.onnx)")
    p.add_argument("images", nargs="+", metavar="INPUT",
                   help="folders, image files, list files or glob patterns (as for embed)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--top", type=int, default=1, metavar="K",
                   help="show the K most likely labels (default: %(default)s)")
    p.add_argument("--model", dest="onnx", metavar="FILE.onnx", default=None,
                   help="where the classifier's ONNX model is (found by its SHA-256 in the "
                        "cache otherwise)")
    p.set_defaults(func=run_predict)

    p = sub.add_parser("sweep", help="accuracy per layer (and concatenated layers) with its cost")
    p.add_argument("store")
    p.add_argument("--test-store", default=None, help="score on this store instead of a split")
    p.add_argument("--classifier", default=CLASSIFIERS[0], choices=CLASSIFIERS,
                   help="default: %(default)s")
    p.add_argument("--holdout", type=float, default=0.25)
    p.add_argument("--report", default=None, metavar="DIR")
    p.set_defaults(func=run_sweep)


def _check_writable(output: str) -> None:
    """Refuse an output that cannot be written before the work, not after it."""
    import os
    from pathlib import Path

    from featurebank.errors import FeaturebankError

    folder = Path(output).parent
    if not folder.is_dir():
        raise FeaturebankError(f"cannot write {output}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (Path(output).exists() and not os.access(output, os.W_OK)):
        raise FeaturebankError(f"cannot write {output}: permission denied")


def run_train(args) -> int:
    from featurebank.classical import train

    _check_writable(args.output)
    model = train(args.store, args.layers, args.classifier, args.shots, args.holdout,
                  baseline=not args.no_baseline)
    model.save(args.output)
    info = model.info
    print(f"trained {args.classifier} on {info['n_train']} images, {len(model.classes)} classes, "
          f"features {', '.join(s.describe() for s in model.specs)}; C={info['C']:g}")
    print(f"wrote {args.output}")
    return 0


def run_evaluate(args) -> int:
    from featurebank.classical import evaluate, load_model

    result = evaluate(load_model(args.model), args.store, args.report,
                      baseline=not args.no_baseline,
                      unseen="wrong" if args.unseen_as_wrong else "error")
    print(f"accuracy: {result['accuracy']:.4f}")
    print(f"balanced accuracy: {result['balanced_accuracy']:.4f}")
    print(f"macro F1: {result['macro_f1']:.4f}")
    print(f"images: {result['n']}")
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

    status = 0
    for answer in predict_images(load_classifier(args.model), args.images, top=args.top,
                                 model=args.onnx):
        print(json.dumps(answer.to_dict()) if args.json else answer.to_line(), flush=True)
        status = status or (1 if answer.error is not None else 0)
    return status


def run_sweep(args) -> int:
    from featurebank.classical import sweep

    rows = sweep(args.store, args.test_store, args.classifier, args.holdout,
                 report_dir=args.report)
    print(f"{'cut':<40}{'dim':>6}{'accuracy':>10}{'FLOPs %':>9}")
    for r in rows:
        cost = f"{100 * r['flops_share']:.1f}" if r["flops_share"] is not None else "-"
        print(f"{r['layer']:<40}{r['dim']:>6}{r['accuracy']:>10.4f}{cost:>9}")
    if args.report:
        print(f"report written to {args.report}")
    return 0
