"""Run mypy on the featurebank namespace as it installs (``make lint`` and ``.ci/run`` call it).

The stage folders (export/, extractor/, classical/, finetune/) install as ``featurebank.export``
and so on (pyproject's package-dir mapping), which mypy cannot follow in the source tree. This
script lays a link tree of that namespace in a temporary folder, runs mypy on it with
pyproject's ``[tool.mypy]`` settings, and reports paths as they are in the repository.

Usage: ``python tools/typecheck.py [MYPY ARGS]``; the exit status is mypy's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def link_tree(dest: Path) -> dict[str, str]:
    """Link the installed layout under ``dest``; return {path under dest: repository path}."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    back: dict[str, str] = {}
    for name, folder in sorted(mapping.items()):  # "featurebank" first, its stages after
        where = dest.joinpath(*name.split("."))
        where.mkdir(parents=True, exist_ok=True)
        for entry in (ROOT / folder).iterdir():
            if entry.name != "__pycache__" and not (where / entry.name).exists():
                (where / entry.name).symlink_to(entry)
        back[str(where.relative_to(dest)) + os.sep] = folder + os.sep
    return back


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="fb-typecheck-") as tmp:
        back = link_tree(Path(tmp))
        cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
               "--cache-dir", str(ROOT / ".mypy_cache"), "-p", "featurebank", *argv]
        done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
    for line in (done.stdout + done.stderr).splitlines():
        # longest prefix first: featurebank/export/ before featurebank/
        for here, there in sorted(back.items(), key=lambda kv: -len(kv[0])):
            if line.startswith(here):
                line = there + line[len(here):]
                break
        print(line)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
