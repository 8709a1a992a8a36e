"""``featurebank finetune``: train the top layers from cached maps, export a tuned ONNX model."""

from __future__ import annotations

import json

from featurebank.finetune import FinetuneOptions

DEFAULTS = FinetuneOptions()  # the one place the defaults live (no torch imported here)
#: FinetuneOptions fields given as ``--name`` switches: help
SWITCHES = {
    "flip": "also cache horizontally mirrored maps and train on them half the time",
    "keep_checkpoint": "keep OUTPUT.ckpt once the tuned file is written",
    "tta_flip": "exported logits average the image's and its mirror's (flip TTA in the graph)",
}
#: FinetuneOptions fields given as ``--name VALUE`` flags: (type, help)
OPTION_FLAGS = {
    "epochs": (int, "most epochs of fine-tuning"),
    "val_size": (float, "validation fraction, stratified"),
    "seed": (int, "seeds the split, batch order, flips and dropout"),
    "lr_head": (float, "AdamW learning rate of the new head"),
    "lr_top": (float, "AdamW learning rate of the unfrozen top layers"),
    "batch_size": (int, "maps per step"),
    "weight_decay": (float, "AdamW weight decay"),
    "label_smoothing": (float, "cross-entropy label smoothing"),
    "dropout": (float, "dropout before the head while training"),
    "patience": (int, "early stopping after this many epochs without progress (0: off)"),
    "probe_c": (float, "C of the probe that starts the head (default: chosen on validation)"),
    "threads": (int, "torch threads (default: torch's choice)"),
    "input_size": (int, "square input side the maps are computed at (default: the model's)"),
    "ema": (float, "decay of an exponential moving average of the weights, used for "
                   "validation and export (e.g. 0.999; default: none)"),
}


def register(sub) -> None:
    p = sub.add_parser(
        "finetune", help="fine-tune the layers above a cut from cached maps; export ONNX",
        description="Embed TRAIN (a folder, one sub-folder per class, or a store holding the "
        "maps) once at the cut, unpooled and float16, then train the blocks above the cut, the "
        "head conv and a new linear head from those maps only: the head starts from the frozen "
        "linear probe's solution, a stratified validation split picks the best epoch. Killed, "
        "it resumes from the last finished epoch (OUTPUT.ckpt). The result is a self-describing "
        "ONNX classifier: 'featurebank predict OUTPUT IMAGE...', 'featurebank serve --model "
        "OUTPUT'.")
    p.add_argument("train", metavar="TRAIN", help="folder of labelled images, or a store")
    p.add_argument("--model", default="efficientnet_lite0", help="EfficientNet-Lite registry name")
    p.add_argument("--from", dest="from_layer", default="blocks.12", metavar="LAYER",
                   help="cut: layers up to it stay frozen (default: blocks.12)")
    p.add_argument("--test", default=None, metavar="FOLDER_OR_STORE",
                   help="held-out images scored with the best epoch and the frozen probe")
    p.add_argument("--report", default=None, metavar="DIR", help="write finetune.json, curves.png")
    p.add_argument("-o", "--output", required=True, metavar="TUNED.onnx")
    p.add_argument("--work-dir", default=None, metavar="DIR",
                   help="where the maps of a folder are cached (default: maps/ in featurebank's "
                   "cache folder, $FEATUREBANK_CACHE or ~/.cache/featurebank)")
    for name, why in SWITCHES.items():
        p.add_argument("--" + name.replace("_", "-"), action="store_true", help=why)
    for name, (kind, why) in OPTION_FLAGS.items():
        default = getattr(DEFAULTS, name)
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=default,
                       help=why if "default" in why else f"{why} (default: {default})")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_finetune)


def run_finetune(args) -> int:
    from pathlib import Path

    from featurebank.errors import FeaturebankError
    from featurebank.finetune import finetune

    if not args.output.lower().endswith(".onnx"):
        raise FeaturebankError(f"-o {args.output}: the tuned model is an ONNX file; end the name "
                               "in .onnx")
    options = FinetuneOptions(**{k: getattr(args, k) for k in (*SWITCHES, *OPTION_FLAGS)})
    result = finetune(args.train, model=args.model, from_layer=args.from_layer, test=args.test,
                      output=Path(args.output), report=args.report, options=options,
                      work_dir=args.work_dir, progress=not args.no_progress)
    result.export(args.output)
    if args.report:  # again, now that the file (and its export time) exists
        from featurebank.finetune._report import write_report

        write_report(result, Path(args.report))
    if args.json:
        print(json.dumps(result.summary(), default=str))
        return 0
    probe = result.probe
    print(f"best epoch {result.best_epoch}: validation accuracy {result.val_accuracy:.4f} "
          f"(frozen linear probe {probe['val_accuracy']:.4f})")
    if result.test_accuracy is not None:
        print(f"test accuracy {result.test_accuracy:.4f} (frozen linear probe "
              f"{probe['test_accuracy']:.4f})")
    if args.report:
        print(f"report in {args.report}")
    print(f"wrote {args.output}: {result.conclusion()}")  # the last line: which model, and why
    return 0
