"""Reliability suite: the fast subset runs by default; ``-m reliability_full`` runs the long one."""

from __future__ import annotations

import pytest


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "reliability_full: long fault-injection runs (pytest -m reliability_full)")


def pytest_collection_modifyitems(config, items) -> None:
    # The full runs are opt-in: only an explicit ``-m`` naming them selects them.
    if "reliability_full" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="long run: select with pytest -m reliability_full")
    for item in items:
        if "reliability_full" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """Every kind of bad or unusual input, written once per session."""
    from benchmarks.harness.corpus import build_corpus

    return build_corpus(tmp_path_factory.mktemp("corpus"))
