"""Decode checks shared by ``tests/reliability/`` and ``benchmarks/reliability.py``.

:func:`run_kind` decodes one corpus file under its time limit, :func:`check_kind` asserts its
expectation, :func:`fuzz_decode` feeds mutated real image bytes to decode and counts outcomes.
"""

from __future__ import annotations

import re
import signal
import time

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.harness.corpus import ANY, FAIL, OK
from featurebank.extractor import DecodeError, decode
from featurebank.spec import Preprocessing

PRE = Preprocessing()

# Kinds whose expectation a known, unfixed bug breaks: name -> "file: what happens, what to do".
# Each becomes a strict xfail; every bug this suite found so far has been fixed (see
# docs/reliability.md), so it is empty.
KNOWN_BUGS: dict[str, str] = {}


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout


def run_kind(kind) -> tuple[str, object, float]:
    """(``ok``, pixels) / (``fail``, reason) / (``crash``, exception), under the per-file limit."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, kind.max_seconds)
    t0 = time.perf_counter()
    try:
        out = ("ok", decode(kind.path, PRE))
    except DecodeError as exc:
        out = ("fail", exc.reason)
    except _Timeout:
        out = ("hang", f"no result within {kind.max_seconds} s")
    except Exception as exc:  # noqa: BLE001 - anything else is the bug we look for
        out = ("crash", repr(exc))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return (*out, time.perf_counter() - t0)


def check_kind(kind, ref: np.ndarray) -> None:
    """Assert the kind's expectation (shared with benchmarks/reliability.py)."""
    status, value, seconds = run_kind(kind)
    assert status in ("ok", "fail"), f"{kind.name}: {status}: {value}"
    assert seconds <= kind.max_seconds, f"{kind.name}: {seconds:.2f} s > {kind.max_seconds} s"
    if kind.expect == FAIL:
        assert status == "fail", f"{kind.name}: decoded, expected a failure /{kind.reason}/"
        assert re.search(kind.reason, value), f"{kind.name}: reason {value!r} !~ /{kind.reason}/"
        return
    if kind.expect == ANY:
        if status == "ok":
            assert value.shape == (224, 224, 3) and value.dtype == np.uint8
        return
    assert kind.expect == OK
    assert status == "ok", f"{kind.name}: failed with {value!r}"
    assert value.shape == (224, 224, 3) and value.dtype == np.uint8
    if kind.ref_equal is not None:
        diff = np.abs(value.astype(int) - ref.astype(int)).mean()
        assert diff <= kind.ref_equal, f"{kind.name}: mean |diff| from reference {diff:.2f}"
    if kind.check is not None:
        kind.check(value)


# -- fuzzing  --------------------------------------------------------------------------------
def seed_images(by_name) -> list[bytes]:
    names = ("baseline.jpg", "progressive.jpg", "reference.png", "animated.gif", "tiff_rgb.tif",
             "webp_lossy.webp", "bmp.bmp", "cmyk.jpg", "gray16.png")
    return [open(by_name[n].path, "rb").read() for n in names]


def mutate(data: bytes, edits: list[tuple[int, int, int]], cut: float | None) -> bytes:
    """Apply (position fraction, op, value) edits: 0 xor a byte, 1 insert, 2 delete; then cut."""
    out = bytearray(data)
    for frac, op, val in edits:
        if not out:
            break
        i = frac % len(out)
        if op == 0:
            out[i] ^= val or 1
        elif op == 1:
            out[i:i] = bytes([val])
        else:
            del out[i]
    if cut is not None:
        out = out[: int(len(out) * cut)]
    return bytes(out)


edit_lists = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 2), st.integers(0, 255)),
                      min_size=1, max_size=12)


def fuzz_decode(by_name, max_examples: int) -> dict:
    """Decode mutated real image bytes; only DecodeError may escape.

    Returns outcome counts; ``unhandled`` lists each other exception (type, message, the seed
    file and edits) instead of stopping at the first, so a long run reports every bug it met.
    """
    seeds = seed_images(by_name)
    counts: dict = {"decoded": 0, "decode_error": 0, "unhandled": []}

    # derandomize + no deadline: the same examples on any machine, however loaded (a slow
    # example is not a bug here; hangs are the corpus's per-file time limit's business)
    @settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(range(len(seeds))), edit_lists,
           st.one_of(st.none(), st.floats(0.0, 1.0)))
    def run(i, edits, cut):
        data = mutate(seeds[i], edits, cut)
        try:
            px = decode(data, PRE, max_pixels=20_000_000)
        except DecodeError as exc:
            assert exc.reason
            counts["decode_error"] += 1
            return
        except Exception as exc:  # noqa: BLE001 - the bugs this fuzzer looks for
            counts["unhandled"].append(f"{type(exc).__name__}: {str(exc)[:80]} "
                                       f"(seed {i}, edits {edits}, cut {cut})")
            return
        assert px.shape == (224, 224, 3) and px.dtype == np.uint8
        counts["decoded"] += 1

    run()
    return counts
