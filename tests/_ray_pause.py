"""Announced pauses in the Ray engine, so that its tests kill an actor or the driver at a
point of the run they know instead of at a moment they guess (issue 31).

Actors run in Ray's worker processes, out of the test's reach: :func:`install` is Ray's
``worker_process_setup_hook`` (the test's ``ray.init`` names it, with :data:`ENV` naming a
folder). It wraps the embedding actor's batch call in every worker; when the folder holds an
``arm`` file with N, the N-th batch of the run pauses before it is embedded: the worker writes
its pid to ``paused`` (once per run: a restarted actor does not pause again) and waits until a
``go`` file appears or it is killed. Every batch call also appends the worker's pid to
``calls``, so a test sees which actors did the work.

The driver is the test's own process or a child it started: :func:`pause_driver_after_shard`
wraps the driver's shard writer so that after the N-th shard it prints ``KILLPOINT shard N``
(the announcement of :mod:`tests._killpoints`) and waits for a line on stdin.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tests._killpoints import ANNOUNCE

ENV = "FEATUREBANK_TEST_RAY_PAUSE"


def install() -> None:
    """Ray's worker setup hook: wrap ``_Embedder.__call__`` when :data:`ENV` names a folder."""
    folder = os.environ.get(ENV)
    if not folder:
        return
    from featurebank.extractor.engines import _ray

    call = _ray._Embedder.__call__

    def paused_call(self, batch):
        _maybe_pause(Path(folder))
        return call(self, batch)

    _ray._Embedder.__call__ = paused_call


def _maybe_pause(folder: Path) -> None:
    with open(folder / "calls", "a") as f:
        f.write(f"{os.getpid()}\n")
    arm = folder / "arm"
    if not arm.exists() or len(calls(folder)) < int(arm.read_text()):
        return
    try:
        os.close(os.open(folder / "token", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:  # this run paused once already
        return
    (folder / "paused.tmp").write_text(str(os.getpid()))
    os.replace(folder / "paused.tmp", folder / "paused")  # whole, or not there
    while not (folder / "go").exists():  # until the test kills this process or lets it go on
        time.sleep(0.05)


def calls(folder: Path) -> list[int]:
    """The pid of the worker of each batch call so far."""
    path = folder / "calls"
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def pause_driver_after_shard(shards: set[int] | None = None) -> None:
    """In the driver: after each shard numbered in ``shards`` (1 for the first; None: every
    shard) is written under its final name, announce ``KILLPOINT shard N`` on stdout and wait
    for a line on stdin (at its end, none: the run goes on)."""
    from featurebank.extractor.engines import _ray

    write = _ray._ShardWriter.flush

    def flush(self):
        before = self.seq
        write(self)
        if self.seq > before and (shards is None or self.seq in shards):
            print(f"{ANNOUNCE} shard {self.seq}", flush=True)
            sys.stdin.readline()

    _ray._ShardWriter.flush = flush


def main(argv: list[str]) -> int:
    """``python -m tests._ray_pause all|N[,N...] ARGS...``: ``featurebank ARGS...`` whose
    driver pauses after the shards named."""
    shards = None if argv[0] == "all" else {int(n) for n in argv[0].split(",")}
    pause_driver_after_shard(shards)
    from featurebank.cli import main as featurebank

    return featurebank(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
