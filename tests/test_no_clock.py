"""No test asserts on elapsed time (issue 31): no test module reads a clock. A test waits on
events, files, output lines or announced points instead (docs/CONTRACTS.md, "Tests and
benchmarks"); speed is measured in ``benchmarks/``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
CLOCKS = {"time", "perf_counter", "monotonic", "process_time", "perf_counter_ns", "monotonic_ns",
          "time_ns"}


def clock_reads(source: str) -> list[int]:
    """Lines of ``source`` that read a clock: ``time.time()``, ``time.perf_counter()``...,
    also when imported by name (``from time import monotonic``) or as ``datetime.now()``."""
    tree = ast.parse(source)
    named = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
             and n.module == "time" for a in n.names if a.name in CLOCKS}
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                and ((f.value.id == "time" and f.attr in CLOCKS)
                     or (f.value.id == "datetime" and f.attr in ("now", "utcnow")))):
            lines.append(node.lineno)
        elif isinstance(f, ast.Name) and f.id in named:
            lines.append(node.lineno)
    return lines


def test_no_test_module_reads_a_clock():
    found = {str(p.relative_to(TESTS)): clock_reads(p.read_text())
             for p in sorted(TESTS.rglob("*.py"))}
    assert {name: lines for name, lines in found.items() if lines} == {}


@pytest.mark.parametrize("planted", [
    "import time\nstart = time.perf_counter()\n",
    "import time\nassert time.time() < 5\n",
    "from time import monotonic as now\nx = now()\n",
    "import datetime\nx = datetime.now()\n",
])
def test_a_planted_clock_read_is_found(planted):
    assert clock_reads(planted) == [len(planted.splitlines())]
