"""``featurebank demo``: the main job end to end on real images (:mod:`featurebank.demo`)."""

from __future__ import annotations

from featurebank.cli.flags import add_deprecated_flag, add_option_flags, options_from_args
from featurebank.demo import DemoOptions


def register(sub) -> None:
    p = sub.add_parser("demo", help="embed real images, train and evaluate a classifier")
    add_option_flags(p, DemoOptions, flags={"layers": "--layer"}, overrides={
        "layers": {"action": "append", "metavar": "NAME", "default": None,
                   "help": "layer(s) to cut at, concatenated (default: blocks.13 and head)"},
        "train_images": {"metavar": "N"}, "test_images": {"metavar": "N"},
        "work_dir": {"metavar": "DIR"}})
    for old, new, dest in (("--workdir", "--work-dir", "work_dir"),
                           ("--train", "--train-images", "train_images"),
                           ("--test", "--test-images", "test_images")):
        add_deprecated_flag(p, old, new, dest, type=None if dest == "work_dir" else int)
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:
    from featurebank.demo import run_demo as demo

    layers = tuple(args.layers or DemoOptions().layers)
    result = demo(options_from_args(DemoOptions, args, layers=layers),
                  say=lambda line: print(line, flush=True))
    print(f"accuracy: {result['accuracy']:.4f}")
    print(f"raw-pixel baseline accuracy: {result['raw_pixel_baseline_accuracy']:.4f} "
          f"(transfer gain {100 * result['metrics']['gain_over_raw_pixels']:+.1f} points)")
    print(f"report: {result['report']} (metrics.json, confusion.png); "
          f"{result['seconds']:.0f} s in all")
    return 0
