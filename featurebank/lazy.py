"""Public names that load on first use: one ``__getattr__`` for every package's ``__init__``.

A package lists ``public name -> defining module`` and calls :func:`attach`; ``import
featurebank.extractor`` then costs nothing heavy, and ``featurebank.extractor.Extractor`` imports
onnxruntime only when it is first looked up (PEP 562). Type checkers see the names through each
``__init__``'s ``if TYPE_CHECKING:`` imports.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["attach"]


def attach(package: str, table: Mapping[str, str], renamed: Mapping[str, str] | None = None,
           deprecated: Mapping[str, str] | None = None,
           ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, loading ``table[name]`` on first use.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    table : mapping of str to str
        Public name -> the module that defines it.
    renamed : mapping of str to str, optional
        Public name -> its name in the defining module, where they differ.
    deprecated : mapping of str to str, optional
        Old public name -> the public name (in ``table``) that replaced it. Looking an old name
        up gives the new name's value with a ``DeprecationWarning``, every time (it is never
        cached, and ``dir()`` does not list it).
    """
    renamed, deprecated = renamed or {}, deprecated or {}

    def __getattr__(name: str) -> Any:
        if name in deprecated:
            new = deprecated[name]
            warnings.warn(f"{package}.{name} is deprecated; use {package}.{new}",
                          DeprecationWarning, stacklevel=2)
            return getattr(sys.modules[package], new)
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(table[name]), renamed.get(name, name))
        setattr(sys.modules[package], name, value)  # later look-ups skip this hook
        return value

    def __dir__() -> list[str]:
        module = sys.modules[package]
        return sorted(set(vars(module)) | set(getattr(module, "__all__", ())) | set(table))

    return __getattr__, __dir__
