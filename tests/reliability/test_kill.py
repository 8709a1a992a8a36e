"""SIGKILL of real ``featurebank embed`` runs: the store stays readable and loses nothing.

Kill moments are drawn from a seeded generator and scaled to this machine's measured clean run
(``kill_campaign``), so the tests assert what happened to the store, never how fast the machine is.
"""

from __future__ import annotations

import subprocess

import pytest

from benchmarks.harness.faults import (
    REPO,
    embed_command,
    float16_ulps,
    kill_campaign,
    make_kill_dataset,
    run_embed,
    snapshot,
    subprocess_env,
)
from featurebank.errors import FeaturebankError
from featurebank.extractor import FeatureStore


@pytest.fixture(scope="module")
def kill_setup(tmp_path_factory, lite0_onnx):
    src = make_kill_dataset(tmp_path_factory.mktemp("kill-src"))
    work = tmp_path_factory.mktemp("kill")
    # A warm-up run first: the first run in a fresh cache also writes onnxruntime's optimised
    # graph, so its time would overstate how long a run works and kills would come too late.
    run_embed(src, work / "warmup.h5")
    seconds = run_embed(src, work / "clean.h5")
    clean = snapshot(work / "clean.h5")
    assert len(clean.vectors) == 32 and clean.failures == {"truncated.jpg", "page.jpg"}
    return src, work, clean, seconds


def _assert_campaign(trials, problems, kills: int, min_killed: int) -> None:
    assert not problems, problems
    assert not [t for t in trials if t.problems], [t for t in trials if t.problems]
    assert len(trials) == kills
    # Delays are at most 80 % of the time the remaining work took in the clean run, so most
    # kills land while the run works; a short resume can finish first (its timing jitters by
    # more than its length), so the bound leaves room for that, not for a machine's speed.
    assert sum(t.killed for t in trials) >= min_killed, trials
    # Every other kill waits until the writer holds the .h5 open, i.e. is inside a commit.
    assert sum(t.in_commit for t in trials) >= (kills // 2) // 2, trials


def test_kill_during_embed_and_resume(kill_setup, tmp_path):
    src, _, clean, seconds = kill_setup
    trials, problems = kill_campaign(src, tmp_path, clean, seconds, kills=4, seed=1)
    _assert_campaign(trials, problems, 4, min_killed=2)


@pytest.mark.slow
@pytest.mark.reliability_full
def test_kill_20_times(kill_setup, tmp_path):
    src, _, clean, seconds = kill_setup
    trials, problems = kill_campaign(src, tmp_path, clean, seconds, kills=20, seed=2)
    _assert_campaign(trials, problems, 20, min_killed=15)
    assert sum(t.in_commit for t in trials) >= 5, trials  # of the 10 that wait for a commit
    assert sum(t.rows_after_kill > t.rows_before for t in trials if t.killed) >= 3, trials


def test_reader_during_write(kill_setup, tmp_path):
    """Readers polling the store while ``embed`` writes it: they only ever see committed rows
    equal to the clean run's (within one float16 step, see ``float16_ulps``), or a clear
    FeaturebankError; the writer is not disturbed."""
    src, _, clean, _ = kill_setup
    store = tmp_path / "s.h5"
    proc = subprocess.Popen(embed_command(src, store), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=subprocess_env(), cwd=REPO)
    reads, problems = 0, []
    while proc.poll() is None:
        try:
            fs = FeatureStore(store)
            if fs.feature_sets():
                feats = fs.read()
                reads += 1
                for key, vec in zip(feats.keys, feats.X, strict=True):
                    if key not in clean.vectors:
                        problems.append(f"unknown row {key[:12]}")
                    elif float16_ulps(vec, clean.vectors[key]).max() > 1:
                        problems.append(f"row {key[:12]} differs mid-write")
        except FeaturebankError:
            pass  # e.g. the file being created: a clear error, never a crash
    assert proc.returncode == 0, proc.stderr.read().decode()[-1500:]
    assert not problems, problems[:5]
    assert reads > 0
