"""``featurebank`` console command: one subcommand module per step of the flow.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its subcommands
and sets ``func`` (called with the parsed args, returning an exit code) on each parser, and
optionally ``EXIT_CODES`` (command -> {status: meaning}) for its --help. The modules are thin:
they import only light modules at the top (flags come from the options dataclasses,
``featurebank.cli.flags``), and inside ``func`` call export / extractor / classical and print.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from featurebank.errors import FeaturebankError

COMMAND_MODULES = (
    "featurebank.cli.export_cmds",  # export, models, layers
    "featurebank.cli.embed_cmds",  # embed
    "featurebank.cli.store_cmds",  # store info, store export
    "featurebank.cli.classical_cmds",  # train, evaluate, predict, sweep
    "featurebank.cli.serve_cmd",  # serve
    "featurebank.cli.demo_cmd",  # demo
    "featurebank.cli.finetune_cmd",  # finetune
    "featurebank.cli.deploy_cmd",  # deploy
    "featurebank.cli.audit_cmds",  # neighbors, audit
    "featurebank.cli.compare_cmd",  # compare
)


class _VersionAction(argparse.Action):
    """``--version``: the version is looked up only when asked for (it costs ~30 ms)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        import featurebank

        print(f"featurebank {featurebank.__version__}")
        parser.exit()


#: what every command's exit status means (each --help ends with it)
EXIT_CODES = {0: "success", 1: "error (the message on stderr says what to do)",
              2: "usage error (unknown flag, missing argument)",
              130: "interrupted (Ctrl-C; what was committed is kept)"}


def exit_codes_epilog(extra: dict[int, str] | None = None) -> str:
    """The exit statuses of a command: the common ones, with ``extra`` (command-specific
    meanings) in their place."""
    codes = {**EXIT_CODES, **(extra or {})}
    return "exit status: " + "; ".join(f"{code} {codes[code]}" for code in sorted(codes))


def _document_exit_codes(parser: argparse.ArgumentParser, extra: dict) -> None:
    """Give ``parser`` and its nested command parsers ('store info') the exit-status epilog;
    ``extra`` (command name -> {code: meaning}, a module's ``EXIT_CODES``) adds their own."""
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        choices: dict[str, argparse.ArgumentParser] = action.choices  # type: ignore[assignment]
        for name, child in choices.items():
            if child.epilog is None:
                child.epilog = exit_codes_epilog(extra.get(name))
            _document_exit_codes(child, extra)


class _LogFormat(logging.Formatter):
    """One format for every command: our INFO lines plain (they are the command's progress),
    anything else prefixed by its level, and by its logger when it is not ours. ``render``
    writes our messages' parameters (``device='cuda'``) as the command's flags."""

    def __init__(self, render=None):
        super().__init__()
        self.render = render

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if self.render is not None and record.name.split(".")[0] == "featurebank":
            message = self.render(message)
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        package = record.name.split(".")[0]
        ours = package == "featurebank"
        if record.levelno == logging.INFO and ours:
            return message
        if ours:  # where in featurebank only matters when debugging
            where = f" ({record.name})" if record.levelno == logging.DEBUG else ""
        else:  # uvicorn, onnxscript, ...: the library, not its inner logger ('uvicorn.error')
            where = f" ({package})"
        return f"{record.levelname.lower()}{where}: {message}"


def configure_logging(verbose: bool = False, args: argparse.Namespace | None = None) -> None:
    """Our loggers at INFO (DEBUG with -v) in :class:`_LogFormat` on stderr; third-party
    libraries (onnxscript, onnx_ir, torch's exporter log a lot at INFO) at WARNING. With
    ``args`` (the parsed command), parameters in our messages are printed as its flags."""
    render = None
    if args is not None:
        from featurebank.cli.messages import render_for

        render = render_for(args)
    handler = logging.StreamHandler()
    handler.setFormatter(_LogFormat(render))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    logging.getLogger("featurebank").setLevel(logging.DEBUG if verbose else logging.INFO)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featurebank",
        description="Cut pretrained CNNs at any layer, embed images into an HDF5 feature store, "
        "train classical models on the features.",
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:  # a module that does not import is an error, never skipped
        module = importlib.import_module(name)
        module.register(sub)
        _document_exit_codes(parser, getattr(module, "EXIT_CODES", {}))  # this module's commands
    parser.epilog = exit_codes_epilog()
    from featurebank.cli.messages import record_parser_flags

    record_parser_flags(parser)  # which flag each parameter is, for the library's messages
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose, args)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FeaturebankError as exc:
        from featurebank.cli.messages import render_error

        print(f"featurebank {args.command}: error: {render_error(exc, args)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into `head` and friends: not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted; everything committed so far is kept. Run the same command again "
              "to resume: only what is missing is computed", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an unforeseen failure: one line, the trace kept aside
        print(f"featurebank {args.command}: error: {unexpected_error(exc, args.verbose)}",
              file=sys.stderr)
        return 1


def _failed_file(exc: BaseException) -> str | None:
    """The file an exception (or one it was raised from) names, when one does."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        name = getattr(exc, "filename", None)
        if name:
            return str(name)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


def unexpected_error(exc: BaseException, verbose: bool = False) -> str:
    """The one line a user reads for an exception featurebank did not foresee: what failed,
    on which file when known, and where the full trace is (written to a file; printed too
    with ``-v``)."""
    import tempfile
    import traceback

    trace = "".join(traceback.format_exception(exc))
    if verbose:
        print(trace, file=sys.stderr, end="")
    try:
        fd, where = tempfile.mkstemp(prefix="featurebank-error-", suffix=".txt")
        with open(fd, "w") as f:
            f.write(trace)
        kept = f"full trace in {where} (or run with -v to print it)"
    except OSError:  # nowhere to write it: -v still shows it
        kept = "run again with -v to print the full trace"
    what = f"{type(exc).__name__}: {exc}".strip().rstrip(":").splitlines()[0]
    on = _failed_file(exc)
    on_file = f" (file {on})" if on and on not in what else ""
    return f"unexpected {what}{on_file}; {kept}; please report it with the trace"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
