"""``featurebank embed``: image collections into the feature store."""

from __future__ import annotations

import json

from featurebank.spec import DEFAULT_MODEL, DTYPES, POOLS, PRECISIONS, FeatureOptions

DEVICES = ("auto", "cpu", "cuda")
ENGINES = ("local", "ray")  # featurebank.extractor.engines._common.ENGINES, without importing it


def add_spec_arguments(p) -> None:
    """The feature options (:class:`featurebank.FeatureOptions`) shared by embed and serve."""
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"registry name or .onnx file (default: {DEFAULT_MODEL})")
    p.add_argument("--layer", dest="layers", action="append", metavar="NAME",
                   help="layer to cut at (catalogue or tensor name); repeat for several "
                        "(default: head)")
    p.add_argument("--pool", default="avg", choices=POOLS)
    p.add_argument("--gem-p", type=float, default=3.0, help="GeM exponent (with --pool gem)")
    p.add_argument("--l2", action="store_true", help="L2-normalise each vector")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")


def feature_options_from_args(args, **extra) -> FeatureOptions:
    """The one place the command line becomes :class:`featurebank.FeatureOptions`."""
    return FeatureOptions(model=args.model, layers=tuple(args.layers or ("head",)),
                          pool=args.pool, gem_p=args.gem_p, normalize=args.l2, **extra)


def register(sub) -> None:
    p = sub.add_parser("embed", help="embed images into an HDF5 feature store",
                       description="Embed folders (sub-folder = label), list files or globs. "
                       "Only content not yet in the store is computed.")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--store", required=True, help="HDF5 store (created when absent)")
    add_spec_arguments(p)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: cores)")
    p.add_argument("--dtype", default="float16", choices=DTYPES)
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="int8: static int8 graph calibrated on this collection (CPU speed; "
                        "vectors get a spec of their own); fp16: for --device cuda")
    p.add_argument("--calibration", type=int, default=128, metavar="N",
                   help="images sampled from the input to calibrate int8 on (default: 128)")
    p.add_argument("--engine", default="local", choices=ENGINES)
    p.add_argument("--address", default=None, help="Ray cluster address (with --engine ray)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_embed)


def run_embed(args) -> int:
    from featurebank.extractor.engines import EmbedRun, embed_collection

    run = EmbedRun(batch_size=args.batch_size, workers=args.workers, device=args.device,
                   threads=args.threads, dtype=args.dtype, progress=not args.no_progress,
                   engine=args.engine, address=args.address, calibration_size=args.calibration)
    summary = embed_collection(args.inputs, args.store,
                               feature_options_from_args(args, precision=args.precision), run=run)
    print(json.dumps(summary.to_dict()) if args.json else summary)
    return 0
