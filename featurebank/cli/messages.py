"""Library messages printed with the command's own flags.

The library names a parameter in Python keyword form, ``name=VALUE`` (``weights=FILE``,
``folds=N``, ``baseline=False``, ``index='exact'``), so a Python user can paste it.
:func:`render_error` prints such a message for the command that was parsed: ``name=VALUE``
becomes ``--flag VALUE``, a switch ``name=False`` its negative spelling (``--no-flag``) and
``name=True`` its positive one. The flag for a name comes from the generated flags
(:func:`featurebank.cli.flags.flag_names`, which also holds names registered by hand with
:func:`~featurebank.cli.flags.register_flags` where the command's flag differs from the Python
name, or a whole keyword where one value is a flag of its own: ``{"unseen='wrong'":
"--unseen-as-wrong"}``) and then from the parser's own actions (dest -> first long option
string), recorded per sub-command by :func:`record_parser_flags` when the parser is built. A
tuple value is a comma-separated flag value (``input_size=(H, W)`` -> ``--input-size H,W``), a
list one flag per item (``layers=['a', 'b']`` -> ``--layer a --layer b``). A name the command
has no flag for stays in Python form: a flag is never guessed.
"""

from __future__ import annotations

import argparse
import ast
import re
from collections.abc import Callable
from typing import NamedTuple

from featurebank.cli.flags import flag_names
from featurebank.errors import FeaturebankError, OptionError

#: argparse default holding, per parser, dest -> the flag(s) its own action declares
ACTIONS_KEY = "_action_flags"

# name=VALUE: VALUE a quoted string, a [list], a (tuple), or a run up to a space or , ; ) ]
_VALUE = r"""'[^']*'|"[^"]*"|\[[^\]]*\]|\([^)]*\)|[^\s,;()\[\]'"]+?"""
# a call or a repr (Preprocessing(input_size=(224, 224), ...)): Python, whatever it names
_CALL = re.compile(r"[A-Za-z_]\w*\((?:[^()]|\([^()]*\))*\)")
_KEYWORD = re.compile(rf"(?<![\w.'\"-])([a-z_][a-z0-9_]*)=({_VALUE})(?=$|[\s,;)\]:]|\.(?:\s|$))")


class Flag(NamedTuple):
    """How a command spells one parameter: ``flag`` takes its value; a switch's ``on`` and
    ``off`` set it True and False (None where the command has no such spelling)."""

    flag: str
    metavar: str
    on: str | None = None
    off: str | None = None


def _action_flag(action: argparse.Action) -> Flag | None:
    """What one parser action means for messages; None for one that names no parameter."""
    longs = [s for s in action.option_strings if s.startswith("--")]
    if not longs or action.help == argparse.SUPPRESS:  # -h, positionals, deprecated aliases
        return None
    flag = Flag(longs[0], str(action.metavar or action.dest.upper()))
    if isinstance(action, argparse.BooleanOptionalAction):
        return flag._replace(on=longs[0], off=next((s for s in longs if s.startswith("--no-")),
                                                   None))
    if isinstance(action, argparse._StoreTrueAction):
        return flag._replace(on=longs[0])
    if isinstance(action, argparse._StoreFalseAction):
        return flag._replace(off=longs[0])
    return None if action.nargs == 0 else flag  # store_const, count, version: no value


def record_parser_flags(parser: argparse.ArgumentParser) -> None:
    """Record, on ``parser`` and every (nested) sub-command parser below it, dest -> flag of
    its own actions, so that :func:`render_error` finds the flags of the parsed command."""
    recorded: dict[str, Flag] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                record_parser_flags(child)
            continue
        flag = _action_flag(action)
        if flag is not None:
            recorded.setdefault(action.dest, flag)
    parser.set_defaults(**{ACTIONS_KEY: recorded})


def _names(args: argparse.Namespace, owner: str | None = None) -> dict[str, Flag]:
    """Python name -> flag for the parsed command: its actions' dests, overridden by the
    registered flags (:func:`~featurebank.cli.flags.register_flags`), those of ``owner`` (an
    OptionError's options class) last."""
    actions: dict[str, Flag] = getattr(args, ACTIONS_KEY, None) or {}
    by_flag = {flag.flag: flag for flag in actions.values()}
    names = dict(actions)
    for mapping in (flag_names(args), flag_names(args, owner) if owner else {}):
        for name, text in mapping.items():
            names[name] = by_flag.get(text) or Flag(text, name.upper())
    return names


def _flag_text(flag: Flag, value: str) -> str | None:
    """``--flag VALUE`` (or the switch spelling) for one ``name=VALUE``; None: keep Python."""
    if value in ("True", "False"):
        return flag.on if value == "True" else flag.off
    if value in ("None", "[]"):
        return None
    if value.startswith("["):
        if "..." in value:  # [...], [LAYER, ...]: a placeholder
            return f"{flag.flag} {flag.metavar}"
        try:
            items = ast.literal_eval(value)
        except (ValueError, SyntaxError):  # [LAYER]: names, not literals
            items = [v.strip() for v in value[1:-1].split(",") if v.strip()]
        return " ".join(f"{flag.flag} {item}" for item in items) or None
    if value.startswith("("):  # a comma-separated flag value: (H, W) -> H,W
        value = ",".join(v.strip().strip("'\"") for v in value[1:-1].split(",") if v.strip())
    elif value[0] in "'\"":
        value = value[1:-1]
    return f"{flag.flag} {value}"


def render(message: str, names: dict[str, Flag]) -> str:
    """``message`` with each ``name=VALUE`` the command has a flag for written as that flag
    (not inside a call or a repr, which stays Python)."""
    calls = [m.span() for m in _CALL.finditer(message)]

    def one(match: re.Match) -> str:
        if any(start < match.start() < stop for start, stop in calls):
            return match.group(0)
        whole = names.get(match.group(0))  # a registered keyword: "unseen='wrong'"
        if whole is not None:
            return whole.flag
        flag = names.get(match.group(1))
        text = _flag_text(flag, match.group(2)) if flag else None
        return text or match.group(0)

    return _KEYWORD.sub(one, message)


def render_for(args: argparse.Namespace) -> Callable[[str], str]:
    """A function writing a message's parameters as the flags of the command parsed into
    ``args`` (for its log lines: ``device='cuda'`` -> ``--device cuda``)."""
    names = _names(args)
    return lambda message: render(message, names)


def render_error(exc: FeaturebankError, args: argparse.Namespace) -> str:
    """The message of ``exc`` as the command line prints it: parameters as the parsed
    command's flags (an OptionError's leading parameter and ``related`` names included)."""
    if not isinstance(exc, OptionError):
        return render(str(exc), _names(args))
    names = _names(args, exc.owner)
    rendered = OptionError(exc.parameter, render(exc.problem, names), owner=exc.owner,
                           related=exc.related)
    leading = {name: flag.flag for name, flag in names.items()}
    if exc.owner:  # a parameter only another options class has a flag for keeps its name
        others = set(flag_names(args)) - set(flag_names(args, exc.owner))
        leading = {name: text for name, text in leading.items() if name not in others}
    return rendered.with_names(leading)
