"""Safe image and mask reading: every bad file gives ImageError with a readable reason."""
from __future__ import annotations

import hashlib
import os
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from tasks.datasets.image_io import file_sha256, read_image, read_mask, to_mask_array, to_rgb_array
from tasks.datasets.records import ImageError


def _png(path, arr_or_img, **save):
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    img.save(path, **save)
    return str(path)


def _rgb(h=6, w=8, value=(10, 200, 30)):
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:] = value
    return arr


def _reason(call, *args, **kw) -> str:
    with pytest.raises(ImageError) as info:
        call(*args, **kw)
    assert info.value.path  # always names the file
    return info.value.reason


def _bomb_png(path, width, height):
    """A tiny PNG whose IHDR declares width x height (no pixel data to match)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + body)
    return str(path)


# ---------------------------------------------------------------- failures

def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    assert _reason(read_image, str(p)) == "empty file (0 bytes)"


def test_text_file_named_png(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is not an image\n")
    assert _reason(read_image, str(p)) == "not an image: cannot identify image file"


def test_truncated_png(tmp_path):
    rng = np.random.default_rng(0)
    good = _png(tmp_path / "good.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = open(good, "rb").read()
    bad = tmp_path / "half.png"
    bad.write_bytes(data[: len(data) // 2])
    assert _reason(read_image, str(bad)) == "truncated or corrupt image data"


def test_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(1)
    good = _png(tmp_path / "good.jpg", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), quality=95)
    data = open(good, "rb").read()
    bad = tmp_path / "half.jpg"
    bad.write_bytes(data[: len(data) // 2])
    assert _reason(read_image, str(bad)) == "truncated or corrupt image data"


def test_decompression_bomb_rejected_quickly(tmp_path):
    path = _bomb_png(tmp_path / "bomb.png", 20000, 20000)
    start = time.perf_counter()
    reason = _reason(read_image, path)
    assert time.perf_counter() - start < 1.0
    assert reason.startswith("image too large: ")
    assert "400000000" in reason and "possible decompression bomb" in reason


def test_declared_size_over_own_limit(tmp_path):
    path = _bomb_png(tmp_path / "big.png", 9000, 9000)  # 81 Mpx: under Pillow's limit, over ours
    reason = _reason(read_image, path)
    assert reason == ("image too large: 9000 x 9000 pixels exceeds the limit of 64000000 "
                      "(possible decompression bomb)")
    small = _png(tmp_path / "small.png", _rgb(16, 16))
    assert "exceeds the limit of 100" in _reason(read_image, small, max_pixels=100)


def test_pillow_bomb_warning_becomes_error_for_this_call_only(tmp_path):
    path = _bomb_png(tmp_path / "warn.png", 10000, 10000)  # between Pillow's 1x and 2x limits
    before = list(warnings.filters)
    reason = _reason(read_image, path, max_pixels=10**9)
    assert "possible decompression bomb" in reason
    assert warnings.filters == before


def test_symlink_outside_root(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    target = _png(outside / "secret.png", _rgb())
    link = root / "link.png"
    os.symlink(target, link)
    reason = _reason(read_image, str(link), root=str(root))
    assert reason == f"resolves outside the dataset root ({root})"
    # without root the same file reads fine; a "../" path escapes too
    assert read_image(str(link)).shape == (6, 8, 3)
    assert "outside the dataset root" in _reason(read_image, str(root / ".." / "outside" / "secret.png"),
                                                 root=str(root))


def test_symlink_inside_root_is_allowed(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    target = _png(root / "a" / "img.png", _rgb())
    os.symlink(target, root / "alias.png")
    assert read_image(str(root / "alias.png"), root=str(root))[0, 0].tolist() == [10, 200, 30]


def test_missing_file_and_directory(tmp_path):
    assert _reason(read_image, str(tmp_path / "nope.png")) == "file not found"
    assert _reason(read_image, str(tmp_path)) == "is a directory, not an image file"
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
    assert "broken symlink" in _reason(read_image, str(tmp_path / "dangling.png"))


def test_error_message_is_readable(tmp_path):
    p = tmp_path / "x.png"
    p.write_bytes(b"\x89PNG garbage")
    with pytest.raises(ImageError) as info:
        read_image(str(p))
    assert str(info.value).startswith(str(p) + ": not an image")


# ---------------------------------------------------------------- conversions

def test_rgb_roundtrip(tmp_path):
    arr = np.random.default_rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = read_image(_png(tmp_path / "rgb.png", arr))
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    assert np.array_equal(out, arr)


def test_grey_l(tmp_path):
    arr = np.full((4, 5), 77, np.uint8)
    arr[0, 0] = 250
    out = read_image(_png(tmp_path / "l.png", Image.fromarray(arr, mode="L")))
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [250, 250, 250] and out[1, 1].tolist() == [77, 77, 77]


def test_one_bit(tmp_path):
    img = Image.new("1", (6, 3), 0)
    img.putpixel((2, 1), 1)
    out = read_image(_png(tmp_path / "bw.png", img))
    assert out.shape == (3, 6, 3)
    assert out[1, 2].tolist() == [255, 255, 255] and out[0, 0].tolist() == [0, 0, 0]


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_sixteen_bit(tmp_path, fmt):
    arr = np.array([[65535, 256, 0, 32768]], np.uint16)
    path = _png(tmp_path / f"g16.{fmt}", Image.fromarray(arr))
    with Image.open(path) as im:
        assert im.mode in ("I;16", "I")
    out = read_image(path)
    assert out.shape == (1, 4, 3) and out.dtype == np.uint8
    assert out[0, :, 0].tolist() == [255, 1, 0, 128]


def test_sixteen_bit_big_endian_tiff(tmp_path):
    img = Image.frombytes("I;16B", (2, 1), np.array([65535, 512], ">u2").tobytes())
    path = _png(tmp_path / "g16b.tif", img)
    with Image.open(path) as im:
        assert im.mode == "I;16B"
    assert read_image(path)[0, :, 1].tolist() == [255, 2]


def test_thirty_two_bit_int_and_float_tiff(tmp_path):
    i32 = _png(tmp_path / "i32.tif", Image.fromarray(np.array([[1 << 24, 0]], np.int32)))
    assert read_image(i32)[0, :, 0].tolist() == [1, 0]
    f32 = _png(tmp_path / "f.tif", Image.fromarray(np.array([[0.5, 1.0, 0.0]], np.float32)))
    assert read_image(f32)[0, :, 2].tolist() == [128, 255, 0]


def test_palette_colour_preserved(tmp_path):
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * (3 * 254))
    img.putpixel((1, 2), 1)
    out = read_image(_png(tmp_path / "p.png", img))
    assert out[2, 1].tolist() == [10, 200, 30] and out[0, 0].tolist() == [0, 0, 0]


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 10, 200, 30, 90, 60, 40] + [0] * (3 * 253))
    img.putpixel((0, 0), 2)
    img.putpixel((3, 3), 1)
    path = _png(tmp_path / "pt.png", img, transparency=2)
    with Image.open(path) as im:
        assert im.mode == "P" and "transparency" in im.info
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Pillow transparency warning leaks out
        out = read_image(path)
    # alpha dropped, colour of the transparent index kept as stored
    assert out[0, 0].tolist() == [90, 60, 40] and out[3, 3].tolist() == [10, 200, 30]


def test_rgba_and_la_drop_alpha(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 0)
    rgba[1, 1] = (200, 100, 50, 255)
    out = read_image(_png(tmp_path / "rgba.png", Image.fromarray(rgba, mode="RGBA")))
    assert out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [10, 20, 30] and out[1, 1].tolist() == [200, 100, 50]
    la = Image.new("LA", (2, 2), (100, 0))
    assert read_image(_png(tmp_path / "la.png", la))[1, 0].tolist() == [100, 100, 100]


def test_cmyk_jpeg(tmp_path):
    white = _png(tmp_path / "w.jpg", Image.new("CMYK", (16, 16), (0, 0, 0, 0)), quality=95)
    red = _png(tmp_path / "r.jpg", Image.new("CMYK", (16, 16), (0, 255, 255, 0)), quality=95)
    with Image.open(red) as im:
        assert im.mode == "CMYK"
    assert np.abs(read_image(white).astype(int) - 255).max() <= 3
    r = read_image(red)[8, 8].astype(int)
    assert r[0] >= 245 and r[1] <= 10 and r[2] <= 10


def test_ycbcr_tiff(tmp_path):
    img = Image.fromarray(_rgb(4, 4, (200, 50, 30))).convert("YCbCr")
    path = _png(tmp_path / "ycc.tif", img)
    with Image.open(path) as im:
        assert im.mode == "YCbCr"
    out = read_image(path)
    assert out.shape == (4, 4, 3)
    assert np.abs(out[2, 2].astype(int) - [200, 50, 30]).max() <= 3


def test_to_rgb_array_pa_mode():
    img = Image.new("P", (2, 1), 1)
    img.putpalette([0, 0, 0, 7, 8, 9] + [0] * 762)
    out = to_rgb_array(img.convert("PA"))
    assert out.tolist() == [[[7, 8, 9], [7, 8, 9]]]


# ---------------------------------------------------------------- masks and hashes

def test_read_mask_modes(tmp_path):
    m = np.zeros((4, 6), np.uint8)
    m[1, 2] = 255
    m[3, 5] = 1
    out = read_mask(_png(tmp_path / "m.png", m), (4, 6))
    assert out.dtype == bool and out.shape == (4, 6)
    assert out.sum() == 2 and out[1, 2] and out[3, 5]
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[0, 0, 2] = 9
    assert read_mask(_png(tmp_path / "mrgb.png", rgb), (4, 6)).sum() == 1
    pal = Image.new("P", (6, 4), 0)
    pal.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)  # index 0 is white but still background
    pal.putpixel((5, 0), 1)
    pm = read_mask(_png(tmp_path / "mp.png", pal), (4, 6))
    assert pm.sum() == 1 and pm[0, 5]
    assert read_mask(_png(tmp_path / "m16.png", Image.fromarray(np.array([[0, 3]], np.uint16))), (1, 2)).tolist() == [[False, True]]


def test_to_mask_array_ignores_alpha():
    la = Image.new("LA", (2, 1), (0, 255))
    la.putpixel((1, 0), (4, 0))
    assert to_mask_array(la).tolist() == [[False, True]]


def test_mask_size_mismatch(tmp_path):
    path = _png(tmp_path / "m.png", np.zeros((4, 8), np.uint8))
    assert _reason(read_mask, path, (8, 4)) == "mask size 8x4 differs from image size 4x8"


def test_mask_guards(tmp_path):
    assert _reason(read_mask, str(tmp_path / "missing_mask.png"), (4, 4)) == "file not found"
    p = tmp_path / "empty_mask.png"
    p.write_bytes(b"")
    assert _reason(read_mask, str(p), (4, 4)) == "empty file (0 bytes)"
    bomb = _bomb_png(tmp_path / "bomb_mask.png", 20000, 20000)
    assert "possible decompression bomb" in _reason(read_mask, bomb, (20000, 20000))


def test_file_sha256(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"anomflow" * 1000)
    assert file_sha256(str(p)) == hashlib.sha256(b"anomflow" * 1000).hexdigest()
    assert _reason(file_sha256, str(tmp_path / "none.bin")) == "file not found"


# ------------------------------------------------------------------------------------- EXIF orientation
def _sideways_jpeg(path, orientation: int = 6) -> np.ndarray:
    """A 40 x 60 (H x W) JPEG tagged with an EXIF orientation; returns its stored (raw-frame) pixels."""
    rng = np.random.default_rng(0)
    raw = np.zeros((40, 60, 3), np.uint8)
    raw[:10, :20] = (255, 0, 0)                     # a red block in the stored top-left corner
    raw[20:] = rng.integers(0, 256, (20, 60, 3), dtype=np.uint8) // 4 * 4
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(raw).save(path, quality=95, exif=exif.tobytes())
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def test_exif_orientation_is_applied_like_cv2_imread(tmp_path):
    import cv2

    from tasks.datasets.image_io import image_size

    path = tmp_path / "camera.jpg"
    stored = _sideways_jpeg(path, orientation=6)     # 6: the camera was turned 90 degrees clockwise
    upright = read_image(str(path))
    assert stored.shape == (40, 60, 3) and upright.shape == (60, 40, 3)
    assert np.array_equal(upright, np.rot90(stored, k=-1))   # orientation 6 = rotate 90 degrees clockwise to view
    assert upright[:10, -10:, 0].mean() > 200 and upright[:10, -10:, 1].mean() < 60   # the block is now top-right
    official = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)   # the official reader
    assert official.shape == upright.shape
    assert np.abs(official.astype(int) - upright.astype(int)).mean() < 2.0   # decoders may differ by rounding
    assert image_size(str(path)) == (60, 40)


def test_exif_orientation_checks_masks_against_the_upright_size(tmp_path):
    path = tmp_path / "camera.jpg"
    _sideways_jpeg(path, orientation=8)
    mask_path = tmp_path / "camera_mask.png"
    Image.fromarray(np.zeros((60, 40), np.uint8)).save(mask_path)   # drawn on the upright image
    assert read_mask(str(mask_path), read_image(str(path)).shape[:2]).shape == (60, 40)
    raw_frame = tmp_path / "raw_mask.png"
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(raw_frame)
    with pytest.raises(ImageError, match="mask size 60x40 differs from image size 40x60"):
        read_mask(str(raw_frame), (60, 40))


def test_no_exif_or_orientation_one_is_unchanged(tmp_path):
    path = tmp_path / "plain.jpg"
    stored = _sideways_jpeg(path, orientation=1)
    assert np.array_equal(read_image(str(path)), stored)
