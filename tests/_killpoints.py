"""Run a ``featurebank`` command that announces a point of its work and waits there, so that a
test kills it exactly there: no test guesses a moment from a measured time (issue 31).

    python -m tests._killpoints POINT N[,N...] [ARGS...]

runs ``featurebank ARGS...``; at the N-th time the store reaches ``POINT`` it prints
``KILLPOINT POINT N`` on stdout and waits for a line on stdin: the test kills it there, or
looks at the store and sends a line to let it go on to the next N.
Points of :meth:`FeatureStore.commit`, counted over the commits that reach them:

- ``open``: the store file is open for the commit, nothing of the batch written yet;
- ``images``: inside the commit, its images (keys, paths, labels) written, no row yet;
- ``rows``: inside the commit, its rows written, its failures and the commit log not yet;
- ``commit``: the commit returned (the batch is durable; the file is closed).

The child is the installed featurebank, as every subprocess of the tests (the harness's
``subprocess_env``); only the store's methods are wrapped, in this process.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable
from typing import Any

POINTS = ("open", "images", "rows", "commit")
ANNOUNCE = "KILLPOINT"


def _stop_at(point: str, targets: set[int]) -> Callable[[str], None]:
    seen = {p: 0 for p in POINTS}

    def reached(where: str) -> None:
        seen[where] += 1
        if where == point and seen[where] in targets:
            print(f"{ANNOUNCE} {where} {seen[where]}", flush=True)
            sys.stdin.readline()  # until the test kills this process or lets it go on

    return reached


def _wrap(owner: Any, name: str, after: Callable[[], None]) -> None:
    method = getattr(owner, name)

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = method(*args, **kwargs)
        after()
        return out

    setattr(owner, name, wrapper)


def install(point: str, targets: set[int]) -> None:
    """Wrap the store's commit steps so that ``point`` is announced at the ``targets``-th
    times."""
    from featurebank.extractor.store._store import FeatureStore

    reached = _stop_at(point, targets)
    opened = FeatureStore._open

    def _open(self: Any, mode: str) -> Any:
        f = opened(self, mode)
        if mode == "a":
            reached("open")
        return f

    FeatureStore._open = _open  # type: ignore[method-assign]
    _wrap(FeatureStore, "_commit_images", lambda: reached("images"))
    _wrap(FeatureStore, "_commit_rows", lambda: reached("rows"))
    _wrap(FeatureStore, "commit", lambda: reached("commit"))


def wait_for_point(stdout: Any) -> str | None:
    """The announcement line from a child's stdout, or None if it ended first."""
    for line in stdout:
        text = line.decode() if isinstance(line, bytes) else line
        if text.startswith(ANNOUNCE):
            return text.strip()
    return None


def main(argv: list[str]) -> int:
    point, targets, args = argv[0], {int(n) for n in argv[1].split(",")}, argv[2:]
    if point not in POINTS or min(targets) < 1:
        raise SystemExit(f"usage: python -m tests._killpoints {{{','.join(POINTS)}}} N[,N...] "
                         "ARGS...")
    install(point, targets)
    from featurebank.cli import main as featurebank

    with contextlib.suppress(BrokenPipeError):
        return featurebank(args)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
