"""Every corpus kind through ``featurebank.extractor._preprocess.decode``, and fuzzing of decode."""

from __future__ import annotations

import io

import numpy as np
import pytest

from benchmarks.harness.corpus import ANY, FAIL, OK
from benchmarks.harness.decode import (
    KNOWN_BUGS,
    PRE,
    check_kind,
    fuzz_decode,
    mutate,
    seed_images,
)
from featurebank.extractor import DecodeError, decode

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
def test_decode_kind(name, by_name, ref_pixels, unprivileged_dir, run_unprivileged):
    kind = by_name[name]
    if kind.unprivileged:  # permission bits: checked by a child that is not root
        _check_as_unprivileged_user(kind, by_name, unprivileged_dir, run_unprivileged)
    else:
        check_kind(kind, ref_pixels)


def _check_as_unprivileged_user(kind, by_name, folder, run_unprivileged) -> None:
    """The mode-000 file and a readable control beside it, decoded by a child that dropped to
    user nobody (root reads any file): the control decodes, the locked file is refused."""
    import shutil

    control, locked = folder / "control.png", folder / "locked.jpg"
    shutil.copyfile(by_name["reference.png"].path, control)
    shutil.copyfile(kind.path, locked)  # root can read the corpus' mode-000 original
    control.chmod(0o644)
    locked.chmod(0)
    code = ("from featurebank.extractor import decode, DecodeError\n"
            "from featurebank.spec import Preprocessing\n"
            "for path in sys.argv[1:]:\n"
            "    try: print(decode(path, Preprocessing()).shape)\n"
            "    except DecodeError as e: print('reason:', e.reason)\n")
    out = run_unprivileged(code, control, locked)
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stdout.split("\n")[:2] == ["(224, 224, 3)", "reason: permission denied"], out.stdout


def test_decode_bytes_equals_path(by_name, ref_pixels):
    """The same file as bytes and as a PIL image decodes identically to the path form."""
    from PIL import Image

    path = by_name["exif_orientation_6.jpg"].path
    data = open(path, "rb").read()
    a, b = decode(path, PRE), decode(data, PRE)
    c = decode(Image.open(io.BytesIO(data)), PRE)
    assert np.array_equal(a, b) and np.array_equal(a, c)


def test_fuzzer_found_gif_frame_header_cut(by_name):
    """Bug 11, found by the 2,000-example fuzz run: an animated GIF whose second frame header
    is cut short made Pillow's ``n_frames`` raise ``struct.error`` out of ``decode``."""
    data = mutate(seed_images(by_name)[3], [(3468, 1, 234), (6623, 2, 228)], 0.41866568463843834)
    with pytest.raises(DecodeError, match="corrupt image"):
        decode(data, PRE)


def test_fuzz_decode(by_name):
    counts = fuzz_decode(by_name, max_examples=150)
    assert not counts["unhandled"], counts["unhandled"]
    assert counts["decoded"] and counts["decode_error"]  # the fuzzer reached both outcomes


def test_fuzzer_found_tiff_page_without_dimensions():
    """Found by the 2,000-example fuzz run of benchmarks/reliability.py: a TIFF whose second
    page has no ImageWidth tag made Pillow raise ``TypeError: Missing dimensions`` (from
    ``TiffImagePlugin._setup`` when it reads the page) out of decode."""
    import struct

    from PIL import Image

    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, :30] = 200
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "TIFF", save_all=True,
                                 append_images=[Image.fromarray(pixels[::-1].copy())])
    data = bytearray(buf.getvalue())
    assert data[:2] == b"II"  # little-endian: offsets and tags below are "<"
    ifd0 = struct.unpack_from("<I", data, 4)[0]
    ifd1 = struct.unpack_from("<I", data, ifd0 + 2 + 12 * struct.unpack_from("<H", data, ifd0)[0])[0]
    tags = [ifd1 + 2 + 12 * i for i in range(struct.unpack_from("<H", data, ifd1)[0])]
    (width,) = [at for at in tags if struct.unpack_from("<H", data, at)[0] == 256]
    struct.pack_into("<H", data, width, 0x0FFF)  # ImageWidth -> an unknown tag
    with pytest.raises(DecodeError, match="corrupt image"):
        decode(bytes(data), PRE)
