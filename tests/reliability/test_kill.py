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


def test_reader_during_write(kill_setup, tmp_path):
    """Readers polling the store while ``embed`` writes it: they only ever see committed rows
    equal to the clean run's, or a clear FeaturebankError; the writer is not disturbed."""
    import subprocess

    from featurebank.extractor.store._store import FeatureStore

    from featurebank.errors import FeaturebankError
    from tests.reliability.faults import REPO, embed_command, subprocess_env

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
                    elif not (abs(vec - clean.vectors[key]) <= 2e-2 * (1 + abs(vec))).all():
                        problems.append(f"row {key[:12]} differs mid-write")
        except FeaturebankError:
            pass  # e.g. the file being created: a clear error, never a crash
    assert proc.returncode == 0, proc.stderr.read().decode()[-1500:]
    assert not problems, problems[:5]
    assert reads > 0
