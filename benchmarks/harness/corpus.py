"""A corpus of bad and unusual image files, made by the suite itself from a real photo.

``build_corpus(folder)`` writes every kind into ``folder`` and returns the list of
:class:`Kind`: where the file is, and what featurebank must do with it — embed it (optionally
with a pixel check, e.g. "equals the reference decode", "the red marker is top-left") or record
it as a failure whose reason matches a pattern. Nothing may crash or hang.

The reference is scikit-image's ``chelsea`` (a real photo of a cat) at 160x120; lossless
re-encodings of it (PNG, BMP, TIFF, WebP lossless, ...) must decode to exactly the same pixels.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

OK, FAIL, ANY = "ok", "fail", "any"

# What a failure's reason must say (regexes on DecodeError.reason).
R_EMPTY = r"empty file"
R_NOT_IMAGE = r"not an image"
R_TRUNC_OR_CORRUPT = r"truncated image|corrupt image|not an image"
R_CORRUPT = r"corrupt image|truncated image"
R_PIXELS = r"too many pixels"
R_DIR = r"is a directory"
R_UNREADABLE = r"unreadable|permission denied"

# Quadrant colours of the orientation marker, upright: top-left red, top-right green,
# bottom-left blue, bottom-right white.
QUADRANTS = {"tl": (255, 0, 0), "tr": (0, 255, 0), "bl": (0, 0, 255), "br": (255, 255, 255)}

# Inverse of the transform Pillow's exif_transpose applies for each orientation: the file
# stores inverse(upright) so that a correct decoder shows the marker upright again.
_STORE_FOR_ORIENTATION = {
    1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270,
}


@dataclass
class Kind:
    """One kind of input and its expectation.

    ``expect``: ``ok`` (decodes to uint8 (H, W, 3); ``check(pixels, ref)`` may assert more),
    ``fail`` (DecodeError whose reason matches ``reason``) or ``any`` (either; never a crash).
    ``ref_equal``: the decode must equal the reference decode within this mean absolute
    difference (0 = identical pixels).
    """

    name: str
    path: str
    expect: str
    reason: str = ""
    check: Callable[[np.ndarray], None] | None = None
    ref_equal: float | None = None
    unprivileged: str = ""  # non-empty: the expectation holds for a user that is not root
    max_seconds: float = 10.0  # per-file time limit: a hang is a failure


def reference_rgb() -> np.ndarray:
    """The reference photo: scikit-image's chelsea (a real cat photo) at 160x120."""
    from skimage import data

    return np.asarray(Image.fromarray(data.chelsea()).resize((160, 120), Image.BICUBIC))


def marker_rgb(w: int = 96, h: int = 64) -> np.ndarray:
    """A landscape image with one solid colour per quadrant (see ``QUADRANTS``)."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = QUADRANTS["tl"]
    a[: h // 2, w // 2:] = QUADRANTS["tr"]
    a[h // 2:, : w // 2] = QUADRANTS["bl"]
    a[h // 2:, w // 2:] = QUADRANTS["br"]
    return a


def assert_marker_upright(px: np.ndarray) -> None:
    """The decoded (cropped) image shows the marker upright: each quadrant's colour in place."""
    h, w = px.shape[:2]
    boxes = {"tl": px[: h // 4, : w // 4], "tr": px[: h // 4, -w // 4:],
             "bl": px[-h // 4:, : w // 4], "br": px[-h // 4:, -w // 4:]}
    for q, box in boxes.items():
        got = box.reshape(-1, 3).mean(0)
        assert np.abs(got - QUADRANTS[q]).max() < 40, f"quadrant {q}: {got.round()} != {QUADRANTS[q]}"


def _uniform(colour) -> Callable[[np.ndarray], None]:
    def check(px: np.ndarray) -> None:
        assert np.abs(px.reshape(-1, 3).astype(int) - colour).max() <= 2, px.reshape(-1, 3)[:3]
    return check


def _png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, raw_rows: bytes) -> bytes:
    """A PNG written by hand (for what Pillow will not write: 48-bit RGB, lying headers)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(raw_rows)) + _png_chunk(b"IEND", b""))


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def ycck_jpeg(rgb: np.ndarray) -> bytes:
    """An Adobe YCCK JPEG: Pillow writes 4-channel JPEGs only as CMYK (Adobe transform 0), so
    the channels are written as YCC+K and the APP14 transform byte is patched to 2 (YCCK)."""
    cmyk = np.asarray(Image.fromarray(rgb).convert("CMYK"), dtype=np.float64)
    r, g, b = (255 - cmyk[..., i] for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    ycck = np.clip(np.stack([y, cb, cr, cmyk[..., 3]], -1) + 0.5, 0, 255).astype(np.uint8)
    data = bytearray(_encode(Image.fromarray(ycck, "CMYK"), "JPEG", quality=95))
    at = data.find(b"Adobe")
    assert at > 0, "Pillow wrote no Adobe APP14 marker"
    data[at + 11] = 2  # "Adobe" + version(2) + flags0(2) + flags1(2) -> transform
    return bytes(data)


def _jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """Patch the SOF0/SOF2 frame header of a JPEG to declare another size."""
    out = bytearray(data)
    for sof in (b"\xff\xc0", b"\xff\xc2"):
        at = out.find(sof)
        if at > 0:
            out[at + 5: at + 9] = struct.pack(">HH", height, width)
            return bytes(out)
    raise ValueError("no SOF marker")


def build_corpus(folder: str | Path) -> list[Kind]:
    """Write every kind of input into ``folder``; return their expectations."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    ref = reference_rgb()
    ref_img = Image.fromarray(ref)
    gray = np.asarray(ref_img.convert("L"))
    kinds: list[Kind] = []

    def put(name: str, data: bytes, expect: str, filename: str | bytes | None = None, **kw) -> str:
        fname = filename if filename is not None else name
        path = os.path.join(os.fsencode(root), os.fsencode(fname))
        with open(path, "wb") as f:
            f.write(data)
        kinds.append(Kind(name, os.fsdecode(path), expect, **kw))
        return os.fsdecode(path)

    jpeg = _encode(ref_img, "JPEG", quality=92)
    png = _encode(ref_img, "PNG")
    put("reference.png", png, OK, ref_equal=0.0)
    put("baseline.jpg", jpeg, OK, ref_equal=3.0)
    put("progressive.jpg", _encode(ref_img, "JPEG", quality=92, progressive=True), OK, ref_equal=3.0)
    put("bmp.bmp", _encode(ref_img, "BMP"), OK, ref_equal=0.0)
    put("tiff_rgb.tif", _encode(ref_img, "TIFF"), OK, ref_equal=0.0)
    put("tiff_lzw.tif", _encode(ref_img, "TIFF", compression="tiff_lzw"), OK, ref_equal=0.0)
    other = Image.fromarray(255 - ref)  # page 2 differs: only page 1 may be embedded
    put("tiff_multipage.tif", _encode(ref_img, "TIFF", save_all=True, append_images=[other]), OK,
        ref_equal=0.0)
    put("webp_lossless.webp", _encode(ref_img, "WEBP", lossless=True), OK, ref_equal=0.0)
    put("webp_lossy.webp", _encode(ref_img, "WEBP", quality=90), OK, ref_equal=4.0)
    put("png_as.jpg", png, OK, ref_equal=0.0)  # wrong extension: content decides
    put("jpeg_as.png", jpeg, OK, ref_equal=3.0)
    put("rgba_opaque.png", _encode(ref_img.convert("RGBA"), "PNG"), OK, ref_equal=0.0)
    put("cmyk.jpg", _encode(ref_img.convert("CMYK"), "JPEG", quality=95), OK, ref_equal=3.0)
    put("ycck_adobe.jpg", ycck_jpeg(ref), OK, ref_equal=4.0)
    put("cmyk.tif", _encode(ref_img.convert("CMYK"), "TIFF"), OK, ref_equal=1.0)
    icc = b"\0" * 4 + b"featurebank-huge-icc" * 50_000  # ~1 MB of profile: must not matter
    put("huge_icc.jpg", _encode(ref_img, "JPEG", quality=92, icc_profile=icc), OK, ref_equal=3.0)
    rows48 = b"".join(b"\0" + (ref[y].astype(">u2") * 257).tobytes() for y in range(ref.shape[0]))
    put("rgb48.png", png_bytes(ref.shape[1], ref.shape[0], 16, 2, rows48), OK, ref_equal=1.0)

    # Grey and odd modes: compared with the grey reference, replicated to 3 channels.
    def gray_check(tol: float) -> Callable[[np.ndarray], None]:
        from featurebank.extractor._preprocess import decode
        from featurebank.spec import Preprocessing

        want = decode(np.repeat(gray[..., None], 3, 2), Preprocessing()).astype(int)

        def check(px: np.ndarray) -> None:
            diff = np.abs(px.astype(int) - want).mean()
            assert diff <= tol, f"mean |diff| from the grey reference {diff:.2f} > {tol}"
        return check

    put("gray.jpg", _encode(Image.fromarray(gray), "JPEG", quality=92), OK, check=gray_check(3.0))
    g16 = gray.astype(np.uint16) * 257
    put("gray16.png", _encode(Image.fromarray(g16), "PNG"), OK, check=gray_check(1.0))
    put("gray16.tif", _encode(Image.fromarray(g16), "TIFF"), OK, check=gray_check(1.0))
    put("float.tif", _encode(Image.fromarray(gray.astype(np.float32) / 255.0, "F"), "TIFF"), OK,
        check=gray_check(1.0))
    nan = gray.astype(np.float32) / 255.0
    nan[:10] = np.nan
    nan[-10:] = np.inf
    put("float_nan_inf.tif", _encode(Image.fromarray(nan, "F"), "TIFF"), ANY)
    put("int32_negative.tif", _encode(Image.fromarray(gray.astype(np.int32) - 128, "I"), "TIFF"), ANY)
    put("bilevel.png", _encode(Image.fromarray(gray).convert("1"), "PNG"), OK)
    put("palette.png", _encode(ref_img.quantize(256), "PNG"), OK, ref_equal=6.0)

    # Alpha: transparent areas must come out as the background (white by default).
    half = np.zeros((120, 160), np.uint8)
    half[:, :80] = 255  # left half opaque, right half fully transparent
    la = Image.merge("LA", [Image.fromarray(gray), Image.fromarray(half)])
    rgba = ref_img.convert("RGBA")
    rgba.putalpha(Image.fromarray(half))

    def right_white(px: np.ndarray) -> None:
        assert px[:, -60:].min() >= 250, "transparent half is not the white background"
        assert px[:, :60].mean() < 200, "opaque half lost"
    put("la.png", _encode(la, "PNG"), OK, check=right_white)
    put("rgba.png", _encode(rgba, "PNG"), OK, check=right_white)
    pal = Image.fromarray(np.where(half > 0, 1, 0).astype(np.uint8), "P")
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    put("palette_transparent.png", _encode(pal, "PNG", transparency=0), OK,
        check=lambda px: (right_white(px), _assert(px[:, :60].reshape(-1, 3).mean(0)[0] > 240)))

    # Animations: the first frame (red), never a later one (blue).
    frames = [Image.new("RGB", (64, 48), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    put("animated.gif", _encode(frames[0], "GIF", save_all=True, append_images=frames[1:],
                                duration=50, loop=0), OK, check=_uniform((255, 0, 0)))
    put("animated.webp", _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:],
                                 duration=50, lossless=True), OK, check=_uniform((255, 0, 0)))

    # EXIF orientation 1..8: the marker must come out upright.
    marker = Image.fromarray(marker_rgb())
    for o, inverse in _STORE_FOR_ORIENTATION.items():
        stored = marker if inverse is None else marker.transpose(inverse)
        exif = Image.Exif()
        exif[0x0112] = o
        put(f"exif_orientation_{o}.jpg", _encode(stored, "JPEG", quality=95, exif=exif), OK,
            check=assert_marker_upright)
    exif = Image.Exif()
    exif[0x0112] = 9  # out of range: ignored, not fatal
    put("exif_orientation_9.jpg", _encode(marker, "JPEG", quality=95, exif=exif), OK,
        check=assert_marker_upright)
    put("exif_garbage.jpg", jpeg[:2] + b"\xff\xe1\x00\x10Exif\x00\x00garbage!" + jpeg[2:], ANY)

    # Sizes.
    put("one_pixel.png", _encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"), OK,
        check=_uniform((10, 200, 30)))
    # Extreme aspect ratio: must be as quick as any small image (a resize of the whole strip to
    # the short-side target would be 256x768000 pixels, ~600 MB, seconds).
    put("thin_3000x1.png", _encode(Image.new("RGB", (3000, 1), (90, 90, 90)), "PNG"), OK,
        check=_uniform((90, 90, 90)), max_seconds=1.0)
    put("large_2400x1800.jpg", _encode(ref_img.resize((2400, 1800), Image.BICUBIC), "JPEG",
                                       quality=90), OK, ref_equal=4.0)
    put("declares_50000x50000.png", png_bytes(50_000, 50_000, 8, 2, b"\0" * 64), FAIL, reason=R_PIXELS)
    put("declares_50000x50000.jpg", _jpeg_with_size(jpeg, 50_000, 50_000), FAIL, reason=R_PIXELS)

    # Broken files.
    put("zero_bytes.jpg", b"", FAIL, reason=R_EMPTY)
    put("soi_eoi_only.jpg", b"\xff\xd8\xff\xd9", FAIL, reason=R_TRUNC_OR_CORRUPT)
    for frac in (0.02, 0.3, 0.6, 0.95):
        put(f"truncated_jpeg_{int(frac * 100):02d}pct.jpg", jpeg[: int(len(jpeg) * frac)], FAIL,
            reason=R_TRUNC_OR_CORRUPT)
    for frac in (0.01, 0.3, 0.9):
        put(f"truncated_png_{int(frac * 100):02d}pct.png", png[: int(len(png) * frac)], FAIL,
            reason=R_TRUNC_OR_CORRUPT)
    gif = open(next(k.path for k in kinds if k.name == "animated.gif"), "rb").read()
    put("truncated_animated_gif_45pct.gif", gif[: int(len(gif) * 0.45)], FAIL,
        reason=R_TRUNC_OR_CORRUPT)  # found by the fuzzer
    flipped = bytearray(png)
    at = png.find(b"IDAT") + 200
    flipped[at] ^= 0x10  # CRC and zlib stream now disagree
    put("bitflip_png_idat.png", bytes(flipped), FAIL, reason=R_CORRUPT)
    rng = np.random.default_rng(7)
    flipped = bytearray(jpeg)
    for i in rng.integers(len(jpeg) // 2, len(jpeg) - 2, 8):
        flipped[i] ^= 1 << int(rng.integers(8))
    put("bitflip_jpeg_scan.jpg", bytes(flipped), ANY)  # JPEG scans tolerate flips: garbled or error
    put("html_as.jpg", b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n", FAIL,
        reason=R_NOT_IMAGE)
    put("svg_as.png", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', FAIL,
        reason=R_NOT_IMAGE)
    put("random_bytes.webp", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), FAIL,
        reason=R_NOT_IMAGE)

    # File-system oddities.
    put("non_utf8_name", jpeg, OK, filename=b"caf\xe9_\xff.jpg", ref_equal=3.0)
    put("unicode_name", jpeg, OK, filename="chat_ü_猫 (1).jpg", ref_equal=3.0)
    d = root / "folder.jpg"
    d.mkdir(exist_ok=True)
    kinds.append(Kind("directory.jpg", str(d), FAIL, reason=R_DIR))
    loop_a, loop_b = root / "loop_a.jpg", root / "loop_b.jpg"
    for src, dst in ((loop_a, loop_b), (loop_b, loop_a)):
        if not src.is_symlink():
            src.symlink_to(dst.name)
    kinds.append(Kind("symlink_loop.jpg", str(loop_a), FAIL, reason=R_UNREADABLE))
    dangling = root / "dangling.jpg"
    if not dangling.is_symlink():
        dangling.symlink_to("does-not-exist.jpg")
    kinds.append(Kind("dangling_symlink.jpg", str(dangling), FAIL, reason=R_UNREADABLE))
    locked = put("chmod000.jpg", jpeg, FAIL, reason=R_UNREADABLE,
                 unprivileged="root reads mode-000 files; checked as user nobody")
    os.chmod(locked, 0)
    fifo = root / "fifo.jpg"
    if not fifo.exists():
        os.mkfifo(fifo)
    kinds.append(Kind("fifo.jpg", str(fifo), FAIL, reason=R_UNREADABLE + "|not a regular file",
                      max_seconds=2.0))
    return kinds


def _assert(cond: bool) -> None:
    assert cond
