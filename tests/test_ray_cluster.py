"""A real two-node Ray cluster on this machine: ``embed --engine ray --address`` spreads over
both nodes, and losing the worker node mid-run still gives every row, equal to the local engine.

The cluster (Ray's ``cluster_utils.Cluster``: a head and one added node, each its own raylet,
object store and workers) is started once for the module and removed by the fixture whatever
happens. Its processes run under ``nice``: the machine is shared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

ray = pytest.importorskip("ray", reason="the Ray engine needs the optional extra: pip install 'featurebank[ray]'")
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(240)]

from benchmarks.harness.faults import REPO, subprocess_env  # noqa: E402
from featurebank.extractor import embed_collection  # noqa: E402
from featurebank.extractor.store._shards import shard_dir  # noqa: E402
from tests.test_ray_engine import _same_store, _wait_for  # noqa: E402

N_IMAGES = 96  # 12 shards of 8 rows: the kill lands while most are still to come
# Three logical CPUs per node: one embedding actor per node, and when a node is lost and its
# actor restarts beside the other one, still a CPU for the decode tasks.
NODE = dict(num_cpus=3, object_store_memory=120 * 1024**2)


@pytest.fixture(scope="module")
def cluster(model_cache):
    """Head + one worker node; yields (cluster, worker node). Always torn down."""
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # another module's local Ray would be joined instead of ours
        ray.shutdown()
    os.nice(max(0, 10 - os.nice(0)))  # the nodes' processes inherit it
    c = Cluster(initialize_head=False, shutdown_at_exit=True)
    try:
        c.add_node(**NODE, include_dashboard=False)
        worker = c.add_node(**NODE)
        c.wait_for_nodes()
        yield c, worker
    finally:
        c.shutdown()


@pytest.fixture(scope="module")
def digit_list(tmp_path_factory, digits_dir) -> Path:
    pngs = sorted(digits_dir.rglob("*.png"))[::8][:N_IMAGES]
    path = tmp_path_factory.mktemp("cluster") / "list.csv"
    path.write_text("".join(f"{p},{p.parent.name}\n" for p in pngs))
    return path


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
    cmd = [sys.executable, "-m", "featurebank", "embed", str(digit_list), "--store", str(store),
           "--engine", "ray", "--address", c.address, "--workers", "2", "--threads", "1",
           "--batch-size", "4", "--shard-rows", "8", "--no-progress", "--json"]
    driver = subprocess.Popen(["nice", "-n", "10", *cmd], cwd=REPO, env=subprocess_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Both nodes have embedded rows (each shard records its rows' nodes): then the worker
        # node's processes are killed, raylet, object store and workers alike.
        _wait_for(lambda: {head_id, worker_id} <= _shard_nodes(store) or driver.poll() is not None,
                  "rows embedded on both nodes", timeout=180)
        assert driver.poll() is None, f"the run ended before the node could be lost: {driver.communicate()}"
        shards_at_kill = len(list(shard_dir(store).glob("shard-*.h5")))
        c.remove_node(worker, allow_graceful=False)
        out, err = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=30)
    (tmp_path / "driver.err").write_text(err)
    assert driver.returncode == 0, "\n".join(  # without the raylet's and core worker's chatter
        line for line in err.splitlines() if not line.startswith("["))[-4000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["embedded"] + summary["duplicates"] == N_IMAGES and summary["failed"] == 0
    assert set(summary["nodes"]) == {head_id, worker_id}  # the summary names both nodes too
    assert len(list(shard_dir(store).glob("shard-*.h5"))) > shards_at_kill  # it was mid-run
    _same_store(store, reference)
