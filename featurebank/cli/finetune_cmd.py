"""``featurebank finetune``: train the top layers from cached maps, export a tuned ONNX model."""

from __future__ import annotations

import json

from featurebank.cli.flags import (
    add_exclude_flag,
    add_option_flags,
    exclusions_from_args,
    options_from_args,
    register_flags,
)
from featurebank.finetune import FinetuneOptions
from featurebank.spec import DEFAULT_MODEL


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
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"registry name, timm:NAME or torchvision:NAME (with --weights FILE "
                   f"for a local state dict; default: {DEFAULT_MODEL})")
    p.add_argument("--from", dest="from_layer", default="blocks.12", metavar="LAYER",
                   help="cut: layers up to it stay frozen (default: blocks.12)")
    p.add_argument("--test", default=None, metavar="FOLDER_OR_STORE",
                   help="held-out images scored with the best epoch and the frozen probe")
    p.add_argument("--report", default=None, metavar="DIR", help="write finetune.json, curves.png")
    p.add_argument("-o", "--output", required=True, metavar="TUNED.onnx")
    p.add_argument("--work-dir", default=None, metavar="DIR",
                   help="where the maps of a folder are cached (default: maps/ in featurebank's "
                   "cache folder, $FEATUREBANK_CACHE or ~/.cache/featurebank)")
    add_exclude_flag(p, kept="recorded in the tuned file")
    add_option_flags(p.add_argument_group("training (FinetuneOptions)"), FinetuneOptions)
    # finetune()'s own parameters, as its errors name them
    register_flags(p, "finetune", {"model": "--model", "from_layer": "--from"})
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_finetune)


def run_finetune(args) -> int:
    from pathlib import Path

    from featurebank.errors import FeaturebankError
    from featurebank.finetune import finetune
    from featurebank.paths import check_writable

    if not args.output.lower().endswith(".onnx"):
        raise FeaturebankError(f"-o {args.output}: the tuned network is an ONNX file; end the "
                               "name in .onnx")
    check_writable(args.output, suffix=".onnx")
    options = options_from_args(FinetuneOptions, args)
    exclude = exclusions_from_args(args)  # read (and checked) before anything is embedded
    result = finetune(args.train, model=args.model, from_layer=args.from_layer, test=args.test,
                      output=Path(args.output), report=args.report, options=options,
                      work_dir=args.work_dir, progress=not args.no_progress, exclude=exclude)
    result.export(args.output)  # and the report, once
    if args.json:
        print(json.dumps(result.summary(), default=str))
        return 0
    # the run logged its progress, the test accuracy and the file it wrote; what is left to
    # say is the choice it made (once: the summary is not repeated), the last line saying
    # which model the file holds and why
    probe = result.probe
    print(f"best epoch {result.best_epoch}: validation accuracy {result.val_accuracy:.4f} "
          f"(frozen linear probe {probe['val_accuracy']:.4f})"
          + (f"; report in {args.report}" if args.report else ""))
    print(f"wrote {args.output}: {result.conclusion()}")
    return 0
