"""Every corpus kind through ``featurebank.extractor._preprocess.decode``, and fuzzing of decode."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from featurebank.extractor._preprocess import DecodeError, decode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurebank.spec import Preprocessing
from tests.reliability.corpus import ANY, FAIL, OK

PRE = Preprocessing()
KIND_NAMES = [  # kept in step with build_corpus by test_corpus_size_and_names
    "reference.png", "baseline.jpg", "progressive.jpg", "bmp.bmp", "tiff_rgb.tif", "tiff_lzw.tif",
    "tiff_multipage.tif", "webp_lossless.webp", "webp_lossy.webp", "png_as.jpg", "jpeg_as.png",
    "rgba_opaque.png", "cmyk.jpg", "ycck_adobe.jpg", "cmyk.tif", "huge_icc.jpg", "rgb48.png",
    "gray.jpg", "gray16.png", "gray16.tif", "float.tif", "float_nan_inf.tif",
    "int32_negative.tif", "bilevel.png", "palette.png", "la.png", "rgba.png",
    "palette_transparent.png", "animated.gif", "animated.webp",
    *(f"exif_orientation_{o}.jpg" for o in range(1, 10)), "exif_garbage.jpg",
    "one_pixel.png", "thin_3000x1.png", "large_2400x1800.jpg", "declares_50000x50000.png",
    "declares_50000x50000.jpg", "zero_bytes.jpg", "soi_eoi_only.jpg",
    *(f"truncated_jpeg_{p:02d}pct.jpg" for p in (2, 30, 60, 95)),
    *(f"truncated_png_{p:02d}pct.png" for p in (1, 30, 90)), "truncated_animated_gif_45pct.gif",
    "bitflip_png_idat.png", "bitflip_jpeg_scan.jpg", "html_as.jpg", "svg_as.png",
    "random_bytes.webp", "non_utf8_name", "unicode_name", "directory.jpg", "symlink_loop.jpg",
    "dangling_symlink.jpg", "chmod000.jpg", "fifo.jpg",
]
# Kinds whose expectation a known, unfixed bug breaks: name -> "file: what happens, what to do".
# Each becomes a strict xfail; every bug this suite found so far has been fixed (see
# docs/readme/reliability.md), so it is empty.
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


@pytest.fixture(scope="module")
def by_name(corpus):
    return {k.name: k for k in corpus}


@pytest.fixture(scope="module")
def ref_pixels(by_name):
    return decode(by_name["reference.png"].path, PRE)


def test_corpus_size_and_names(corpus):
    names = [k.name for k in corpus]
    assert len(names) >= 30 and len(set(names)) == len(names)
    assert names == KIND_NAMES
    assert {k.expect for k in corpus} == {OK, FAIL, ANY}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[n])) if n in KNOWN_BUGS
    else n for n in KIND_NAMES])
def test_decode_kind(name, by_name, ref_pixels):
    kind = by_name[name]
    if kind.root_only_skip and os.geteuid() == 0:
        pytest.skip(kind.root_only_skip)
    check_kind(kind, ref_pixels)


@pytest.mark.skipif(os.geteuid() != 0, reason="as a normal user test_decode_kind covers chmod 000")
def test_unreadable_file_as_unprivileged_user(by_name):
    """Root reads mode-000 files, so the check runs in a child that drops to user nobody."""
    code = ("import os, sys\n"
            "from featurebank.extractor._preprocess import decode, DecodeError\n"
            "from featurebank.spec import Preprocessing\n"
            "os.setgid(65534); os.setuid(65534)  # after the imports: nobody can't read the venv\n"
            "try: decode(sys.argv[1], Preprocessing()); print('decoded')\n"
            "except DecodeError as e: print('reason:', e.reason)\n")
    out = subprocess.run([sys.executable, "-c", code, by_name["chmod000.jpg"].path],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "reason: permission denied"


def test_decode_bytes_equals_path(by_name, ref_pixels):
    """The same file as bytes and as a PIL image decodes identically to the path form."""
    from PIL import Image

    path = by_name["exif_orientation_6.jpg"].path
    data = open(path, "rb").read()
    a, b = decode(path, PRE), decode(data, PRE)
    c = decode(Image.open(io.BytesIO(data)), PRE)
    assert np.array_equal(a, b) and np.array_equal(a, c)


# -- fuzzing --------------------------------------------------------------------------------
def _seeds(by_name) -> list[bytes]:
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
    seeds = _seeds(by_name)
    counts: dict = {"decoded": 0, "decode_error": 0, "unhandled": []}

    @settings(max_examples=max_examples, deadline=2000, derandomize=True, database=None,
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
                                       f"(seed {i}, edits {edits[:3]}, cut {cut})")
            return
        assert px.shape == (224, 224, 3) and px.dtype == np.uint8
        counts["decoded"] += 1

    run()
    return counts


def test_fuzzer_found_gif_frame_header_cut(by_name):
    """Bug 11, found by the 2,000-example fuzz run: an animated GIF whose second frame header
    is cut short made Pillow's ``n_frames`` raise ``struct.error`` out of ``decode``."""
    data = mutate(_seeds(by_name)[3], [(3468, 1, 234), (6623, 2, 228)], 0.41866568463843834)
    with pytest.raises(DecodeError, match="corrupt image"):
        decode(data, PRE)


def test_fuzz_decode(by_name):
    counts = fuzz_decode(by_name, max_examples=150)
    assert not counts["unhandled"], counts["unhandled"]
    assert counts["decoded"] and counts["decode_error"]  # the fuzzer reached both outcomes
