"""The house rules of the package, checked on the installed package (issue 13).

- No import cycle between featurebank's modules, imports inside functions included.
- Imports run one way: the ground floor (spec, errors, options, lazy, paths) <- export <- extractor <- classical <- finetune <- cli, service.
- The wheel installs one top-level name, ``featurebank``.
- A user's own ``export.py``, ``extractor.py``, ``classical.py`` or ``spec.py`` beside their
  script changes nothing featurebank does.
- ``import featurebank`` loads neither torch, h5py nor onnxruntime.
"""

from __future__ import annotations

import ast
import importlib.util
import shutil
import subprocess
import sys
import textwrap
import zipfile
from functools import cache
from pathlib import Path

import pytest

from benchmarks.harness.faults import REPO, subprocess_env

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs tomli on 3.10")

STAGES = ("export", "extractor", "classical", "finetune")
#: the modules every stage may import, which import no stage (and only the standard library)
GROUND_FLOOR = ("featurebank.spec", "featurebank.errors", "featurebank.options",
                "featurebank.lazy", "featurebank.paths")


def _package_files() -> dict[str, Path]:
    """Every module of the installed featurebank: dotted name -> source file.

    The packages are the ones pyproject.toml declares (what a wheel contains); each is located
    by the import system (``find_spec``), so the stage folders that install as
    ``featurebank.<stage>`` through the package-dir mapping are read where imports find them.
    """
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    found = {}
    for package in declared:
        spec = importlib.util.find_spec(package)
        assert spec is not None, f"{package} is declared but does not import"
        if spec.origin is None:  # a data folder declared as a package (export/data): no code
            folders = [Path(p) for p in spec.submodule_search_locations or ()]
            assert folders and not any(any(f.rglob("*.py")) for f in folders), package
            continue
        found[package] = Path(spec.origin)
        for path in sorted(Path(spec.origin).parent.iterdir()):
            if path.suffix == ".py" and path.name != "__init__.py":
                found[f"{package}.{path.stem}"] = path
            elif (path / "__init__.py").is_file():  # a sub-package the wheel would leave out
                assert f"{package}.{path.name}" in declared, f"{path} is not in pyproject's packages"
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, str | None]]:
    """What a module imports at run time, top level and inside functions alike, as
    (module, name) pairs: ``import a.b`` -> ("a.b", None), ``from a import b`` -> ("a", "b").
    ``if TYPE_CHECKING:`` blocks never run, so they are left out."""
    found: list[tuple[str, str | None]] = []
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
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
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@cache
def import_graph() -> dict[str, set[str]]:
    """featurebank module -> the featurebank modules it imports.

    ``from pkg import sub`` counts as importing the submodule ``sub`` when there is one, else
    ``pkg``; a parent package imported only on the way to a submodule does not count (Python
    imports it, but a cycle through it needs ``pkg/__init__`` to import the importer).
    """
    files = _package_files()
    graph = {}
    for module, path in files.items():
        targets = set()
        for base, name in _imports(ast.parse(path.read_text(), str(path)), module,
                                   path.name == "__init__.py"):
            target = f"{base}.{name}" if name and f"{base}.{name}" in files else base
            while target and target not in files:
                target = target.rpartition(".")[0]
            if target and target != module:
                targets.add(target)
        graph[module] = targets
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
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


def _under(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_walk_sees_every_stage_and_function_level_imports():
    graph = import_graph()
    for stage in STAGES:
        assert f"featurebank.{stage}" in graph, f"featurebank.{stage} not found by the walk"
    assert len(graph) >= 40, sorted(graph)
    # _cache imports the exporter inside ensure_exported (torch only when needed)
    assert "featurebank.export._onnx_export" in graph["featurebank.export._cache"]


def test_cycle_finder_finds_a_cycle():
    """The finder itself: a cycle through a function-level import is reported."""
    tree = ast.parse("def f():\n    from pkg.b import x\n    from . import c\n")
    assert _imports(tree, "pkg.a", False) == [("pkg.b", "x"), ("pkg", "c")]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle():
    cycle = _find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_run_one_way():
    stage = {s: f"featurebank.{s}" for s in STAGES}
    entry = ("featurebank.cli", "featurebank.service")
    forbidden = [  # (importers, what they must not import, the rule)
        (GROUND_FLOOR, (*stage.values(), "featurebank.predict", *entry),
         "the ground floor imports no stage"),
        ((stage["export"],), (stage["extractor"], stage["classical"], stage["finetune"], *entry),
         "export comes first"),
        ((stage["extractor"],), (stage["classical"], stage["finetune"], *entry),
         "extractor imports no later stage"),
        ((stage["classical"],), (stage["finetune"],), "finetune comes after classical"),
        ((stage["classical"], stage["finetune"]), entry, "stages never import the entry points"),
        ((*stage.values(), "featurebank.predict", "featurebank.spec", "featurebank.errors",
          "featurebank.options"), ("featurebank.compare",),
         "compare sits above the stages, beside predict: only the entry points import it"),
    ]
    wrong = []
    for module, targets in import_graph().items():
        for importers, banned, rule in forbidden:
            if _under(module, *importers):
                wrong += [f"{module} -> {t} ({rule})" for t in targets if _under(t, *banned)]
        for t in targets:  # only the entry points import cli; only they and service itself service
            if _under(t, "featurebank.cli") and not _under(module, "featurebank.cli",
                                                            "featurebank.__main__"):
                wrong.append(f"{module} -> {t} (only featurebank.cli/__main__ import cli)")
            if _under(t, "featurebank.service") and not _under(
                    module, "featurebank.service", "featurebank.cli", "featurebank.__main__"):
                wrong.append(f"{module} -> {t} (only the entry points import service)")
    assert not wrong, "\n".join(wrong)


def test_the_ground_floor_imports_only_the_standard_library():
    """spec, errors, options, lazy and paths load in any process at no cost (the CLI builds its
    flags from them): besides each other they import the standard library only, anywhere."""
    files = _package_files()
    wrong = []
    for module in GROUND_FLOOR:
        path = files[module]
        for base, _ in _imports(ast.parse(path.read_text()), module, False):
            top = base.split(".")[0]
            if top == "featurebank":
                if not _under(base, *GROUND_FLOOR) and base != "featurebank":
                    wrong.append(f"{module} -> {base}")
            elif top not in sys.stdlib_module_names and top != "__future__":
                wrong.append(f"{module} -> {base}")
    assert not wrong, wrong


def _source_copy(dest: Path) -> Path:
    """The files a wheel is built from (pyproject, README and the mapped package folders),
    copied so the build writes nothing into the working tree."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    folders = set(config["tool"]["setuptools"]["package-dir"].values())
    for name in ("pyproject.toml", "README.md", *(p.name for p in REPO.glob("LICENSE*"))):
        shutil.copy(REPO / name, dest / name)
    for folder in folders:
        shutil.copytree(REPO / folder, dest / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def test_wheel_installs_only_the_featurebank_name(tmp_path):
    """Built from a copy of the sources (the build writes nothing into the tree): ~3-10 s."""
    (tmp_path / "src").mkdir()
    src = _source_copy(tmp_path / "src")
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "-q", str(src), "-w", str(tmp_path / "dist")],
                         capture_output=True, text=True, timeout=300, env=subprocess_env(),
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("featurebank-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"featurebank", next(t for t in top if t.endswith(".dist-info"))}, top
    # the stages are inside the namespace, with their data files
    for stage in STAGES:
        assert f"featurebank/{stage}/__init__.py" in names, stage
    assert "featurebank/export/data/imagenet_classes.json" in names
    assert "featurebank/extractor/store/__init__.py" in names


SHADOWS = ("export", "extractor", "classical", "finetune", "spec", "errors")


def test_users_own_modules_named_like_stages_change_nothing(tmp_path, lite0_onnx, real_photos):
    """A user's script in a folder holding export.py, extractor.py, ... (the folder is
    sys.path[0]): featurebank imports and embeds exactly as elsewhere, and never loads them."""
    from PIL import Image

    for name in SHADOWS:
        (tmp_path / f"{name}.py").write_text(
            f"raise RuntimeError('the user\\'s own {name}.py was imported by featurebank')\n")
    Image.fromarray(real_photos["chelsea"]).save(tmp_path / "cat.jpg")
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        assert sys.path[0] == {str(tmp_path)!r}, sys.path[0]
        import featurebank
        from featurebank import Extractor, FeatureSpec, FeatureStore, LinearProbe, list_models
        from featurebank.export import read_onnx_metadata
        out = Extractor(sys.argv[1], layers=["head"]).embed(["cat.jpg"])
        shadows = [m for m in {SHADOWS!r} if m in sys.modules]
        print(type(out).__name__, out["head"].shape, out["head"].dtype, shadows,
              read_onnx_metadata(sys.argv[1]).spec.model)
        print(featurebank.__file__)
    """))
    out = subprocess.run([sys.executable, str(script), str(lite0_onnx)], capture_output=True,
                         text=True, timeout=300, env=subprocess_env(), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    first, where = out.stdout.splitlines()[:2]
    assert first == "dict (1, 1280) float32 [] efficientnet_lite0", out.stdout
    assert not where.startswith(str(tmp_path)), where


def test_import_featurebank_loads_no_heavy_library():
    code = ("import sys, featurebank\n"
            "featurebank.FeatureSpec, featurebank.FeaturebankError\n"
            "print(sorted(m for m in ('torch', 'h5py', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=subprocess_env(), cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout


def test_suite_is_hermetic(model_cache, tmp_path_factory):
    """Every test sees this session's model cache and a temporary home (tests/conftest.py),
    whether or not it asks for them: nothing reads or writes the user's ~/.cache."""
    import os

    from featurebank.export._cache import resolve_cache_dir

    base = tmp_path_factory.getbasetemp()
    assert Path(os.environ["HOME"]).is_relative_to(base) and Path.home() == Path(os.environ["HOME"])
    assert resolve_cache_dir() == model_cache and model_cache.is_relative_to(base)
    env = subprocess_env()  # what children get, stated explicitly
    assert (env["FEATUREBANK_CACHE"], env["HOME"]) == (str(model_cache), os.environ["HOME"])


def _stage_of(module: str) -> str:
    """The stage (or entry point) a module belongs to: ``featurebank.<first part>`` for the
    stage folders, cli and service; the ground floor (spec, errors, options, ...) otherwise."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in (*STAGES, "cli", "service", "compare"):
        return ".".join(parts[:2])
    return "featurebank"


def _is_private(module: str) -> bool:
    return any(p.startswith("_") and not p.startswith("__") for p in module.split("."))


def private_imports_across_stages() -> list[str]:
    """``importer -> target`` for every import of a private ``_module`` from another stage."""
    return sorted(f"{module} -> {t}" for module, targets in import_graph().items()
                  for t in targets if _is_private(t) and _stage_of(t) != _stage_of(module))


def test_private_modules_are_imported_only_inside_their_stage():
    """docs/layout.md: implementation modules are private; other stages import the public names
    of a stage's ``__init__`` (which lists them in ``__all__``)."""
    assert _stage_of("featurebank.extractor.store._lock") == "featurebank.extractor"
    assert _stage_of("featurebank.options") == "featurebank" and _is_private("a._b.c")
    assert not _is_private("featurebank.cli.__main__")
    wrong = private_imports_across_stages()
    assert not wrong, "private modules imported from another stage:\n" + "\n".join(wrong)


HEAVY = ("numpy", "sklearn", "scipy", "onnx", "onnxruntime", "h5py", "torch", "PIL", "fastapi",
         "tqdm", "uvicorn")


def test_command_line_help_and_version_load_no_stage():
    """Building the parser imports no stage: ``featurebank --help``, ``--version`` and every
    command's ``--help`` load none of the heavy libraries (start-up time itself is measured by
    benchmarks/startup.py, never by a test). One subprocess for all of them."""
    code = textwrap.dedent("""
        import contextlib, io, sys
        from featurebank.cli import build_parser, main
        commands = [c for c in build_parser()._subparsers._group_actions[0].choices]
        for argv in (["--help"], ["--version"], *([c, "--help"] for c in commands)):
            with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
                main(argv)
        print(len(commands), sorted(m for m in HEAVY if m in sys.modules))
    """).replace("HEAVY", repr(HEAVY))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=subprocess_env(), cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    count, loaded = out.stdout.strip().split(" ", 1)
    assert int(count) >= 12 and loaded == "[]", out.stdout
