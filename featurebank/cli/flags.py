"""Command-line flags generated from options dataclasses (:mod:`featurebank.options`).

:func:`add_option_flags` turns the declared fields of an options class into ``--name`` flags:
the type and the choices come from the field's constraints, the default from the field, the
help from its ``help`` metadata or the first sentence of the class docstring's entry. So a
default, a choice or a help line has one source, the dataclass. :func:`options_from_args`
builds the options object back from the parsed arguments, and :func:`flag_names` tells
``featurebank.cli.main`` which flag stands for which parameter, so an
:class:`~featurebank.errors.OptionError` is printed with the user's flags
(``--batch-size must be an int >= 1, got 0``) and a library message's ``name=VALUE`` as
``--flag VALUE`` (:mod:`featurebank.cli.messages`, which also reads the hand-declared flags).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from featurebank.options import (
    Interval,
    Items,
    choices_of,
    constraints_of,
    default_of,
    help_of,
    option_fields,
)

#: argparse default holding, per parser, (options class name, parameter name) -> flag
FLAGS_KEY = "_option_flags"
#: argparse default holding, per parser, options class -> the fields it got flags for
FIELDS_KEY = "_option_fields"


def _kind(constraints: Iterable[Any]) -> type | None:
    """The argparse ``type`` of a field: int or float from an Interval or the type itself."""
    for c in constraints:
        if isinstance(c, Interval):
            return int if c.type is int else float
        if c in (int, float, str):
            return c
    return None


def _register(parser: Any, cls: type, names: dict[str, str]) -> None:
    register_flags(parser, cls.__name__, names)
    fields = parser.get_default(FIELDS_KEY) or {}
    known = fields.setdefault(cls, [])
    known += [n for n in names if n not in known]
    parser.set_defaults(**{FIELDS_KEY: fields})


def register_flags(parser: Any, owner: str, names: dict[str, str]) -> None:
    """Record that parameter ``name`` of ``owner`` (an options class or a function, as an
    :class:`~featurebank.errors.OptionError` names it) is the flag ``names[name]`` of this
    command, so that such an error is printed with the user's flags."""
    flags = parser.get_default(FLAGS_KEY) or {}
    flags.update({(owner, name): flag for name, flag in names.items()})
    parser.set_defaults(**{FLAGS_KEY: flags})


def add_option_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *,
                     only: Iterable[str] | None = None, exclude: Iterable[str] = (),
                     flags: Mapping[str, str | tuple[str, ...]] | None = None,
                     overrides: Mapping[str, Mapping[str, Any]] | None = None,
                     unstated: bool = False) -> dict[str, str]:
    """Add one flag per declared field of ``cls``; return parameter name -> flag.

    Parameters
    ----------
    parser : ArgumentParser or argument group
        (A group shares its parser's defaults, where the flag names are recorded.)
    cls : options dataclass
        Declared with :func:`featurebank.options.option`.
    only, exclude : iterable of str
        Which fields get a flag (default: all declared ones, in declaration order).
    flags : dict, optional
        Field -> flag for flags not spelt ``--field-name`` (``{'normalize': '--l2'}``), or a
        tuple of spellings, the first the one messages use (``('--resize', '--resize-size')``).
    overrides : dict, optional
        Field -> argparse keywords that replace the generated ones (``action='append'``...).
    unstated : bool
        Every flag defaults to None ("not stated": the value comes from elsewhere, a file or
        the graph, and a stated flag wins); help lines then show no default.
    """
    flags, overrides = flags or {}, overrides or {}
    wanted = list(only) if only is not None else [f.name for f in option_fields(cls)]
    by_name = {f.name: f for f in option_fields(cls)}
    names: dict[str, str] = {}
    for name in wanted:
        if name in exclude:
            continue
        f = by_name[name]
        spellings = flags.get(name, "--" + name.replace("_", "-"))
        spellings = (spellings,) if isinstance(spellings, str) else tuple(spellings)
        names[name] = spellings[0]
        extra = overrides.get(name, {})
        default = None if unstated else extra.get("default", _FIELD)
        parser.add_argument(*spellings, **{**_argparse_keywords(cls, f, default), **extra})
    _register(parser, cls, names)
    return names


_FIELD = object()  # "the field's own default"


def _argparse_keywords(cls: type, f: Any, default: Any = _FIELD) -> dict[str, Any]:
    default = default_of(f) if default is _FIELD else default
    constraints = constraints_of(f) or ()
    text = help_of(cls, f)
    keywords: dict[str, Any] = {"dest": f.name, "default": default}
    if bool in constraints:  # a switch: --name turns on, --no-name turns off
        keywords["action"] = argparse.BooleanOptionalAction
        keywords["help"] = text
        return keywords
    choices = choices_of(f)
    items = next((c for c in constraints if isinstance(c, Items)
                  and _kind([c.each]) in (int, float)), None)  # numbers: "A,B,C"
    if choices is not None:
        keywords["choices"] = choices
        keywords["type"] = type(choices[0])
    elif items is not None:
        keywords["type"] = _comma_list(_kind([items.each]) or float)
        keywords["metavar"] = ",".join("ABCDEFGH"[:items.length or 2]) + ("" if items.length else ",...")
    else:
        keywords["type"] = _kind(constraints) or str
    if default is not None and "default" not in text:
        text = f"{text} (default: {default})" if text else f"default: {default}"
    keywords["help"] = text
    if keywords["type"] in (int, float) and choices is None and "metavar" not in keywords:
        keywords["metavar"] = "N" if keywords["type"] is int else "X"
    return keywords


class _DeprecatedFlag(argparse.Action):
    """An old spelling of a flag: does what the new one does, after a one-line warning."""

    def __init__(self, option_strings, dest, *, new: str, nargs=None, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, nargs=nargs, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: warning: {option_string} is deprecated; use {self.new}",
              file=sys.stderr)
        setattr(namespace, self.dest, values if self.nargs != 0 else self.const)


def add_deprecated_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, old: str,
                        new: str, dest: str, **keywords: Any) -> None:
    """``old`` as a hidden alias of the flag ``new`` (stored in ``dest``): it still works and
    prints ``PROG: warning: OLD is deprecated; use NEW`` on stderr. ``keywords``: argparse's
    ``type``, ``metavar``, ``nargs=0`` with ``const`` for a switch."""
    parser.add_argument(old, dest=dest, action=_DeprecatedFlag, new=new, help=argparse.SUPPRESS,
                        default=argparse.SUPPRESS, **keywords)


def _comma_list(kind: type) -> Any:
    """An argparse type: ``'1,2,3'`` -> ``(1, 2, 3)`` of ``kind``."""
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind.__name__} values, got {text!r}") from None
    parse.__name__ = f"comma-separated {kind.__name__} list"  # what argparse names in errors
    return parse


def options_from_args(cls: type, args: argparse.Namespace, **extra: Any) -> Any:
    """``cls`` built from the flags :func:`add_option_flags` added for it, plus ``extra``."""
    fields = getattr(args, FIELDS_KEY, None) or {}
    values = {name: getattr(args, name) for name in fields.get(cls, ())}
    return cls(**{**values, **extra})


def flag_names(args: argparse.Namespace, owner: str | None = None) -> dict[str, str]:
    """Parameter name -> flag for the command that was parsed into ``args``: the flags of the
    options class named ``owner`` (an :class:`~featurebank.errors.OptionError`'s), or of every
    class when None. Another class's parameter of the same name keeps its own name."""
    flags = getattr(args, FLAGS_KEY, None) or {}
    return {name: flag for (cls, name), flag in flags.items() if owner in (None, cls)}


def add_exclude_flag(parser: argparse.ArgumentParser, rows: str = "training images",
                     kept: str = "recorded in the classifier, and 'evaluate' skips them") -> None:
    """``--exclude FILE`` (``train``, ``compare``, ``finetune``): one spelling, one meaning --
    content keys to leave out, read by :func:`exclusions_from_args`."""
    parser.add_argument("--exclude", default=None, metavar="FILE",
                        help=f"content keys of {rows} to leave out, one per line (the "
                        f"exclude.txt 'featurebank audit --report DIR' writes); {kept}")


def exclusions_from_args(args: argparse.Namespace) -> frozenset[str]:
    """The content keys of ``--exclude FILE`` (``train``, ``compare``, ``finetune``), read and
    checked before the command does any work; empty without the flag."""
    if not getattr(args, "exclude", None):
        return frozenset()
    from featurebank.classical import read_exclusions  # a stage: loaded only when asked

    return read_exclusions(args.exclude)
