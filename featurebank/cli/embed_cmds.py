"""``featurebank embed``: image collections into the feature store."""

from __future__ import annotations

import json
from typing import Any

from featurebank.cli.flags import add_option_flags, options_from_args
from featurebank.extractor import EmbedRun
from featurebank.extractor.sources import SourceOptions
from featurebank.spec import FeatureOptions

#: how FeatureOptions fields are spelt on the command line where not ``--field-name``
_FEATURE_FLAGS = {"layers": "--layer", "normalize": "--l2"}
_FEATURE_OVERRIDES: dict[str, dict[str, Any]] = {
    "model": {"help": "registry name or .onnx file (default: %(default)s)"},
    "layers": {"action": "append", "metavar": "NAME", "default": None, "type": str,
               "help": "layer to cut at (catalogue or tensor name); repeat for several "
                       "(default: head)"},
    "gem_p": {"help": "GeM exponent (with --pool gem; default: %(default)s)"},
    "normalize": {"help": "L2-normalise each vector"},
    "precision": {"help": "int8: static int8 graph calibrated on this collection (CPU speed; "
                          "vectors get a spec of their own); fp16: for --device cuda"},
}


def add_spec_arguments(p, precision: bool = False, model_help: str | None = None) -> None:
    """The feature options (:class:`featurebank.FeatureOptions`) shared by embed and serve,
    and the device they run on."""
    overrides = _FEATURE_OVERRIDES
    if model_help:
        overrides = {**overrides, "model": {"help": model_help}}
    add_option_flags(p, FeatureOptions, flags=_FEATURE_FLAGS, overrides=overrides,
                     only=["model", "layers", "pool", "gem_p", "normalize"]
                     + (["precision"] if precision else []))
    p.add_argument("--preprocessing", metavar="FILE",
                   help="conventions of a foreign .onnx model (JSON/TOML, the fields of "
                        "'featurebank adopt'); adopting it once makes this unnecessary")
    add_option_flags(p, EmbedRun, only=["device", "threads"])


def feature_options_from_args(args, **extra) -> FeatureOptions:
    """The one place the command line becomes :class:`featurebank.FeatureOptions`.

    ``--preprocessing FILE`` is resolved against a foreign ``.onnx`` model's graph here; a
    model that describes itself refuses one. A foreign model without it is refused by the
    extractor when it cuts the graph (``extractor/graphs/_cut.py``, the one check), before any
    store is opened.
    """
    from featurebank.errors import FeaturebankError
    from featurebank.export import is_onnx_path

    model, given = args.model, getattr(args, "preprocessing", None)
    preprocessing = None
    if given and is_onnx_path(model):
        from featurebank.export import read_onnx_metadata, resolve_conventions

        if read_onnx_metadata(model).spec is not None:
            raise FeaturebankError(f"{model} describes its own preprocessing; drop "
                                   f"--preprocessing {given}")
        preprocessing, _ = resolve_conventions(model, given)
    elif given:
        raise FeaturebankError(f"--preprocessing is for a foreign .onnx model; {model} is a "
                               f"registry model that knows its own")
    return options_from_args(FeatureOptions, args, preprocessing=preprocessing, **extra)


def register(sub) -> None:
    p = sub.add_parser("embed", help="embed images into an HDF5 feature store",
                       description="Embed folders (sub-folder = label), list files (CSV, JSON lines, "
                       "parquet), webdataset tar shards, parquet files with image bytes or globs, "
                       "local or as fsspec URLs (s3://, gs://, az://, https://). "
                       "Only content not yet in the store is computed.")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--store", required=True, help="HDF5 store (created when absent)")
    add_spec_arguments(p, precision=True)
    add_option_flags(p, EmbedRun, flags={"calibration_size": "--calibration"},
                     only=["batch_size", "workers", "dtype", "calibration_size", "engine",
                           "address", "shard_rows", "progress"],
                     overrides={"workers": {"help": "decoding threads (local) or actors (Ray) "
                                                    "(default: by the machine)"},
                                "calibration_size": {
                                    "metavar": "N", "help": "images sampled from the input to "
                                    "calibrate int8 on (default: %(default)s)"}})
    add_option_flags(p, SourceOptions, overrides={name: {"metavar": "NAME"} for name in
                                                  ("split", "image_column", "label_column")})
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_embed)


def run_embed(args) -> int:
    from featurebank.extractor import embed_collection

    summary = embed_collection(args.inputs, args.store, feature_options_from_args(args),
                               run=options_from_args(EmbedRun, args),
                               sources=options_from_args(SourceOptions, args))
    print(json.dumps(summary.to_dict()) if args.json else summary)
    return 0
