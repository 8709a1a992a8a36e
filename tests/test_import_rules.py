"""The architecture rules catch every way a module can reach another (issue 31, item 3): each
kind of violation is planted in a small fake package, and the rule that must see it does."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests._import_rules import (
    build_graph,
    eager_inits,
    find_cycle,
    one_way_violations,
    private_violations,
)


def _tree(tmp_path: Path, sources: dict[str, str]) -> dict[str, Path]:
    """Write ``{dotted module: source}`` as files; return dotted name -> file, as the walk of
    the installed package does (a package is its ``__init__.py``)."""
    files = {}
    packages = {m.rpartition(".")[0] for m in sources} - {""}
    for module in sorted(set(sources) | packages):
        is_package = module in packages
        rel = Path(*module.split("."))
        path = tmp_path / rel / "__init__.py" if is_package else tmp_path / rel.with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(sources.get(module, "")))
        files[module] = path
    return files


BASE = {
    "featurebank.spec": "",
    "featurebank.classical._probe": "",
    "featurebank.extractor._x": "",
}

#: one planted violation per way of reaching a module; the edge each one makes
PLANTED = {
    "function-level import": ("def f():\n    from featurebank.classical._probe import P\n",
                              "featurebank.classical._probe"),
    "import_module literal": ("import importlib\n"
                              "def f():\n"
                              "    return importlib.import_module('featurebank.classical._probe')\n",
                              "featurebank.classical._probe"),
    "lazy table": ("from featurebank.lazy import attach\n"
                   "_LAZY = {'P': 'featurebank.classical._probe'}\n"
                   "__getattr__, __dir__ = attach(__name__, _LAZY)\n",
                   "featurebank.classical._probe"),
    "TYPE_CHECKING import": ("from typing import TYPE_CHECKING\n"
                             "if TYPE_CHECKING:\n"
                             "    from featurebank.classical._probe import P\n",
                             "featurebank.classical._probe"),
}


@pytest.mark.parametrize("kind", PLANTED)
def test_a_planted_violation_of_each_kind_fails_both_rules(tmp_path, kind):
    """extractor reaching classical's private module: against the one-way rule (a later stage)
    and the private-module rule (another stage's private module), whichever way it is written."""
    source, target = PLANTED[kind]
    files = _tree(tmp_path, {**BASE, "featurebank.extractor._bad": source})
    graph = build_graph(files, static=True)
    assert target in graph["featurebank.extractor._bad"], kind
    assert "featurebank.extractor._bad -> featurebank.classical._probe" in private_violations(graph)
    assert any(v.startswith("featurebank.extractor._bad -> featurebank.classical._probe "
                            "(extractor imports no later stage)")
               for v in one_way_violations(graph))


def test_clean_code_passes_and_the_cycle_check_reads_the_run_time_view(tmp_path):
    """Lazy and TYPE_CHECKING edges are seen by the stage rules but cannot make an import-time
    cycle; a real one (two run-time imports) is found."""
    files = _tree(tmp_path, {
        **BASE,
        "featurebank.extractor": ("from typing import TYPE_CHECKING\n"
                                  "from featurebank.lazy import attach\n"
                                  "_LAZY = {'X': 'featurebank.extractor._x'}\n"
                                  "if TYPE_CHECKING:\n    from featurebank.extractor._x import X\n"
                                  "__getattr__, __dir__ = attach(__name__, _LAZY)\n"),
        "featurebank.extractor._x": "from featurebank.extractor import X\n",
        "featurebank.classical._probe": "from featurebank.extractor import X\n",
    })
    static = build_graph(files, static=True)
    assert not private_violations(static) and not one_way_violations(static)
    assert find_cycle(build_graph(files)) is None
    assert find_cycle(static) is not None  # the lazy edge would close one: not a run-time cycle
    files["featurebank.extractor"].write_text("from featurebank.extractor._x import X\n")
    assert find_cycle(build_graph(files)) == ["featurebank.extractor", "featurebank.extractor._x",
                                              "featurebank.extractor"]


@pytest.mark.parametrize("source, why", [
    ("from featurebank.extractor._x import X\n__all__ = ['X']\n", "imports"),
    ("__all__ = ['f']\n\ndef f():\n    pass\n", "defines code"),
    ("__all__ = ['X']\n\ndef __getattr__(name):\n"
     "    from featurebank.extractor._x import X\n    return X\n", "never calls lazy.attach"),
])
def test_an_init_of_another_style_is_refused(tmp_path, source, why):
    files = _tree(tmp_path, {**BASE, "featurebank.extractor": source})
    (wrong,) = eager_inits(files)
    assert wrong.startswith("featurebank.extractor:") and why in wrong
