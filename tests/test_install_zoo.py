"""The zoo environment's recipe: `make zoo` / `make test-zoo` and tools/install_zoo.py (dry runs:
nothing is installed here; the environment itself is what tests/test_zoo.py runs in)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_make_zoo_runs_the_installer_and_test_zoo_the_marked_tests(tmp_path):
    env = dict(os.environ, MAKEFLAGS="")

    def dry(target: str) -> str:
        return subprocess.run(["make", "-n", "-C", str(ROOT), target, f"ZOO_VENV={tmp_path / 'z'}"],
                              capture_output=True, text=True, env=env, check=True).stdout

    assert f"tools/install_zoo.py --venv {tmp_path / 'z'}" in dry("zoo")
    assert '-m pytest -q -m "timm or torchvision"' in dry("test-zoo")
    # README's test command (what CI runs) covers the zoo tests too
    test = dry("test")
    assert f"{tmp_path / 'z'}/bin/python -m pytest -q -m \"timm or torchvision\"" in test
    assert test.index(".venv/bin/python -m pytest -q") < test.index(f"{tmp_path / 'z'}/bin/python")
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_installer_pins_the_torchvision_pair_and_keeps_pip_off_find_links(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "install_zoo.py"), "--dry-run",
                           "--venv", str(tmp_path / "z")], capture_output=True, text=True,
                          check=True)
    lines = done.stdout.splitlines()
    assert any("torch==2.13.0" in ln and "torchvision==0.28.0" in ln and "timm" in ln
               for ln in lines)
    assert any(f"-e {ROOT}[torch,service,dev]" in ln for ln in lines)
    assert not (tmp_path / "z").exists()  # a dry run creates nothing


def test_every_pip_step_runs_with_an_empty_find_links_folder(tmp_path, monkeypatch):
    """A configured find-links folder with the CPU torch wheel would win over PyPI's build (its
    +cpu version sorts higher) and torchvision would not import: pip sees an empty folder."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import install_zoo
    finally:
        sys.path.pop(0)
    seen = []

    def fake_run(cmd, check=False, env=None, **_):
        folder = Path((env or os.environ).get("PIP_FIND_LINKS", "/nonexistent"))
        seen.append((cmd, folder.is_dir() and not any(folder.iterdir())))

    monkeypatch.setattr(install_zoo.subprocess, "run", fake_run)
    assert install_zoo.main(["--venv", str(tmp_path / "z")]) == 0
    pip_steps = [empty for cmd, empty in seen if "pip" in cmd]
    assert len(pip_steps) == 3 and all(pip_steps)
