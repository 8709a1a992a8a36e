"""Command-line flags generated from options dataclasses (:mod:`featurebank.options`).

:func:`add_option_flags` turns the declared fields of an options class into ``--name`` flags:
the type and the choices come from the field's constraints, the default from the field, the
help from its ``help`` metadata or the first sentence of the class docstring's entry. So a
default, a choice or a help line has one source, the dataclass. :func:`options_from_args`
builds the options object back from the parsed arguments, and :func:`flag_names` tells
``featurebank.cli.main`` which flag stands for which parameter, so an
:class:`~featurebank.errors.OptionError` is printed with the user's flags
(``--batch-size must be an int >= 1, got 0``).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from featurebank.options import (
    Interval,
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
                     flags: dict[str, str] | None = None,
                     overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, str]:
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
        Field -> flag for flags not spelt ``--field-name`` (``{'normalize': '--l2'}``).
    overrides : dict, optional
        Field -> argparse keywords that replace the generated ones (``action='append'``...).
    """
    flags, overrides = flags or {}, overrides or {}
    wanted = list(only) if only is not None else [f.name for f in option_fields(cls)]
    by_name = {f.name: f for f in option_fields(cls)}
    names: dict[str, str] = {}
    for name in wanted:
        if name in exclude:
            continue
        f = by_name[name]
        flag = flags.get(name, "--" + name.replace("_", "-"))
        names[name] = flag
        parser.add_argument(flag, **{**_argparse_keywords(cls, f), **overrides.get(name, {})})
    _register(parser, cls, names)
    return names


def _argparse_keywords(cls: type, f: Any) -> dict[str, Any]:
    default = default_of(f)
    constraints = constraints_of(f) or ()
    text = help_of(cls, f)
    keywords: dict[str, Any] = {"dest": f.name, "default": default}
    if bool in constraints:  # a switch: --name turns on, --no-name turns off
        keywords["action"] = argparse.BooleanOptionalAction
        keywords["help"] = text
        return keywords
    choices = choices_of(f)
    if choices is not None:
        keywords["choices"] = choices
        keywords["type"] = type(choices[0])
    else:
        keywords["type"] = _kind(constraints) or str
    if default is not None and "default" not in text:
        text = f"{text} (default: {default})" if text else f"default: {default}"
    keywords["help"] = text
    if keywords["type"] in (int, float) and choices is None:
        keywords["metavar"] = "N" if keywords["type"] is int else "X"
    return keywords


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
