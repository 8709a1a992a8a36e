"""The Ray engine on a local 2-CPU Ray: same vectors as the local engine, survives a killed
actor, resumes after a killed driver, and runs scikit-learn searches through joblib."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the Ray engine needs the optional extra: pip install 'featurebank[ray]'")
# Starting a local Ray and its actors takes ~20 s and each run ~20-80 s on 2 cores: all slow.
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(300)]

from benchmarks.harness.faults import REPO, subprocess_env  # noqa: E402
from featurebank.extractor import embed_collection  # noqa: E402
from featurebank.extractor.engines import ray_joblib_backend  # noqa: E402
from featurebank.extractor.store._shards import shard_dir  # noqa: E402
from featurebank.extractor.store._store import FeatureStore  # noqa: E402
from tests._killpoints import ANNOUNCE, wait_for_point  # noqa: E402
from tests._ray_pause import ENV, calls  # noqa: E402

N_DIGITS = 110
EMBED = dict(engine="ray", workers=1, threads=1, batch_size=8, progress=False, shard_rows=16, actor_wait_s=60)
CALL_S = 30  # timeout of each direct wait in these tests


@pytest.fixture(scope="module")
def pause_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ray-pause")


@pytest.fixture(scope="module")
def ray_local(model_cache, pause_root):
    """Ray on this machine with 2 CPUs: one for the embedding actor, one for decode/write.

    Started after ``model_cache`` so its workers inherit the test cache of optimised graphs;
    every worker runs :func:`tests._ray_pause.install`, so a test can make an actor pause at an
    announced batch (:func:`pause`).
    """
    if ray.is_initialized():
        ray.shutdown()
    env = {ENV: str(pause_root), "PYTHONPATH": os.pathsep.join(filter(None, [
        str(REPO), os.environ.get("PYTHONPATH")]))}
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 1024**2,
             log_to_driver=False,
             runtime_env={"worker_process_setup_hook": "tests._ray_pause.install", "env_vars": env})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture
def pause(pause_root):
    """The actors' pause folder, emptied for this test; a paused actor is let go at the end."""
    for f in pause_root.iterdir():
        f.unlink()
    yield pause_root
    (pause_root / "go").touch()


@pytest.fixture(scope="module")
def collection(tmp_path_factory, digits_dir, photo_dir) -> Path:
    """A list file of real images: digits PNGs, photos, a corrupt file and a duplicate."""
    root = tmp_path_factory.mktemp("collection")
    pngs = sorted(digits_dir.rglob("*.png"))[::16][:N_DIGITS]  # every class
    lines = [f"{p},{p.parent.name}" for p in pngs] + [f"{p},photo" for p in sorted(photo_dir.rglob("*.jpg"))]
    (root / "broken.png").write_bytes(pngs[0].read_bytes()[:40])  # a truncated PNG
    shutil.copy(pngs[1], root / "copy.png")  # same content, another path
    lines += [f"{root / 'broken.png'},bad", f"{root / 'copy.png'},{pngs[1].parent.name}"]
    (root / "list.csv").write_text("\n".join(lines) + "\n")
    return root / "list.csv"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, collection, lite0_onnx):
    """The local engine's store for the collection: the vectors the Ray engine must reproduce."""
    path = tmp_path_factory.mktemp("local") / "local.h5"
    summary = embed_collection([str(collection)], path, threads=1, batch_size=8, progress=False)
    return path, summary


def _same_store(got: Path, want: Path) -> None:
    a, b = FeatureStore(got).read(), FeatureStore(want).read()
    ia, ib = np.argsort(a.keys), np.argsort(b.keys)
    np.testing.assert_array_equal(a.keys[ia], b.keys[ib])
    np.testing.assert_array_equal(a.X[ia], b.X[ib])  # bit-identical, not merely close
    np.testing.assert_array_equal(a.y[ia], b.y[ib])
    np.testing.assert_array_equal(a.paths[ia], b.paths[ib])
    assert a.spec.fingerprint() == b.spec.fingerprint()
    assert sorted(FeatureStore(got).failures()) == sorted(FeatureStore(want).failures())


def test_ray_engine_yields_the_local_engines_vectors(ray_local, collection, reference, tmp_path):
    path = tmp_path / "ray.h5"
    summary = embed_collection([str(collection)], path, **{
        k: v for k, v in EMBED.items() if k not in ("shard_rows", "actor_wait_s")})
    local = reference[1]
    assert (summary.total, summary.embedded, summary.duplicates, summary.failed) == \
        (local.total, local.embedded, local.duplicates, local.failed) == \
        (local.total, N_DIGITS + 6, 1, 1)
    _same_store(path, reference[0])
    assert len(list(shard_dir(path).glob("shard-*.h5"))) >= 1
    again = embed_collection([str(collection)], path, **EMBED)
    assert (again.embedded, again.cached, again.failed) == (0, local.total - 1, 1)  # the copy is cached too
    _same_store(path, reference[0])


def test_killed_actor_loses_no_rows(ray_local, pause, collection, reference, tmp_path):
    path = tmp_path / "ray.h5"
    result: dict = {}

    def run():
        try:
            result["summary"] = embed_collection([str(collection)], path, **EMBED)
        except BaseException as exc:  # reported by the main thread
            result["error"] = exc

    (pause / "arm").write_text("3")  # the actor pauses before it embeds its third batch
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    while not (pause / "paused").exists():  # announced by the actor's process
        assert worker.is_alive(), f"the run ended before its actor paused: {result}"
        time.sleep(0.05)
    pid = int((pause / "paused").read_text())
    calls_at_kill = len(calls(pause))
    os.kill(pid, signal.SIGKILL)  # the actor's process dies mid-run, as on a lost node
    worker.join(timeout=240)
    assert not worker.is_alive(), "the run did not finish after its actor was killed"
    assert "error" not in result, result.get("error")
    after = calls(pause)[calls_at_kill:]
    # it was mid-run: the batches left, the killed one included, were embedded by a new actor
    assert after and pid not in after
    assert result["summary"].embedded == reference[1].embedded
    _same_store(path, reference[0])


def test_rerun_after_killed_driver_embeds_only_whats_missing(ray_local, collection, reference, tmp_path):
    path = tmp_path / "ray.h5"
    code = ("import sys; from tests._ray_pause import pause_driver_after_shard as p; p({2}); "
            "from featurebank.extractor import embed_collection as e; "
            f"e([sys.argv[1]], sys.argv[2], address=sys.argv[3], **{EMBED!r})")
    driver = subprocess.Popen([sys.executable, "-c", code, str(collection), str(path), ray_local],
                              cwd=REPO, env=subprocess_env(), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        # The driver announces its second shard written, and waits: killed there, mid-run.
        assert wait_for_point(driver.stdout) == f"{ANNOUNCE} shard 2"
    finally:
        driver.kill()
        driver.wait(timeout=CALL_S)
    shards = sorted(shard_dir(path).glob("shard-*.h5"))
    assert len(shards) == 2  # only the driver writes shards, and it died paused after two
    committed = set()
    for shard in shards:
        with FeatureStore(shard) as s:
            committed |= s.keys(s.feature_sets()[0].fingerprint)
    total_new = reference[1].embedded
    assert 0 < len(committed) < total_new
    # the killed job's actor is released by Ray; the rerun waits for a free CPU (actor_wait_s)
    summary = embed_collection([str(collection)], path, **EMBED)
    assert summary.embedded == total_new - len(committed)
    assert summary.cached == sum(k in committed for k in _path_keys(reference[0]))
    _same_store(path, reference[0])


def _path_keys(store: Path) -> list[str]:
    """The content key of every readable item (one per path) of a store."""
    import h5py

    with h5py.File(store, "r") as f:
        return list(f["paths"]["keys"][: int(f["paths"].attrs["committed"])].astype(str))


def test_grid_search_runs_on_ray_and_matches_local(ray_local):
    import joblib
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    X, y = load_digits(return_X_y=True)
    X, y = X[:400] / 16.0, y[:400]
    grid = {"C": [0.01, 0.1, 1.0]}

    def search():
        return GridSearchCV(LogisticRegression(max_iter=300), grid, cv=3, n_jobs=2).fit(X, y)

    local = search()
    with ray_joblib_backend():
        backend = type(joblib.parallel.get_active_backend()[0]).__name__
        on_ray = search()
    assert backend == "RayBackend"
    assert on_ray.best_params_ == local.best_params_
    np.testing.assert_allclose(on_ray.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"])
    assert on_ray.best_score_ > 0.9


@pytest.mark.parametrize("change, message", [({"device": "cuda"}, "no GPU"),
                                             ({"workers": 2}, "none for decoding")])
def test_impossible_placements_are_clear_errors(ray_local, collection, tmp_path, lite0_onnx,
                                                change, message):
    from featurebank.errors import FeaturebankError

    with pytest.raises(FeaturebankError, match=message):
        embed_collection([str(collection)], tmp_path / "s.h5", **{**EMBED, **change})
