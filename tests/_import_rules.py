"""The import walk and the house rules it checks (tests/test_architecture.py runs them on the
installed package, tests/test_import_rules.py on planted violations).

Two views of a module's imports:

- *run time*: import statements, at the top and inside functions; ``if TYPE_CHECKING:``
  blocks never run. The cycle check reads this view.
- *static*: the run-time view plus ``TYPE_CHECKING`` imports, ``import_module("literal")``
  calls and module names in lazy tables (string values of a dict or items of a tuple/list that
  name a module of the package, as ``featurebank.lazy.attach`` tables and ``COMMAND_MODULES``
  do). The stage and private-module rules read this view: a private module reached through a
  lazy table is still reached.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

STAGES = ("export", "extractor", "classical", "finetune")
#: the modules every stage may import, which import no stage (and only the standard library)
GROUND_FLOOR = ("featurebank.spec", "featurebank.errors", "featurebank.options",
                "featurebank.lazy", "featurebank.paths")
#: above the stages, below the entry points: what the faces share (loading a classifier, the demo)
ABOVE = ("featurebank.predict", "featurebank.demo", "featurebank.deploy", "featurebank.compare")
#: packages of their own above the stages (their private modules are theirs alone)
OWN_PACKAGES = ("deploy", "compare")
ENTRY = ("featurebank.cli", "featurebank.service")


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _call_name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _strings(node: ast.AST) -> list[str]:
    """String constants that could name modules: a dict's values, a tuple's or list's items,
    an ``import_module`` call's first argument."""
    if isinstance(node, ast.Dict):
        values: Iterable[ast.AST | None] = node.values
    elif isinstance(node, (ast.Tuple, ast.List)):
        values = node.elts
    elif isinstance(node, ast.Call) and _call_name(node.func) == "import_module":
        values = node.args[:1]
    else:
        return []
    return [v.value for v in values if isinstance(v, ast.Constant) and isinstance(v.value, str)]


def imports(tree: ast.AST, module: str, is_package: bool,
            static: bool = False) -> list[tuple[str, str | None]]:
    """What a module imports as (module, name) pairs: ``import a.b`` -> ("a.b", None),
    ``from a import b`` -> ("a", "b"); a string of the static view -> (string, None)."""
    found: list[tuple[str, str | None]] = []
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node):
            for child in [*(node.body if static else []), *node.orelse]:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((a.name, None) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            found.extend((base, a.name) for a in node.names)
        elif static:
            found.extend((s, None) for s in _strings(node) if s.startswith("featurebank."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def build_graph(files: dict[str, Path], static: bool = False) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``files``: dotted name -> source file).

    ``from pkg import sub`` counts as importing the submodule ``sub`` when there is one, else
    ``pkg``; a parent package imported only on the way to a submodule does not count (Python
    imports it, but a cycle through it needs ``pkg/__init__`` to import the importer).
    """
    graph = {}
    for module, path in files.items():
        targets = set()
        for base, name in imports(ast.parse(path.read_text(), str(path)), module,
                                  path.name == "__init__.py", static):
            target = f"{base}.{name}" if name and f"{base}.{name}" in files else base
            while target and target not in files:
                target = target.rpartition(".")[0]
            if target and target != module:
                targets.add(target)
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := dfs(start)):
            return found
    return None


def under(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def one_way_violations(graph: dict[str, set[str]]) -> list[str]:
    """``importer -> target (rule)`` for every import against the one-way rule."""
    stage = {s: f"featurebank.{s}" for s in STAGES}
    forbidden = [  # (importers, what they must not import, the rule)
        (GROUND_FLOOR, (*stage.values(), *ABOVE, *ENTRY), "the ground floor imports no stage"),
        ((stage["export"],), (stage["extractor"], stage["classical"], stage["finetune"], *ENTRY),
         "export comes first"),
        ((stage["extractor"],), (stage["classical"], stage["finetune"], *ENTRY),
         "extractor imports no later stage"),
        ((stage["classical"],), (stage["finetune"],), "finetune comes after classical"),
        (tuple(stage.values()), (*ABOVE, *ENTRY),
         "stages never import what sits above them or the entry points"),
        (ABOVE, ENTRY, "what sits above the stages sits below the entry points"),
        (("featurebank.predict", "featurebank.demo"), ("featurebank.deploy", "featurebank.compare"),
         "deploy and compare sit above predict (they load classifiers through it)"),
        (("featurebank.deploy",), ("featurebank.compare",), "deploy and compare are siblings"),
        (("featurebank.compare",), ("featurebank.deploy",), "deploy and compare are siblings"),
    ]
    wrong = []
    for module, targets in graph.items():
        for importers, banned, rule in forbidden:
            if under(module, *importers):
                wrong += [f"{module} -> {t} ({rule})" for t in targets if under(t, *banned)]
        for t in targets:  # only the entry points import cli; only they and service itself service
            if under(t, "featurebank.cli") and not under(module, "featurebank.cli",
                                                         "featurebank.__main__"):
                wrong.append(f"{module} -> {t} (only featurebank.cli/__main__ import cli)")
            if under(t, "featurebank.service") and not under(
                    module, "featurebank.service", "featurebank.cli", "featurebank.__main__"):
                wrong.append(f"{module} -> {t} (only the entry points import service)")
    return sorted(wrong)


def stage_of(module: str) -> str:
    """The stage (or entry point) a module belongs to: ``featurebank.<first part>`` for the
    stage folders, cli and service; the ground floor (spec, errors, options, ...) otherwise."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in (*STAGES, *OWN_PACKAGES, "cli", "service"):
        return ".".join(parts[:2])
    return "featurebank"


def is_private(module: str) -> bool:
    return any(p.startswith("_") and not p.startswith("__") for p in module.split("."))


def private_violations(graph: dict[str, set[str]]) -> list[str]:
    """``importer -> target`` for every import of a private ``_module`` from another stage."""
    return sorted(f"{module} -> {t}" for module, targets in graph.items()
                  for t in targets if is_private(t) and stage_of(t) != stage_of(module))


def eager_inits(files: dict[str, Path], exempt: Iterable[str] = ()) -> list[str]:
    """Package ``__init__`` modules that do not load their public names with
    ``featurebank.lazy.attach``: one that imports a submodule of its own package when imported
    (outside ``TYPE_CHECKING``; the ground floor is free), defines public code, or has names to
    give and never calls ``attach``."""
    wrong = []
    for module, path in files.items():
        if path.name != "__init__.py" or module in exempt:
            continue
        tree = ast.parse(path.read_text(), str(path))
        top = ast.Module(body=[n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))],
                         type_ignores=[])
        own = [base for base, _ in imports(top, module, True)  # at import time
               if under(base, module) and base != module and not under(base, *GROUND_FLOOR)]
        calls_attach = any(isinstance(n, ast.Call) and _call_name(n.func) == "attach"
                           for n in ast.walk(tree))
        defines = any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")
                      for n in tree.body)
        if own or defines or (not calls_attach and _has_all(tree)):
            wrong.append(f"{module}: " + (f"imports {sorted(set(own))} eagerly" if own else
                                          "defines code of its own" if defines else
                                          "lists __all__ but never calls lazy.attach"))
    return wrong


def _has_all(tree: ast.Module) -> bool:
    return any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "__all__"
                                                 for t in n.targets) for n in tree.body)
