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
    p.add_argument("--preprocessing", metavar="FILE",
                   help="conventions of a foreign .onnx model (JSON/TOML, the fields of "
                        "'featurebank adopt'); adopting it once makes this unnecessary")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")


def feature_options_from_args(args, **extra) -> FeatureOptions:
    """The one place the command line becomes :class:`featurebank.FeatureOptions`.

    A foreign ``.onnx`` model is checked here, before any store is opened: it needs
    ``--preprocessing FILE`` (resolved against its graph), and a model that describes itself
    refuses one.
    """
    from featurebank.errors import FeaturebankError
    from featurebank.export import is_onnx_path

    model = args.model
    preprocessing = None
    if model is not None and is_onnx_path(model):
        from featurebank.export import read_onnx_metadata, resolve_conventions

        described = read_onnx_metadata(model).spec is not None
        given = getattr(args, "preprocessing", None)
        if described and given:
            raise FeaturebankError(f"{model} describes its own preprocessing; drop "
                                   f"--preprocessing {given}")
        if not described and not given:
            raise FeaturebankError(
                f"{model} was not made by featurebank, so its preprocessing is unknown: adopt it "
                f"once ('featurebank adopt {model} -o ADOPTED.onnx --pixel-range 1|255 "
                f"--channel-order rgb|bgr ...') or state --preprocessing FILE")
        if given:
            preprocessing, _ = resolve_conventions(model, given)
    elif getattr(args, "preprocessing", None):
        raise FeaturebankError(f"--preprocessing is for a foreign .onnx model; {model} is a "
                               f"registry model that knows its own")
    return FeatureOptions(model=model, layers=tuple(args.layers or ("head",)),
                          pool=args.pool, gem_p=args.gem_p, normalize=args.l2,
                          preprocessing=preprocessing, **extra)


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
    p.add_argument("--shard-rows", type=int, default=None, metavar="N",
                   help="with --engine ray: rows per shard file (default: 16 x batch size)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_embed)


def run_embed(args) -> int:
    from featurebank.extractor.engines import EmbedRun, embed_collection

    run = EmbedRun(batch_size=args.batch_size, workers=args.workers, device=args.device,
                   threads=args.threads, dtype=args.dtype, progress=not args.no_progress,
                   engine=args.engine, address=args.address, calibration_size=args.calibration,
                   shard_rows=args.shard_rows)
    summary = embed_collection(args.inputs, args.store,
                               feature_options_from_args(args, precision=args.precision), run=run)
    print(json.dumps(summary.to_dict()) if args.json else summary)
    return 0
