"""SIGKILL of real ``featurebank embed`` runs: the store stays readable and loses nothing."""

from __future__ import annotations

import pytest

from tests.reliability.faults import kill_campaign, make_kill_dataset, run_embed, snapshot


@pytest.fixture(scope="module")
def kill_setup(tmp_path_factory, lite0_onnx):
    src = make_kill_dataset(tmp_path_factory.mktemp("kill-src"))
    work = tmp_path_factory.mktemp("kill")
    seconds = run_embed(src, work / "clean.h5")
    clean = snapshot(work / "clean.h5")
    assert len(clean.vectors) == 32 and clean.failures == {"truncated.jpg", "page.jpg"}
    return src, work, clean, seconds


def test_kill_during_embed_and_resume(kill_setup, tmp_path):
    src, _, clean, seconds = kill_setup
    trials, problems = kill_campaign(src, tmp_path, clean, seconds, kills=3, seed=1)
    assert not problems, problems
    for t in trials:
        assert not t.problems, t
    assert any(t.killed for t in trials)


@pytest.mark.reliability_full
def test_kill_20_times(kill_setup, tmp_path):
    src, _, clean, seconds = kill_setup
    trials, problems = kill_campaign(src, tmp_path, clean, seconds, kills=20, seed=2)
    assert not problems, problems
    assert not [t for t in trials if t.problems]
