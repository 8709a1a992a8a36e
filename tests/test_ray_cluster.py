"""A real two-node Ray cluster on this machine: ``embed --engine ray --address`` spreads over
both nodes, its workers read images from S3 URLs (no shared file system), and losing the worker
node mid-run still gives every row, equal to the local engine.

The cluster (Ray's ``cluster_utils.Cluster``: a head and one added node, each its own raylet,
object store and workers) is started once for the module and removed by the fixture whatever
happens. Its processes run under ``nice``: the machine is shared.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import pytest

ray = pytest.importorskip("ray", reason="the Ray engine needs the optional extra: pip install 'featurebank[ray]'")
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(240)]

from benchmarks.harness.faults import REPO, subprocess_env  # noqa: E402
from featurebank.extractor import embed_collection  # noqa: E402
from featurebank.extractor.store._shards import shard_dir  # noqa: E402
from featurebank.extractor.store._store import FeatureStore  # noqa: E402
from tests._killpoints import wait_for_point  # noqa: E402
from tests.test_ray_engine import _same_store  # noqa: E402

N_IMAGES = 96  # 12 shards of 8 rows: the kill lands while most are still to come
# Three logical CPUs per node: one embedding actor per node, and when a node is lost and its
# actor restarts beside the other one, still a CPU for the decode tasks.
NODE = dict(num_cpus=3, object_store_memory=120 * 1024**2)


@pytest.fixture(scope="module")
def cluster(model_cache, request):
    """Head + one worker node; yields (cluster, worker node). Always torn down.

    The S3 endpoint (when moto is installed) starts first: the nodes' workers inherit its
    address and fake credentials from the environment, as real nodes have theirs."""
    from ray.cluster_utils import Cluster

    with contextlib.suppress(pytest.skip.Exception):
        request.getfixturevalue("s3_endpoint")

    if ray.is_initialized():  # another module's local Ray would be joined instead of ours
        ray.shutdown()
    os.nice(max(0, 10 - os.nice(0)))  # the nodes' processes inherit it
    c = Cluster(initialize_head=False, shutdown_at_exit=True)
    # The worker node gets an address and a session folder of its own, as a second machine
    # has: a driver joins the raylet of the address recorded in its session folder, and with
    # one address for both nodes it could join the worker node's and die with it.
    own_dir = tempfile.mkdtemp(prefix="rw-")  # short: Unix socket paths are limited
    try:
        c.add_node(**NODE, include_dashboard=False)
        worker = c.add_node(**NODE, node_ip_address="127.0.0.2", temp_dir=own_dir)
        c.wait_for_nodes()
        yield c, worker
    finally:
        c.shutdown()
        shutil.rmtree(own_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def digit_list(tmp_path_factory, digits_dir) -> Path:
    pngs = sorted(digits_dir.rglob("*.png"))[::8][:N_IMAGES]
    path = tmp_path_factory.mktemp("cluster") / "list.csv"
    path.write_text("".join(f"{p},{p.parent.name}\n" for p in pngs))
    return path


def _run_cli(tmp_path: Path, *args: str, pause: bool = False) -> subprocess.Popen:
    """``featurebank embed ARGS --engine ray ...`` in a child; with ``pause`` its driver
    announces each shard written and waits for a line (:mod:`tests._ray_pause`). Its stderr
    (Ray's chatter too) goes to ``tmp_path/driver.err``, never into a pipe that could fill."""
    main = ["-m", "tests._ray_pause", "all"] if pause else ["-m", "featurebank"]
    cmd = [sys.executable, *main, "embed", *args, "--engine", "ray", "--workers", "2",
           "--threads", "1", "--batch-size", "4", "--shard-rows", "8", "--no-progress", "--json"]
    with open(tmp_path / "driver.err", "w") as err:
        return subprocess.Popen(["nice", "-n", "10", *cmd], cwd=REPO, env=subprocess_env(),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                text=True)


def _summary(driver: subprocess.Popen, out: str, tmp_path: Path) -> dict:
    err = (tmp_path / "driver.err").read_text()
    assert driver.returncode == 0, "\n".join(  # without the raylet's and core worker's chatter
        line for line in err.splitlines() if not line.startswith("["))[-4000:]
    return json.loads(out.strip().splitlines()[-1])


def test_workers_read_images_from_s3_urls(cluster, s3_bucket, digits_dir, tmp_path, lite0_onnx):
    """The store is written where the driver runs; the workers read the images from the bucket."""
    c, worker = cluster
    fs, bucket = s3_bucket
    pngs = sorted(digits_dir.rglob("*.png"))[::45][:40]
    for p in pngs:
        fs.put(str(p), f"{bucket}/digits/{p.parent.name}/{p.name}")
    url = f"s3://{bucket}/digits/"
    reference = tmp_path / "local.h5"
    embed_collection([url], reference, threads=1, batch_size=4, progress=False)
    store = tmp_path / "ray.h5"
    driver = _run_cli(tmp_path, url, "--store", str(store), "--address", c.address)
    out, _ = driver.communicate(timeout=180)
    summary = _summary(driver, out, tmp_path)
    assert summary["embedded"] + summary["duplicates"] == len(pngs) and summary["failed"] == 0
    assert set(summary["nodes"]) == {c.head_node.node_id, worker.node_id}
    _same_store(store, reference)
    assert all(p.startswith(f"s3://{bucket}/digits/") for p in FeatureStore(store).read().paths)


def _shard_nodes(store: Path) -> set[str]:
    """The Ray node ids recorded in the committed shards (which node embedded their rows)."""
    nodes: set[str] = set()
    for shard in shard_dir(store).glob("shard-*.h5"):
        with h5py.File(shard, "r", locking=False) as f:
            nodes |= set(json.loads(f.attrs.get("ray_nodes", "[]")))
    return nodes


def test_cluster_run_spans_both_nodes_and_survives_losing_one(cluster, digit_list, tmp_path, lite0_onnx):
    c, worker = cluster
    head_id, worker_id = c.head_node.node_id, worker.node_id
    reference = tmp_path / "local.h5"
    embed_collection([str(digit_list)], reference, threads=1, batch_size=4, progress=False)

    store = tmp_path / "ray.h5"
    driver = _run_cli(tmp_path, str(digit_list), "--store", str(store), "--address", c.address,
                      pause=True)
    try:
        # The driver announces each shard it wrote and waits there. Once the shards hold rows
        # of both nodes, the worker node's processes are killed (raylet, object store and
        # workers alike) while the driver is paused: mid-run, whatever the machine's speed.
        while (point := wait_for_point(driver.stdout)) is not None:
            if {head_id, worker_id} <= _shard_nodes(store):
                break
            driver.stdin.write("\n")
            driver.stdin.flush()
        assert point is not None, "the run ended before rows of both nodes came back"
        shards_at_kill = len(list(shard_dir(store).glob("shard-*.h5")))
        assert shards_at_kill < N_IMAGES // 8, "the last shard came back before the loss"
        c.remove_node(worker, allow_graceful=False)
        out, _ = driver.communicate("\n" * N_IMAGES, timeout=180)  # a line for each pause left
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=30)
    summary = _summary(driver, out, tmp_path)
    assert summary["embedded"] + summary["duplicates"] == N_IMAGES and summary["failed"] == 0
    assert set(summary["nodes"]) == {head_id, worker_id}  # the summary names both nodes too
    assert len(list(shard_dir(store).glob("shard-*.h5"))) > shards_at_kill  # it was mid-run
    _same_store(store, reference)
