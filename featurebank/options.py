"""One way to declare and check options: constraints on dataclass fields, checked at the boundary.

In the spirit of scikit-learn's ``_parameter_constraints`` / ``validate_params``. An options
dataclass declares each field with :func:`option`: its default, the constraints a value must
meet (any one of them), and optionally a help line. Its ``__post_init__`` calls
:func:`check_options` once; everything past that boundary trusts the values. A value that meets
no constraint raises :class:`~featurebank.errors.OptionError` (a ``FeaturebankError`` and a
``ValueError``) whose message names the *parameter*; the command line maps parameter names to
its flags when it prints one (``featurebank.cli.flags``).

Constraints:

- :class:`Interval` (``Interval(int, 1, None)``: an int >= 1; ``closed`` as in scikit-learn);
- :class:`Options` (one of a tuple of values); :class:`Items` (a tuple whose items meet one);
- :class:`Text` (a non-empty string); :class:`Pair` (a (key, value) pair);
- ``None`` (the value may be None);
- a type (``str``, ``bool``, a dataclass ...): an instance of it;
- ``"any"``: anything (a documented field that is not checked here).

This module imports only the standard library: an options dataclass built on it loads fast.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from dataclasses import MISSING, dataclass, field
from numbers import Integral, Real
from typing import Any

from featurebank.errors import OptionError

__all__ = ["Interval", "Items", "OptionError", "Options", "Pair", "Text", "check_names", "check_options",
           "check_params", "check_value", "describe", "field_constraints", "option", "option_fields", "param_docs"]

#: metadata keys of an option field
_CONSTRAINTS = "featurebank.constraints"
_HELP = "featurebank.help"


@dataclass(frozen=True)
class Interval:
    """A number of ``type`` (``int`` or ``float``) between ``left`` and ``right`` (None: no
    bound). ``closed``: which bounds belong to it, ``'both'``, ``'left'``, ``'right'`` or
    ``'neither'``. A bool is never a number here; an int is a float."""

    type: type
    left: float | None
    right: float | None
    closed: str = "both"

    def __post_init__(self) -> None:
        if self.closed not in ("both", "left", "right", "neither"):
            raise ValueError(f"closed must be both, left, right or neither, got {self.closed!r}")

    def accepts(self, value: Any) -> bool:
        kind = Integral if self.type is int else Real
        if isinstance(value, bool) or not isinstance(value, kind):
            return False
        value = float(value)  # numbers.Real has no ordering for type checkers; a float has
        if self.left is not None:
            if value < self.left or (value == self.left and self.closed in ("right", "neither")):
                return False
        if self.right is not None:
            if value > self.right or (value == self.right and self.closed in ("left", "neither")):
                return False
        return True

    def __str__(self) -> str:
        kind = "an int" if self.type is int else "a float"
        if self.left is not None and self.right is None:
            return f"{kind} {'>=' if self.closed in ('both', 'left') else '>'} {self.left:g}"
        if self.right is not None and self.left is None:
            return f"{kind} {'<=' if self.closed in ('both', 'right') else '<'} {self.right:g}"
        if self.left is None:
            return kind
        lo = "[" if self.closed in ("both", "left") else "("
        hi = "]" if self.closed in ("both", "right") else ")"
        return f"{kind} in {lo}{self.left:g}, {self.right:g}{hi}"


@dataclass(frozen=True)
class Options:
    """One of ``choices`` (strings or numbers; a bool is never a number here)."""

    choices: tuple[Any, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", tuple(self.choices))

    def accepts(self, value: Any) -> bool:
        return not isinstance(value, bool) and value in self.choices

    def __str__(self) -> str:
        return f"one of {self.choices}"


@dataclass(frozen=True)
class Items:
    """A tuple (or list) of ``length`` items (any length when None), each meeting ``each``."""

    each: Any
    length: int | None = None

    def accepts(self, value: Any) -> bool:
        # a 1-D numpy array (np.logspace(...)) is a sequence of numbers too
        sequence = isinstance(value, (tuple, list)) or getattr(value, "ndim", None) == 1
        return (sequence
                and (self.length is None or len(value) == self.length)
                and all(_accepts(self.each, v) for v in value))

    def __str__(self) -> str:
        count = f"{self.length} values" if self.length is not None else "values"
        return f"{count}, each {_describe_one(self.each)}"


@dataclass(frozen=True)
class Text:
    """A string that is not empty or blank (a name, a column)."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and bool(value.strip())

    def __str__(self) -> str:
        return "a non-empty string"


@dataclass(frozen=True)
class Pair:
    """A (key, value) pair (a 2-tuple or list): the key meets ``key``, the value ``value``."""

    key: Any
    value: Any

    def accepts(self, value: Any) -> bool:
        return (isinstance(value, (tuple, list)) and len(value) == 2
                and _accepts(self.key, value[0]) and _accepts(self.value, value[1]))

    def __str__(self) -> str:
        return f"a pair ({_describe_one(self.key)}, {_describe_one(self.value)})"


def _accepts(constraint: Any, value: Any) -> bool:
    if constraint is None:
        return value is None
    if constraint == "any":
        return True
    if isinstance(constraint, type):
        if constraint is float:  # as in JSON and argparse: an int is a float, a bool is not
            return isinstance(value, Real) and not isinstance(value, bool)
        if constraint is int:
            return isinstance(value, Integral) and not isinstance(value, bool)
        return isinstance(value, constraint)
    return constraint.accepts(value)


def _describe_one(constraint: Any) -> str:
    if constraint is None:
        return "None"
    if isinstance(constraint, type):
        article = "an" if constraint.__name__[0].lower() in "aeiou" else "a"
        return f"{article} {constraint.__name__}"
    return str(constraint)


def describe(constraints: Sequence[Any]) -> str:
    """``constraints`` in words: ``'an int >= 1 or None'``."""
    words = [_describe_one(c) for c in constraints if c is not None]
    if None in constraints:
        words.append("None")
    return " or ".join(words)


def option(default: Any = MISSING, *constraints: Any, help: str | None = None,
           default_factory: Any = MISSING, **field_kwargs: Any) -> Any:
    """A dataclass field with its constraints (any one must hold) and an optional help line.

    ``help`` overrides the first sentence of the class docstring's entry for the field (what
    generated command-line flags show).
    """
    metadata = {_CONSTRAINTS: tuple(constraints), _HELP: help}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata, **field_kwargs)
    return field(default=default, metadata=metadata, **field_kwargs)


def constraints_of(f: dataclasses.Field) -> tuple[Any, ...] | None:
    """The constraints declared on a field, or None for a field not declared with
    :func:`option`."""
    return f.metadata.get(_CONSTRAINTS)


def option_fields(cls_or_obj: Any) -> list[dataclasses.Field]:
    """The fields of an options dataclass declared with :func:`option`, in order."""
    return [f for f in dataclasses.fields(cls_or_obj) if constraints_of(f) is not None]


def check_options(obj: Any, prefix: str = "") -> None:
    """Check every declared field of the dataclass instance ``obj``; raise
    :class:`OptionError` naming the first field whose value meets none of its constraints.

    ``prefix`` is put before the field names in messages (``'preprocessing.'``)."""
    for f in option_fields(obj):
        if constraints_of(f):
            check_value(prefix + f.name, getattr(obj, f.name), *constraints_of(f) or (),
                        owner=type(obj).__name__)


def check_value(name: str, value: Any, *constraints: Any, owner: str | None = None) -> Any:
    """Check one value the way :func:`check_options` checks a field (for function arguments
    that are no dataclass field); return it."""
    if not any(_accepts(c, value) for c in constraints):
        raise OptionError(name, f"must be {describe(constraints)}, got {value!r}", owner=owner)
    return value


def _clean_lines(doc: str) -> list[str]:
    """The docstring's lines with the common indent of all but the first removed."""
    lines = doc.expandtabs().splitlines()
    widths = [len(ln) - len(ln.lstrip()) for ln in lines[1:] if ln.strip()]
    cut = min(widths, default=0)
    return [lines[0].strip()] + [ln[cut:] for ln in lines[1:]] if lines else []


def _is_rule(line: str) -> bool:
    return len(line.strip()) >= 3 and set(line.strip()) == {"-"}


def param_docs(cls: type) -> dict[str, str]:
    """Field name -> its description in the ``Parameters`` section of ``cls``'s numpydoc
    docstring (joined into one line; ``'a, b : float'`` documents both)."""
    lines = _clean_lines(cls.__doc__ or "")
    starts = [i + 2 for i in range(len(lines) - 1)
              if lines[i].strip() == "Parameters" and _is_rule(lines[i + 1])]
    out: dict[str, str] = {}
    names: list[str] = []
    for i in range(starts[0] if starts else len(lines), len(lines)):
        line = lines[i]
        if not line.strip():
            continue
        if i + 1 < len(lines) and _is_rule(lines[i + 1]):
            break  # the next section
        if not line.startswith(" "):  # "name : type" or "a, b : type"
            names = [n.strip() for n in line.split(":")[0].split(",")]
            out.update({n: "" for n in names})
        else:
            for n in names:
                out[n] = f"{out[n]} {line.strip()}".strip()
    return out


def first_sentence(text: str) -> str:
    """The first sentence of ``text`` (up to '. ' or '; '), without its final period."""
    head = re.split(r"(?<=[a-z0-9)\]'])[.;] ", text, maxsplit=1)[0]
    return head.rstrip(".")


def help_of(cls: type, f: dataclasses.Field) -> str:
    """A field's help line: its ``help`` metadata, else the first sentence of its docstring
    entry."""
    if f.metadata.get(_HELP):
        return f.metadata[_HELP]
    text = first_sentence(param_docs(cls).get(f.name, ""))
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")  # reST to plain text
    if len(text) > 1 and text[0].isupper() and (text[1].islower() or text[1] == " "):  # argparse's own style
        text = text[0].lower() + text[1:]
    return text


def choices_of(f: dataclasses.Field) -> tuple[str, ...] | None:
    for c in constraints_of(f) or ():
        if isinstance(c, Options):
            return c.choices
    return None


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def _known_names(source: Any) -> list[str]:
    if dataclasses.is_dataclass(source):
        return [f.name for f in dataclasses.fields(source)]
    return list(source)


def check_names(owner: str, names: Iterable[str], *known: Any,
                parameter: str = "options") -> None:
    """Refuse keyword names that none of ``known`` declares: the one unknown-keyword check.

    Parameters
    ----------
    owner : str
        Who takes the keywords (``'embed_collection'``, ``'preprocessing'``): named in the
        message and the error's ``owner``.
    names : iterable of str
        The names given.
    *known : options dataclasses or iterables of str
        What may be given (a dataclass stands for its field names).
    parameter : str
        The parameter the error names (``'options'`` for ``**options``).

    Raises
    ------
    OptionError
        Naming every unknown name and listing the known ones.
    """
    allowed = [n for source in known for n in _known_names(source)]
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        raise OptionError(parameter, f"of {owner}: unknown option(s) {unknown}; known: "
                          f"{sorted(set(allowed))}", owner=owner)


def field_constraints(cls: type, *names: str) -> dict[str, list[Any]]:
    """``{name: [constraints]}`` of fields of the options dataclass ``cls``: an estimator whose
    parameters feed that dataclass declares its ``_parameter_constraints`` with this, so the
    two never disagree."""
    by_name = {f.name: f for f in option_fields(cls)}
    return {name: list(constraints_of(by_name[name]) or ()) for name in names}


def check_params(estimator: Any) -> None:
    """Check a scikit-learn estimator's parameters against its ``_parameter_constraints``
    (parameter name -> constraints, any one of which must hold, as in :func:`option`).

    scikit-learn's contract forbids validation in ``__init__``: ``fit`` calls this first, so
    ``set_params`` and ``clone`` stay free and a bad value fails before any work, with an
    :class:`OptionError` naming the parameter.
    """
    owner = type(estimator).__name__
    for name, constraints in estimator._parameter_constraints.items():
        check_value(name, getattr(estimator, name), *constraints, owner=owner)


def renamed_keyword(owner: str, old: str, new: str, old_value: Any, new_value: Any) -> Any:
    """The value of a keyword argument renamed from ``old`` to ``new`` (the vocabulary's
    renames): ``new_value``, else ``old_value`` with a ``DeprecationWarning``; both given is an
    :class:`OptionError`. Unset is None on both sides."""
    if old_value is None:
        return new_value
    if new_value is not None:
        raise OptionError(new, f"and {old} (its former name) are both given; give {new} only",
                          owner=owner, related=(old,))
    import warnings

    warnings.warn(f"{owner}({old}=...) is deprecated; use {new}=...", DeprecationWarning,
                  stacklevel=3)
    return old_value
