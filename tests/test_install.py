"""Install truth: what `make demo` and `make test` install, and where torch comes from.

The branch that installs torch from PyTorch's CPU index cannot run on a machine without network;
what can be tested is the decision: pip itself is asked (a dry run) whether a CPU wheel is at
hand, here against fake find-links folders holding real (tiny) wheel files.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("fb_install", ROOT / "tools" / "install.py")
install = importlib.util.module_from_spec(spec)
spec.loader.exec_module(install)
TORCH = install.pinned_torch()


def fake_wheel(folder: Path, version: str) -> Path:
    """A valid, empty wheel named torch-VERSION (pip reads its metadata like a real one)."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"torch-{version}.dist-info"
    path = folder / f"torch-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                    "Tag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


def only(folder: Path) -> tuple[str, ...]:
    """pip arguments that make ``folder`` its only source (no config, no index)."""
    return ("--isolated", "--no-index", "--find-links", str(folder))


def test_constraints_pin_the_torch_the_project_allows():
    """torch is in the torch extra only, with no upper cap; this machine's pin is in
    constraints.txt."""
    assert re.fullmatch(r"\d+\.\d+\.\d+", TORCH)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if Requirement(d).name == "torch"]
    torch = next(Requirement(d) for d in project["optional-dependencies"]["torch"]
                 if Requirement(d).name == "torch")
    assert TORCH in torch.specifier and "99.0" in torch.specifier  # no cap
    assert "featurebank[torch]" in project["optional-dependencies"]["dev"]


@pytest.mark.parametrize("present, expected", [
    ([f"{TORCH}+cpu"], True),
    ([TORCH], False),            # the public (CUDA) build only
    ([], False),
    (["2.12.0+cpu"], False),     # a CPU wheel, but not the pinned version
    ([TORCH, f"{TORCH}+cpu"], True),
])
def test_detects_a_local_cpu_wheel(tmp_path, present, expected):
    for version in present:
        fake_wheel(tmp_path, version)
    assert install.cpu_wheel_at_hand(TORCH, only(tmp_path)) is expected


def test_without_a_cpu_wheel_torch_comes_from_the_cpu_index(tmp_path):
    steps = install.plan("torch,service", only(tmp_path), platform="linux")
    assert len(steps) == 2
    assert steps[0][-3:] == ["--index-url", install.CPU_INDEX, f"torch=={TORCH}"]
    assert "-e" in steps[1] and steps[1][-1].endswith("[torch,service]")
    # the project step does not name an index: only torch takes PyTorch's
    assert install.CPU_INDEX not in steps[1]


def test_with_a_cpu_wheel_or_on_macos_one_step(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    fake_wheel(tmp_path / "cpu", f"{TORCH}+cpu")
    for pip_args, platform in ((only(tmp_path / "cpu"), "linux"), (only(empty), "darwin")):
        steps = install.plan("service,dev,ray", pip_args, platform=platform)
        assert len(steps) == 1, steps
        assert steps[0][-4:] == ["-c", str(install.CONSTRAINTS), "-e",
                                 f"{install.ROOT}[service,dev,ray]"]


def test_without_the_torch_extra_no_torch_step(tmp_path):
    steps = install.plan("service", only(tmp_path), platform="linux")
    assert len(steps) == 1 and steps[0][-1].endswith("[service]")


def test_make_targets_install_what_they_need(tmp_path):
    env = dict(os.environ, MAKEFLAGS="")
    venv = tmp_path / "venv"

    def dry(target: str) -> str:
        return subprocess.run(["make", "-n", "-C", str(ROOT), target, f"VENV={venv}"],
                              capture_output=True, text=True, env=env, check=True).stdout

    def installs(target: str) -> list[str]:
        return re.findall(r"tools/install\.py (\S+)", dry(target))

    assert installs("demo") == ["torch,service"]
    assert installs("test") == ["torch,service", "torch,service,dev,ray"]
    assert re.search(r"ruff check .*\n.*tools/typecheck.py", dry("lint"))


def closure(requirements: list[str], extras: frozenset[str] = frozenset()) -> set[str]:
    """Every distribution the requirements pull in, through the installed packages' metadata."""
    seen: set[str] = set()
    todo = [(Requirement(r), extras) for r in requirements]
    while todo:
        req, active = todo.pop()
        env_ok = req.marker is None or any(req.marker.evaluate({"extra": e}) for e in active or {""})
        name = req.name.lower().replace("_", "-")
        if not env_ok or name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue  # not installed here (e.g. onnxruntime-gpu): nothing further to follow
        todo += [(Requirement(r), frozenset(req.extras)) for r in dist.requires or []]
    return seen


def test_demo_install_has_no_ray_pandas_or_pyarrow():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    demo = closure(project["dependencies"] + extras["torch"] + extras["service"])
    assert {"fastapi", "uvicorn", "fastapi-offline", "torch", "onnxruntime"} <= demo
    assert "torch" not in closure(project["dependencies"] + extras["service"])
    assert not {"ray", "pandas", "pyarrow"} & demo, {"ray", "pandas", "pyarrow"} & demo
    assert {"ray", "pandas", "pyarrow"} <= closure(extras["ray"])
    # the readers of tar/parquet/object-storage collections come in their own extra
    assert {"pyarrow", "fsspec", "s3fs"} <= closure(extras["io"])
    assert not {"pyarrow", "s3fs", "ray"} & demo
    assert "ray" not in closure(extras["dev"])


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS wheels of torch have no CUDA")
def test_this_machine_answer_is_consistent():
    """`--which-torch` says what :func:`cpu_wheel_at_hand` finds with pip's own configuration."""
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "install.py"), "--which-torch"],
                          capture_output=True, text=True, check=True)
    local = install.cpu_wheel_at_hand(TORCH)
    assert ("local CPU wheel" in done.stdout) is local
    assert (install.CPU_INDEX in done.stdout) is not local


def test_packages_config_declares_every_folder_the_wheel_ships():
    """Every folder under the mapped stage folders that holds package files or data is a
    declared package: setuptools otherwise warns on every install (BuildBackendWarning:
    "Package 'featurebank.export.data' is absent from the packages configuration")."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(tool["packages"])
    for name, folder in tool["package-dir"].items():
        for sub in [ROOT / folder, *(ROOT / folder).rglob("*")]:
            if sub.is_dir() and sub.name != "__pycache__" and any(
                    f.is_file() and not f.name.endswith(".pyc") for f in sub.iterdir()):
                dotted = ".".join([name, *sub.relative_to(ROOT / folder).parts])
                assert dotted in declared, f"{dotted} ({sub}) is missing from packages"
    assert tool["package-data"]["featurebank.export.data"] == ["*.json", "*.txt"]


def test_python_and_tool_targets_agree():
    """Python >= 3.11 (asyncio.TimeoutError is TimeoutError there); ruff and mypy target it."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["project"]["requires-python"] == ">=3.11"
    assert config["tool"]["ruff"]["target-version"] == "py311"
    assert config["tool"]["mypy"]["python_version"] == "3.11"
