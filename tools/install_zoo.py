"""Create the zoo environment: a second venv where timm and torchvision import.

The core install keeps torch on its CPU build (tools/install.py), and PyPI's torchvision does not
import beside that build (``operator torchvision::nms does not exist``). The zoo environment
takes PyPI's own torch build instead, with the matching torchvision and timm; they bring CUDA
libraries, which need no GPU (everything here runs on the CPU). featurebank is installed into it
editable, so both venvs run the same code.

pip is kept away from a configured find-links folder holding the CPU torch wheel
(``PIP_FIND_LINKS`` is pointed at an empty folder): a local ``+cpu`` version would sort above
PyPI's build and torchvision would not import.

Usage (``make zoo`` runs it)::

    python3 tools/install_zoo.py                 # creates .venv-zoo
    python3 tools/install_zoo.py --venv DIR      # elsewhere
    python3 tools/install_zoo.py --dry-run       # print the commands only
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# torchvision 0.28 is built against torch 2.13; the pair moves together.
ZOO_PINS = ("torch==2.13.0", "torchvision==0.28.0", "timm>=1.0")
EXTRAS = "torch,service,dev"


def plan(venv: Path, extras: str = EXTRAS) -> list[list[str]]:
    """The commands that create ``venv`` and install the zoo stack plus featurebank."""
    py = str(venv / "bin" / "python")
    pip = [py, "-m", "pip", "install", "--quiet"]
    return [
        [sys.executable, "-m", "venv", str(venv)],
        [*pip, "--upgrade", "pip"],
        [*pip, *ZOO_PINS],
        # torch is already there: the project's own pin (torch==2.13.0) is satisfied by it
        # the same pins as the core install (constraints.txt): torch==2.13.0 is the build just
        # installed, and the boto family resolves without backtracking
        [*pip, "-c", str(ROOT / "constraints.txt"), "-e", f"{ROOT}[{extras}]"],
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", type=Path, default=ROOT / ".venv-zoo")
    ap.add_argument("--extras", default=EXTRAS)
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="no-find-links-") as empty:
        env = {**os.environ, "PIP_FIND_LINKS": empty}
        t0 = time.perf_counter()
        for step in plan(args.venv, args.extras):
            print("+", " ".join(step), flush=True)
            if not args.dry_run:
                subprocess.run(step, check=True, env=env)
    if not args.dry_run:
        check = [str(args.venv / "bin" / "python"), "-c",
                 "import torch, torchvision, timm; "
                 "print('torch', torch.__version__, 'torchvision', torchvision.__version__, "
                 "'timm', timm.__version__)"]
        subprocess.run(check, check=True)
        print(f"zoo environment ready in {time.perf_counter() - t0:.0f} s: {args.venv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
