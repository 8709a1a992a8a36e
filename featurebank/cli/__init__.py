"""``featurebank`` console command: one subcommand module per step of the flow.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its subcommands
and sets ``func`` (called with the parsed args, returning an exit code) on each parser. The
modules are thin: they parse, call export / extractor / classical, and print.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from featurebank.errors import FeaturebankError, OptionError

COMMAND_MODULES = (
    "featurebank.cli.export_cmds",  # export, models, layers
    "featurebank.cli.embed_cmds",  # embed
    "featurebank.cli.store_cmds",  # store info, store export
    "featurebank.cli.classical_cmds",  # train, evaluate, predict, sweep
    "featurebank.cli.serve_cmd",  # serve
    "featurebank.cli.demo_cmd",  # demo
    "featurebank.cli.finetune_cmd",  # finetune
)


def build_parser() -> argparse.ArgumentParser:
    from featurebank import __version__

    parser = argparse.ArgumentParser(
        prog="featurebank",
        description="Cut pretrained CNNs at any layer, embed images into an HDF5 feature store, "
        "train classical models on the features.",
    )
    parser.add_argument("--version", action="version", version=f"featurebank {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # not written yet in this tree; other import errors surface
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Third-party libraries (onnxscript, onnx_ir, torch's exporter) log a lot at INFO: keep
    # them at WARNING and our own packages at INFO.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for ours in ("featurebank",):
        logging.getLogger(ours).setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FeaturebankError as exc:
        from featurebank.cli.flags import flag_names

        message = exc.with_names(flag_names(args)) if isinstance(exc, OptionError) else exc
        print(f"featurebank {args.command}: error: {message}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into `head` and friends: not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted; everything committed so far is kept. Run the same command again "
              "to resume: only what is missing is computed", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
