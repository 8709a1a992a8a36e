"""The house rules of the package, checked on the installed package (issue 13).

- No import cycle between featurebank's modules, imports inside functions included.
- Imports run one way: the ground floor (spec, errors, options, lazy, paths) <- export <- extractor
  <- classical <- finetune <- predict, deploy <- cli, service.
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
from tests._import_rules import (
    GROUND_FLOOR,
    STAGES,
    build_graph,
    eager_inits,
    find_cycle,
    imports,
    is_private,
    one_way_violations,
    private_violations,
    stage_of,
    under,
)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs tomli on 3.10")

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


@cache
def _files() -> dict[str, Path]:
    return _package_files()


@cache
def import_graph(static: bool = False) -> dict[str, set[str]]:
    """featurebank module -> the featurebank modules it imports (run-time view, or static:
    with TYPE_CHECKING imports, import_module literals and lazy tables; tests/_import_rules.py)."""
    return build_graph(_files(), static)


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
    assert imports(tree, "pkg.a", False) == [("pkg.b", "x"), ("pkg", "c")]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_run_one_way():
    """The static view: a lazy table, an import_module literal or a TYPE_CHECKING import
    that goes the wrong way counts (tests/test_import_rules.py plants each)."""
    wrong = one_way_violations(import_graph(static=True))
    assert not wrong, "\n".join(wrong)


def test_every_package_init_loads_its_names_lazily():
    """One __init__ style: a table handed to featurebank.lazy.attach (issue 31 found four)."""
    wrong = eager_inits(_files(), exempt=("featurebank.cli", "featurebank.export.data"))
    assert not wrong, "\n".join(wrong)


def test_the_ground_floor_imports_only_the_standard_library():
    """spec, errors, options, lazy and paths load in any process at no cost (the CLI builds its
    flags from them): besides each other they import the standard library only, anywhere."""
    files = _files()
    wrong = []
    for module in GROUND_FLOOR:
        path = files[module]
        for base, _ in imports(ast.parse(path.read_text()), module, False, static=True):
            top = base.split(".")[0]
            if top == "featurebank":
                if not under(base, *GROUND_FLOOR) and base != "featurebank":
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


def test_private_modules_are_imported_only_inside_their_stage():
    """docs/layout.md: implementation modules are private; other stages import the public names
    of a stage's ``__init__`` (which lists them in ``__all__``)."""
    assert stage_of("featurebank.extractor.store._lock") == "featurebank.extractor"
    assert stage_of("featurebank.options") == "featurebank" and is_private("a._b.c")
    assert not is_private("featurebank.cli.__main__")
    wrong = private_violations(import_graph(static=True))
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
