"""``featurebank embed``: image collections into the feature store."""

from __future__ import annotations

import json


def add_spec_arguments(p, multiple_layers: bool = True) -> None:
    """The spec options shared by embed, serve and friends."""
    p.add_argument("--model", default="efficientnet_lite0",
                   help="registry name or .onnx file (default: efficientnet_lite0)")
    if multiple_layers:
        p.add_argument("--layer", dest="layers", action="append", metavar="NAME",
                       help="layer to cut at (catalogue or tensor name); repeat for several "
                            "(default: head)")
    p.add_argument("--pool", default="avg", choices=["avg", "max", "gem", "none"])
    p.add_argument("--gem-p", type=float, default=3.0, help="GeM exponent (with --pool gem)")
    p.add_argument("--l2", action="store_true", help="L2-normalise each vector")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")


def register(sub) -> None:
    p = sub.add_parser("embed", help="embed images into an HDF5 feature store",
                       description="Embed folders (sub-folder = label), list files or globs. "
                       "Only content not yet in the store is computed.")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--store", required=True, help="HDF5 store (created when absent)")
    add_spec_arguments(p)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: cores)")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"],
                   help="int8: static int8 graph calibrated on this collection (CPU speed; "
                        "vectors get a spec of their own); fp16: for --device cuda")
    p.add_argument("--calibration", type=int, default=128, metavar="N",
                   help="images sampled from the input to calibrate int8 on (default: 128)")
    p.add_argument("--engine", default="local", choices=["local", "ray"])
    p.add_argument("--address", default=None, help="Ray cluster address (with --engine ray)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_embed)


def run_embed(args) -> int:
    from extractor.pipeline import embed_collection

    summary = embed_collection(
        args.inputs, args.store, model=args.model, layers=tuple(args.layers or ["head"]),
        pool=args.pool, gem_p=args.gem_p, normalize=args.l2, batch_size=args.batch_size,
        workers=args.workers, device=args.device, threads=args.threads, dtype=args.dtype,
        progress=not args.no_progress, engine=args.engine, address=args.address,
        precision=args.precision, calibration_size=args.calibration)
    print(json.dumps(summary.to_dict()) if args.json else summary)
    return 0
