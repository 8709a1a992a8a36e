"""``featurebank deploy``: one ONNX file from pixels to probabilities, and a Triton repository."""

from __future__ import annotations

import re
from pathlib import Path

from featurebank.cli.flags import add_option_flags, options_from_args, register_flags
from featurebank.deploy import DeployOptions


def register(sub) -> None:
    p = sub.add_parser(
        "deploy", help="write a classifier as one ONNX file (pixels in, probabilities out)",
        description="Fuse the classifier's feature graph (its cuts, concatenation, pooling and "
        "normalisation) with the classifier as plain tensor ops into one ONNX file: uint8 RGB "
        "pixels [N, H, W, 3] in (decoded, resized and cropped: resizing stays outside the "
        "graph), probabilities [N, C] and label [N] out, with the class names, preprocessing "
        "and lineage in its metadata and FILE.README.md beside it. It runs in plain "
        "onnxruntime, Triton or KServe, without featurebank. --triton REPO also writes "
        "REPO/NAME/1/model.onnx and REPO/NAME/config.pbtxt.")
    p.add_argument("classifier", metavar="CLASSIFIER",
                   help="a 'featurebank train' or 'compare' classifier (.joblib) or a "
                        "'featurebank finetune' model (.onnx)")
    p.add_argument("-o", "--output", default=None, metavar="FILE.onnx",
                   help="the fused ONNX file (default: CLASSIFIER with .onnx, or .deploy.onnx "
                        "for a tuned .onnx; none when only --triton is given)")
    add_option_flags(p, DeployOptions, exclude=["output"],
                     overrides={"triton": {"metavar": "REPO"}, "name": {"metavar": "NAME"},
                                "model": {"metavar": "FILE.onnx"}})
    register_flags(p, "DeployOptions", {"output": "-o/--output"})
    p.set_defaults(func=run_deploy)


def default_output(classifier: str) -> str:
    """CLASSIFIER with ``.onnx``; ``.deploy.onnx`` for a tuned ONNX file (not itself)."""
    from featurebank.paths import is_onnx_path

    path = Path(classifier)
    suffix = ".deploy.onnx" if is_onnx_path(path) else ".onnx"
    return str(path.with_name(path.stem + suffix))


def run_deploy(args) -> int:
    from featurebank.errors import FeaturebankError
    from featurebank.paths import check_writable

    options = options_from_args(DeployOptions, args, output=args.output)
    if not Path(args.classifier).is_file():
        raise FeaturebankError(f"classifier file {args.classifier} does not exist; train one "
                               "with 'featurebank train' (or 'featurebank finetune')")
    output = options.output or (None if options.triton else default_output(args.classifier))
    target = None
    if output is not None:  # every output is checked before the graph is built
        if Path(output).resolve() == Path(args.classifier).resolve():
            raise FeaturebankError(f"-o {output} is the classifier itself; name another file")
        check_writable(output, suffix=".onnx")
        from featurebank.deploy import check_replaceable, readme_path

        check_replaceable(output)
        check_writable(readme_path(output), what="README")
    if options.triton:
        from featurebank.deploy import triton_target

        name = options.name or re.sub(r"[^A-Za-z0-9_.-]", "_", Path(args.classifier).stem)
        target = triton_target(options.triton, name)
    from featurebank.deploy import build_deployable, readme_path, write_triton

    deployable = build_deployable(args.classifier, model=options.model)
    h, w = deployable.input_size
    shape = f"uint8 pixels [N, {h}, {w}, 3] -> probabilities [N, {len(deployable.classes)}]"
    if output is not None:
        deployable.save(output)
        print(f"wrote {output} ({deployable.description['kind']}: {shape}); "
              f"preprocessing in {readme_path(output)}")
    if target is not None:
        folder = write_triton(deployable, target.parent, target.name, options)
        print(f"wrote Triton model {folder} (version 1, config.pbtxt, labels.txt)")
    return 0
