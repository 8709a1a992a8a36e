"""Install featurebank into the running Python environment with a CPU-only torch.

torch comes only with the ``torch`` extra (``dev`` pulls it in too): it exports models to ONNX and
fine-tunes, never on the embedding path, so its CPU build is always enough, on a machine with a
GPU too. Without that extra nothing of torch is installed. What pip does with ``torch==VERSION``
depends on where it looks:

- where pip's configured sources (``find-links``, ``index-url``, ``extra-index-url``) offer the
  CPU wheel ``torch==VERSION+cpu``, it is taken (a local version sorts above the plain one);
- on Linux or Windows resolved against the public index only, ``torch==VERSION`` is the CUDA
  build and pulls about 19 ``nvidia-*`` packages (several GB); there torch alone is installed
  first from PyTorch's CPU wheel index (its dependencies come from that index too), then the
  project, whose pin torch already satisfies;
- on macOS the public wheel has no CUDA: nothing special is done.

Usage (the Makefile runs it with the virtual environment's Python)::

    .venv/bin/python tools/install.py torch,service            # make demo
    .venv/bin/python tools/install.py torch,service,dev,ray    # make test
    .venv/bin/python tools/install.py service                  # no torch: exported files only
    .venv/bin/python tools/install.py --which-torch      # where torch would come from
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints.txt"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def pinned_torch(constraints: Path = CONSTRAINTS) -> str:
    """The torch version constraints.txt pins (``torch==X``)."""
    for line in constraints.read_text().splitlines():
        m = re.fullmatch(r"\s*torch\s*==\s*([\w.]+)\s*(#.*)?", line)
        if m:
            return m.group(1)
    raise SystemExit(f"{constraints} pins no torch version (expected a line 'torch==X')")


def cpu_wheel_at_hand(version: str, pip_args: tuple[str, ...] = (),
                      python: str = sys.executable) -> bool:
    """Whether pip, as configured (plus ``pip_args``), can install ``torch==VERSION+cpu``.

    A dry run: nothing is downloaded from a local find-links folder, nothing installed.
    """
    cmd = [python, "-m", "pip", "install", "--dry-run", "--quiet", "--no-deps",
           "--ignore-installed", *pip_args, f"torch=={version}+cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    return done.returncode == 0


# The extras that bring torch (dev requires featurebank[torch]).
TORCH_EXTRAS = frozenset({"torch", "dev"})


def plan(extras: str, pip_args: tuple[str, ...] = (), python: str = sys.executable,
         platform: str = sys.platform) -> list[list[str]]:
    """The pip commands that install the project with ``extras`` (comma-separated)."""
    version = pinned_torch()
    pip = [python, "-m", "pip", "install", "--quiet", *pip_args]
    steps = []
    wants_torch = bool(TORCH_EXTRAS & {e.strip() for e in extras.split(",")})
    if wants_torch and platform != "darwin" and not cpu_wheel_at_hand(version, pip_args, python):
        # torch only: the rest of the project comes from the configured index as usual
        steps.append([*pip, "--index-url", CPU_INDEX, f"torch=={version}"])
    target = f"{ROOT}[{extras}]" if extras else str(ROOT)
    steps.append([*pip, "-c", str(CONSTRAINTS), "-e", target])
    return steps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("extras", nargs="?", default="torch,service",
                    help="comma-separated extras (default: torch,service, what make demo installs)")
    ap.add_argument("--which-torch", action="store_true",
                    help="say where torch would come from, install nothing")
    ap.add_argument("--dry-run", action="store_true", help="print the pip commands only")
    args = ap.parse_args(argv)
    version = pinned_torch()
    if args.which_torch:
        if sys.platform == "darwin":
            print(f"torch=={version} from the configured index (macOS wheels have no CUDA)")
        elif cpu_wheel_at_hand(version):
            print(f"torch=={version}+cpu from pip's configured sources (local CPU wheel)")
        else:
            print(f"no torch=={version}+cpu in pip's configured sources: "
                  f"torch=={version} from {CPU_INDEX}")
        return 0
    for step in plan(args.extras):
        print("+", " ".join(step[1:]), flush=True)
        if not args.dry_run:
            subprocess.run(step, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
