"""decode(): real photos vs a hand reference, every image mode, JPEG draft tolerance, bad files."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

import featurebank.extractor._preprocess as P
from featurebank.extractor._preprocess import DecodeError, decode, image_key, read_bytes
from featurebank.spec import Preprocessing

PRE = Preprocessing(input_size=(224, 224), resize_size=256, interpolation="bicubic")
SMALL = Preprocessing(input_size=(32, 32), resize_size=32, interpolation="bilinear")


def _jpeg(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=92, **kw)
    return buf.getvalue()


def _reference(img: Image.Image, pre: Preprocessing) -> np.ndarray:
    """Hand-written reference: shorter side to resize_size, then centre crop."""
    w, h = img.size
    s = pre.resize_size / min(w, h)
    img = img.resize((round(w * s), round(h * s)), Image.BICUBIC)
    left, top = (img.width - pre.input_size[1]) // 2, (img.height - pre.input_size[0]) // 2
    return np.asarray(img.crop((left, top, left + pre.input_size[1], top + pre.input_size[0])))


@pytest.mark.parametrize("name", ["chelsea", "coffee", "china", "astronaut"])
def test_real_photo_matches_reference(real_photos, tmp_path, name):
    arr = real_photos[name]
    out = decode(arr, PRE)
    assert out.dtype == np.uint8 and out.shape == (224, 224, 3)
    np.testing.assert_array_equal(out, _reference(Image.fromarray(arr), PRE))
    # a file, bytes and a PIL image all give the same pixels (too small for JPEG draft)
    path = tmp_path / f"{name}.jpg"
    path.write_bytes(_jpeg(arr))
    ref = _reference(Image.open(path).convert("RGB"), PRE)
    for src in (path, str(path), read_bytes(path), Image.open(path)):
        np.testing.assert_array_equal(decode(src, PRE), ref)
    assert image_key(read_bytes(path)) == image_key(path.read_bytes())
    assert len(image_key(b"x")) == 64


def test_non_square_crop_and_float_arrays(real_photos):
    pre = Preprocessing(input_size=(100, 150), resize_size=160, interpolation="bilinear")
    arr = real_photos["rocket"]
    assert decode(arr, pre).shape == (100, 150, 3)
    as_float = decode(arr.astype(np.float32) / 255.0, PRE)
    np.testing.assert_array_equal(as_float, decode(arr, PRE))
    gray = decode(arr[..., 0], PRE)
    assert np.array_equal(gray[..., 0], gray[..., 2])
    np.testing.assert_array_equal(decode(arr[..., :1], PRE), gray)


def test_jpeg_draft_tolerance_on_real_photos(real_photos):
    """Draft decoding (to >= 2x the resize target) vs a full decode, real photos at their size.

    A 32-pixel target makes photos of 300-640 px qualify for draft (1/2 .. 1/4 scale).
    Measured: max abs difference 27 grey levels, mean <= 1.8 (edges of textured photos).
    """
    pre = Preprocessing(input_size=(64, 64), resize_size=73, interpolation="bicubic")
    drafted = 0
    for name, arr in real_photos.items():
        raw = _jpeg(arr)
        fast = decode(raw, pre).astype(int)
        full = P.resize_crop(P.to_rgb(Image.open(io.BytesIO(raw))), pre).astype(int)
        diff = np.abs(fast - full)
        drafted += diff.max() > 0
        assert diff.max() <= 32 and diff.mean() <= 2.0, (name, diff.max(), diff.mean())
    assert drafted >= 3  # draft really happened on most photos


def test_jpeg_draft_tolerance_default_spec():
    """A real 1411x1411 photo with the default 256/224 spec: measured max 39, mean 0.50."""
    data = pytest.importorskip("skimage.data")
    try:
        arr = data.retina()
    except Exception as exc:  # needs skimage's data cache (pooch download)
        pytest.skip(f"skimage retina photo unavailable: {exc}")
    raw = _jpeg(arr)
    pre = Preprocessing(input_size=(224, 224), resize_size=254)
    diff = np.abs(decode(raw, pre).astype(int)
                  - P.resize_crop(P.to_rgb(Image.open(io.BytesIO(raw))), pre).astype(int))
    assert 0 < diff.max() <= 48 and diff.mean() <= 0.75


def test_small_jpeg_not_drafted(real_photos):
    raw = _jpeg(real_photos["chelsea"])
    full = P.resize_crop(P.to_rgb(Image.open(io.BytesIO(raw))), PRE)
    np.testing.assert_array_equal(decode(raw, PRE), full)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_cmyk_jpeg():
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 200  # reddish
    cmyk = Image.fromarray(rgb).convert("CMYK")
    out = decode(_save(cmyk, "JPEG", quality=95), SMALL).astype(int)
    assert abs(out[..., 0].mean() - 200) < 8 and out[..., 1].mean() < 10 and out[..., 2].mean() < 10


def test_16bit_png_is_scaled_not_clipped():
    ramp = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (32, 1))
    out = decode(_save(Image.fromarray(ramp), "PNG"), SMALL)
    row = out[16, :, 0].astype(int)
    assert row[0] <= 2 and row[-1] >= 253 and abs(row[16] - 255 * 16 / 31) < 4
    assert np.all(np.diff(row) >= 0)  # monotonic, not saturated at 255 after 1/256 of range


def test_palette_with_transparency_on_background():
    pal = Image.new("P", (32, 32), 0)
    pal.putpalette([0, 0, 255] + [255, 0, 0] * 255)
    pal.paste(1, (16, 0, 32, 32))
    data = _save(pal, "PNG", transparency=0)  # colour 0 (blue) is transparent
    out = decode(data, SMALL)
    assert tuple(out[16, 4]) == (255, 255, 255)  # transparent -> white background
    assert tuple(out[16, 28]) == (255, 0, 0)
    grey = Preprocessing(input_size=(32, 32), resize_size=32, background=(10, 20, 30))
    assert tuple(decode(data, grey)[16, 4]) == (10, 20, 30)


def test_la_and_rgba_alpha_composited():
    la = np.zeros((32, 32, 2), np.uint8)
    la[..., 0] = 100
    la[:, 16:, 1] = 255  # right half opaque grey, left half fully transparent
    out = decode(_save(Image.fromarray(la, "LA"), "PNG"), SMALL)
    assert tuple(out[8, 4]) == (255, 255, 255) and tuple(out[8, 28]) == (100, 100, 100)
    rgba = np.dstack([np.full((32, 32, 3), 50, np.uint8), np.full((32, 32), 128, np.uint8)])
    half = decode(rgba, SMALL)  # 50% alpha over white
    assert abs(int(half[5, 5, 0]) - (50 * 128 + 255 * 127) // 255) <= 1


def test_one_bit_image():
    bits = np.zeros((32, 32), bool)
    bits[:, 16:] = True
    out = decode(_save(Image.fromarray(bits), "PNG"), SMALL)
    assert tuple(out[5, 2]) == (0, 0, 0) and tuple(out[5, 30]) == (255, 255, 255)


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    out = decode(buf.getvalue(), SMALL)
    assert out[..., 0].min() > 240 and out[..., 1].max() < 15


def test_exif_orientation_applied(real_photos):
    """A JPEG stored sideways with EXIF 'rotate 90 CW' comes out upright (checked by content)."""
    upright = np.zeros((48, 32, 3), np.uint8)
    upright[:16] = (255, 0, 0)  # red band at the top
    stored = Image.fromarray(upright).transpose(Image.ROTATE_90)  # red band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # viewer rotates 90 CW -> red band at the top again
    data = _save(stored, "JPEG", quality=95, exif=exif.tobytes())
    pre = Preprocessing(input_size=(48, 32), resize_size=32, interpolation="bilinear")
    out = decode(data, pre).astype(int)
    assert out.shape == (48, 32, 3)
    assert out[:12, :, 0].mean() > 200 and out[36:, :, 0].mean() < 30


@pytest.mark.parametrize(("content", "reason"), [
    (b"", "empty file"),
    (b"hello, this is not a picture\n" * 10, "not an image"),
])
def test_bad_bytes(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(DecodeError) as err:
        decode(path, PRE)
    assert err.value.reason.startswith(reason) and str(path) in str(err.value)


def test_truncated_jpeg(real_photos, tmp_path):
    raw = _jpeg(real_photos["astronaut"])
    path = tmp_path / "cut.jpg"
    path.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(DecodeError) as err:
        decode(path, PRE)
    assert err.value.reason == "truncated image" and "cut.jpg" in str(err.value)


def test_huge_declared_size_refused_fast(tmp_path):
    """A PNG header declaring 50000x50000 is refused before any pixel is decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))
    path = tmp_path / "bomb.png"
    path.write_bytes(png)
    with pytest.raises(DecodeError) as err:
        decode(path, PRE)
    assert err.value.reason == f"too many pixels ({50000 * 50000} > {P.DEFAULT_MAX_PIXELS})"
    assert decode(_jpeg(np.zeros((64, 64, 3), np.uint8)), SMALL).shape == (32, 32, 3)
    with pytest.raises(DecodeError) as err:  # our own limit, below Pillow's
        decode(_jpeg(np.zeros((64, 48, 3), np.uint8)), PRE, max_pixels=1000)
    assert err.value.reason == "too many pixels (48x64 > 1000)"


def test_unreadable_paths(tmp_path):
    with pytest.raises(DecodeError, match="is a directory"):
        decode(tmp_path, PRE)
    with pytest.raises(DecodeError) as err:
        decode(tmp_path / "missing.jpg", PRE)
    assert "missing.jpg" in str(err.value)
    with pytest.raises(DecodeError, match="not an image"):
        decode(np.zeros((4, 4, 5), np.uint8), PRE)


def test_thin_strip_resizes_only_the_kept_box(real_photos):
    """Very wide images resize the crop's source box only; same pixels within 1 grey level."""
    strip = np.ascontiguousarray(real_photos["astronaut"][200:230])  # 30x512 -> 254x4335
    fast = decode(strip, Preprocessing(resize_size=254)).astype(int)
    ref = _reference(Image.fromarray(strip), Preprocessing(resize_size=254)).astype(int)
    assert np.abs(fast - ref).max() <= 1
    assert decode(np.zeros((1, 3000), np.uint8), PRE).shape == (224, 224, 3)


def test_fifo_is_refused_not_blocking(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(DecodeError) as err:
        decode(fifo, PRE)
    assert err.value.reason == "not a regular file"
