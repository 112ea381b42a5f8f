"""Safe image and mask reading: every failure becomes an ``ImageError(path, reason)``.

Guards, in order: path inside the dataset root (after resolving symlinks), file exists and is
a regular non-empty file, the header is a known image format, the declared size is within
``max_pixels`` (checked BEFORE any pixel is decoded), and a full decode succeeds.

Mode conversions (``to_rgb_array``), all to ``H x W x 3`` uint8 RGB:
- ``1`` / ``L``: grey replicated to three channels (1-bit: 0 -> 0, 1 -> 255);
- ``I;16*`` / ``I``: scaled by the image's own bit depth (16-bit: ``>> 8``, so 65535 -> 255);
- ``F``: values in [0, 1] are scaled by 255, anything else is clipped to [0, 255];
- ``P`` (with or without transparency), ``PA``, ``RGBA``, ``LA``, ``RGBa``: the alpha channel
  is DROPPED (colour values kept as stored, no compositing), palette colours are preserved;
- ``CMYK``, ``YCbCr`` and any other mode Pillow can convert: ``Image.convert("RGB")``.
EXIF orientation IS applied (images, masks and label maps alike), as ``cv2.imread`` does in the official code and as
production cameras intend: a JPEG stored sideways with Orientation = 6 is returned upright, and a mask is checked
against the upright size. ``DECODE_RULE`` names this rule; stages that decode pixels put it in their keys.
Multi-frame files (GIF, TIFF stacks) yield their first frame.

Caveat: Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is global; if another library sets it
to True, truncated files decode with grey fill instead of raising.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tasks.datasets.records import ImageError

DEFAULT_MAX_PIXELS = 64_000_000
DECODE_RULE = "rgb8+exif-orientation"   # in the key of every stage that decodes pixels
_ORIENTATION_TAG = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}              # EXIF orientations that turn the image by 90 degrees
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def _check_path(path: str, root: str | None) -> str:
    """Existence, regular file, non-empty, inside ``root``; returns the resolved path."""
    path = os.fspath(path)
    if root is not None:
        real_root = os.path.realpath(root)
        real = os.path.realpath(path)
        try:
            inside = os.path.commonpath([real_root, real]) == real_root
        except ValueError:  # different drives on Windows
            inside = False
        if not inside:
            raise ImageError(path, f"resolves outside the dataset root ({root})")
    if not os.path.lexists(path):
        raise ImageError(path, "file not found")
    if not os.path.exists(path):
        raise ImageError(path, "file not found (broken symlink)")
    if os.path.isdir(path):
        raise ImageError(path, "is a directory, not an image file")
    if not os.path.isfile(path):
        raise ImageError(path, "not a regular file")
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise ImageError(path, f"cannot read file: {exc.strerror or exc}") from None
    if size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    return path


def _bomb_reason(exc: Exception) -> str:
    nums = re.findall(r"\((\d+) pixels\)|limit of (\d+)", str(exc))
    flat = [a or b for a, b in nums]
    if len(flat) >= 2:
        return (f"image too large: {flat[0]} pixels exceeds the limit of {flat[1]} "
                "(possible decompression bomb)")
    return f"image too large: {exc} (possible decompression bomb)"


def _verified_bytes(path: str, expect_sha256: str) -> io.BytesIO:
    """The file's bytes, provided they still hash to ``expect_sha256`` (the identity the run gave them)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ImageError(path, f"cannot read file: {exc.strerror or exc}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expect_sha256:
        raise ImageError(path, f"changed on disk during the run (hashed as {expect_sha256[:12]}…, now "
                               f"{actual[:12]}…); rerun to pick up the new content")
    return io.BytesIO(data)


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8) of an opened image; 1 when absent or unreadable."""
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:   # a malformed EXIF block is ignored, as cv2 does
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _open_decoded(path: str, root: str | None, max_pixels: int, convert,
                  check_size=None, expect_sha256: str | None = None) -> np.ndarray:
    """Open ``path`` with every guard, decode fully, and return ``convert(img)``.

    ``check_size(w, h)`` (optional) runs on the upright header size (EXIF orientation applied) before decoding and
    may raise ``ImageError``; ``convert`` gets the upright decoded image and returns a numpy array.
    ``expect_sha256``: decode exactly the bytes that hash to this (the item's cache identity), or fail.
    """
    path = _check_path(path, root)
    source = _verified_bytes(path, expect_sha256) if expect_sha256 else path
    with warnings.catch_warnings():
        # This call only: Pillow's size warning becomes an error we report.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(source)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(path, _bomb_reason(exc)) from None
        except UnidentifiedImageError:
            raise ImageError(path, "not an image: cannot identify image file") from None
        except PermissionError as exc:
            raise ImageError(path, f"cannot read file: {exc.strerror or exc}") from None
        except Exception as exc:  # corrupt header, odd plugin errors
            raise ImageError(path, f"not an image: unreadable header ({type(exc).__name__}: {exc})") from None
        with img:
            w, h = img.size
            if w <= 0 or h <= 0:
                raise ImageError(path, f"invalid image size {w} x {h}")
            if w * h > max_pixels:
                raise ImageError(path, f"image too large: {w} x {h} pixels exceeds the limit of "
                                       f"{max_pixels} (possible decompression bomb)")
            orientation = _orientation(img)
            if check_size is not None:
                check_size(*((h, w) if orientation in _SWAPS_AXES else (w, h)))
            try:
                img.load()
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise ImageError(path, _bomb_reason(exc)) from None
            except MemoryError:
                raise ImageError(path, "out of memory while decoding image") from None
            except Exception:
                raise ImageError(path, "truncated or corrupt image data") from None
            try:
                return convert(ImageOps.exif_transpose(img) if orientation != 1 else img)
            except ImageError:
                raise
            except Exception as exc:
                raise ImageError(path, f"unsupported image mode {img.mode!r} ({exc})") from None


def _bit_depth(img: Image.Image, arr: np.ndarray) -> int:
    """Bits per sample of an integer grey image (I;16* or I)."""
    tags = getattr(img, "tag_v2", None)
    if tags is not None and 258 in tags:  # TIFF BitsPerSample
        bps = tags[258]
        bps = bps[0] if isinstance(bps, tuple) else bps
        if isinstance(bps, int) and 8 < bps <= 32:
            return bps
    if img.mode.startswith("I;16"):
        return 16
    top = int(arr.max()) if arr.size else 0
    return 16 if top <= 0xFFFF else 32


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert a decoded PIL image of any supported mode to ``H x W x 3`` uint8 RGB."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode in ("1", "L"):
        grey = np.asarray(img.convert("L"), dtype=np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.int64)
        bits = _bit_depth(img, arr)
        grey = (np.clip(arr, 0, (1 << bits) - 1) >> (bits - 8)).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
            arr = arr * 255.0
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "P":
        # Converting straight to RGB warns about transparency; go through RGBA and drop alpha.
        target = "RGBA" if "transparency" in img.info else "RGB"
        return np.asarray(img.convert(target), dtype=np.uint8)[:, :, :3].copy()
    if mode in _ALPHA_MODES:
        return np.asarray(img.convert("RGBA"), dtype=np.uint8)[:, :, :3].copy()
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def to_mask_array(img: Image.Image) -> np.ndarray:
    """Convert a decoded PIL mask of any mode to ``H x W`` bool (non-zero = defect).

    Palette masks use the palette index (index 0 = background); colour masks are defect
    where any colour channel is non-zero; alpha channels are ignored.
    """
    mode = img.mode
    if mode in ("RGB", "RGBA", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"):
        arr = np.asarray(img.convert("RGB") if mode not in ("RGB", "RGBA", "RGBa") else img)
        return np.any(arr[:, :, :3] != 0, axis=2)
    if mode in ("LA", "La", "PA"):
        return np.asarray(img)[:, :, 0] != 0
    arr = np.asarray(img)  # 1, L, P, I, I;16*, F: one value per pixel
    if arr.ndim == 3:
        arr = arr[:, :, 0]
    return arr != 0


def read_image(path: str, root: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
               expect_sha256: str | None = None) -> np.ndarray:
    """Read an image file as ``H x W x 3`` uint8 RGB, or raise ``ImageError``.

    root: when given, the resolved path (symlinks followed) must lie inside it.
    max_pixels: refuse images whose header declares more than this many pixels.
    expect_sha256: the content hash the run stored the image under; other bytes are refused.
    """
    return _open_decoded(path, root, max_pixels, to_rgb_array, expect_sha256=expect_sha256)


def read_mask(path: str, expected_hw: tuple[int, int], *, root: str | None = None,
              max_pixels: int = DEFAULT_MAX_PIXELS, expect_sha256: str | None = None) -> np.ndarray:
    """Read a ground-truth mask as ``H x W`` bool (non-zero = defect), or raise ``ImageError``.

    expected_hw: ``(H, W)`` of the image the mask belongs to; a different size raises
    ``ImageError`` "mask size WxH differs from image size WxH" (checked from the header,
    before decoding).
    """
    exp_h, exp_w = int(expected_hw[0]), int(expected_hw[1])

    def check_size(w: int, h: int) -> None:
        if (w, h) != (exp_w, exp_h):
            raise ImageError(path, f"mask size {w}x{h} differs from image size {exp_w}x{exp_h}")

    return _open_decoded(path, root, max_pixels, to_mask_array, check_size, expect_sha256)


def read_label_map(path: str, expected_hw: tuple[int, int], *, root: str | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS, expect_sha256: str | None = None) -> np.ndarray:
    """Read an 8-bit label image (0 = background, i = instance i) as ``H x W`` uint8, or raise ``ImageError``."""
    def check_size(w: int, h: int) -> None:
        if (h, w) != tuple(int(v) for v in expected_hw):
            raise ImageError(path, f"label map size {w}x{h} differs from image size {expected_hw[1]}x{expected_hw[0]}")

    def convert(img: Image.Image) -> np.ndarray:
        if img.mode not in ("L", "P"):
            raise ImageError(path, f"label map must be 8-bit single channel, got mode {img.mode}")
        return np.asarray(img, np.uint8).copy()

    return _open_decoded(path, root, max_pixels, convert, check_size, expect_sha256)


def image_size(path: str) -> tuple[int, int]:
    """(H, W) of an image as :func:`read_image` returns it (EXIF orientation applied), from the header only."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            return (w, h) if _orientation(img) in _SWAPS_AXES else (h, w)
    except (OSError, UnidentifiedImageError) as exc:
        raise ImageError(path, f"cannot read the image header ({exc})") from None


def file_sha256(path: str) -> str:
    """Hex sha256 of a file's bytes, streamed in 1 MiB chunks; ``ImageError`` if unreadable."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageError(path, "file not found")
    if os.path.isdir(path):
        raise ImageError(path, "is a directory, not an image file")
    if not os.path.isfile(path):
        raise ImageError(path, "not a regular file")
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise ImageError(path, f"cannot read file: {exc.strerror or exc}") from None
    return digest.hexdigest()
