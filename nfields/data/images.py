"""Reading images and masks into uint8 arrays: one-line errors for unreadable files, box-filter resizing, and a
thread pool so a few dozen full-resolution PNGs decode in parallel (PIL releases the GIL while decoding)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from nfields.errors import NFieldsError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

T = TypeVar("T")


def list_images(folder: Path) -> list[Path]:
    """Image files in ``folder``, sorted by name; a missing folder is an NFieldsError."""
    if not folder.is_dir():
        raise NFieldsError(f"{folder}: folder not found")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def read_image(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image file -> (H, W, C) uint8 with C = 1 (grey), 3 (RGB) or 4 (RGBA).

    size: optional ``(width, height)`` to resize to with a box (area) filter. Truncated or unreadable files raise
    ``NFieldsError("<path>: cannot read image (truncated?)")``.
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode == "LA":
                im = im.convert("RGBA")
            elif im.mode in ("1", "I", "I;16", "I;16B", "F"):
                # 16-bit / float masks: scale to 8 bit by their own range so 0/65535 masks stay 0/255.
                arr = np.asarray(im).astype(np.float64)
                top = 255.0 if arr.max() <= 255 else (65535.0 if arr.max() <= 65535 else arr.max())
                im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
            elif im.mode not in ("L", "RGB", "RGBA"):
                im = im.convert("RGB")
            if size is not None and im.size != tuple(size):
                im = im.resize(tuple(size), Image.BOX)
            arr = np.asarray(im)
    except FileNotFoundError:
        raise NFieldsError(f"{path}: file not found") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL reports truncated/corrupt data as OSError or SyntaxError
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise NFieldsError(f"{path}: cannot read image (truncated?): {detail}") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise NFieldsError(f"{path}: file not found") from None
    except (OSError, SyntaxError, ValueError):
        raise NFieldsError(f"{path}: cannot read image (truncated?)") from None


def to_mask(arr: np.ndarray, binary: bool = True) -> np.ndarray:
    """(H, W, C) uint8 image -> (H, W) uint8 mask: the maximum over colour channels (alpha when there is one).

    binary: threshold at 127 to exactly 0/255 (DTU-style masks); otherwise keep soft values (alpha edges).
    """
    if arr.shape[2] in (2, 4):
        m = arr[:, :, -1]
    elif arr.shape[2] == 3:
        # Pairwise maxima of channel planes: ~10x faster than arr.max(axis=2) on interleaved uint8.
        m = np.maximum(np.maximum(arr[:, :, 0], arr[:, :, 1]), arr[:, :, 2])
    else:
        m = arr[:, :, 0]
    if binary:
        m = (m > 127).view(np.uint8) * np.uint8(255)
    return np.ascontiguousarray(m)


def composite(rgba: np.ndarray, background: Sequence[float]) -> np.ndarray:
    """Straight-alpha RGBA (H, W, 4) uint8 over a constant ``background`` (3 floats in [0, 1]) -> (H, W, 3) uint8."""
    rgb = rgba[:, :, :3].astype(np.float32)
    a = rgba[:, :, 3:4].astype(np.float32) / 255.0
    bg = np.asarray(background, dtype=np.float32).reshape(1, 1, 3) * 255.0
    return np.clip(rgb * a + bg * (1.0 - a) + 0.5, 0, 255).astype(np.uint8)


def resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Box-filter (area) resize of an (H, W) or (H, W, C) uint8 array to ``size = (width, height)``."""
    if (arr.shape[1], arr.shape[0]) == tuple(size):
        return arr
    if arr.ndim == 3 and arr.shape[2] == 1:
        return resize(arr[:, :, 0], size)[:, :, None]
    return np.asarray(Image.fromarray(arr).resize(tuple(size), Image.BOX))


def parallel_map(fn: Callable[[Path], T], items: Sequence, threads: int | None = None) -> list[T]:
    """``[fn(x) for x in items]`` on a thread pool (order kept); the first exception propagates."""
    threads = threads or min(8, os.cpu_count() or 1, max(len(items), 1))
    if threads <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, items))
