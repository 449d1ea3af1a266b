"""Radiance ``.hdr`` (RGBE) images: read and write in pure numpy, and the equirectangular check for environment maps.

Pixels are linear radiance, returned as float32 ``(H, W, 3)``, row 0 = top of the picture. The RGBE decoding follows
Greg Ward's reference ``rgbe.c`` (the one FreeImage, OpenCV and stb_image use): ``value = byte * 2**(E - 136)``
without Radiance's ``+0.5`` bias, so numbers agree with those readers bit for bit. ``EXPOSURE=`` header lines are
ignored, as those readers do.

Supported scanline encodings (reading): flat, old-style run-length (``1 1 1 n`` repeats) and the new-style
run-length encoding (``2 2 hi lo`` header, each of the four byte planes RLE'd separately) that nearly every
``.hdr`` in the wild uses. Writing uses the new-style RLE (or flat with ``rle=False``).

``.exr`` is read through imageio only when an installed imageio plugin can; otherwise a one-line NFieldsError says so.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from nfields.errors import NFieldsError

_RES = re.compile(rb"^([-+])([XY]) (\d+) ([-+])([XY]) (\d+)$")


def rgbe_to_float(rgbe: np.ndarray) -> np.ndarray:
    """(..., 4) uint8 RGBE -> (..., 3) float32 linear values; exponent byte 0 means black."""
    rgbe = np.asarray(rgbe, dtype=np.uint8)
    e = rgbe[..., 3].astype(np.int32)
    scale = np.where(e > 0, np.ldexp(np.float32(1.0), e - 136), 0.0).astype(np.float32)
    return rgbe[..., :3].astype(np.float32) * scale[..., None]


def float_to_rgbe(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) float -> (..., 4) uint8 RGBE (shared exponent of the largest channel; negatives and NaN -> 0)."""
    rgb = np.nan_to_num(np.asarray(rgb, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    rgb = np.clip(rgb, 0.0, 1.7e38)
    v = rgb.max(axis=-1)
    mant, exp = np.frexp(v)
    ok = v > 1e-32
    scale = np.where(ok, mant * 256.0 / np.where(ok, v, 1.0), 0.0)
    out = np.zeros(rgb.shape[:-1] + (4,), dtype=np.uint8)
    out[..., :3] = np.clip(np.floor(rgb * scale[..., None]), 0, 255).astype(np.uint8)
    out[..., 3] = np.where(ok, np.clip(exp + 128, 0, 255), 0).astype(np.uint8)
    return out


def _parse_header(data: bytes, name: str) -> tuple[int, int, bool, bool, bool, int]:
    """Header -> (height, width, flip_y, flip_x, transpose, offset of the pixel data)."""
    if not (data.startswith(b"#?RADIANCE") or data.startswith(b"#?RGBE")):
        raise NFieldsError(f"{name}: not a Radiance .hdr file (no '#?RADIANCE' header)")
    pos = 0
    fmt = None
    while True:  # header lines end with an empty line, then comes the resolution line
        end = data.find(b"\n", pos)
        if end < 0:
            raise NFieldsError(f"{name}: truncated .hdr header")
        line = data[pos:end].strip()
        pos = end + 1
        if not line:
            break
        if line.startswith(b"FORMAT="):
            fmt = line[7:].decode("ascii", "replace")
    if fmt not in (None, "32-bit_rle_rgbe"):
        raise NFieldsError(f"{name}: .hdr FORMAT={fmt} is not supported (only 32-bit_rle_rgbe)")
    end = data.find(b"\n", pos)
    m = _RES.match(data[pos:end].strip()) if end >= 0 else None
    if m is None:
        raise NFieldsError(f"{name}: bad .hdr resolution line")
    s1, a1, n1, s2, a2, n2 = m.groups()
    if a1 == a2:
        raise NFieldsError(f"{name}: bad .hdr resolution line")
    # Standard orientation is "-Y H +X W": scanlines top to bottom, pixels left to right.
    transpose = a1 == b"X"
    rows, cols = int(n1), int(n2)
    flip_rows, flip_cols = s1 == (b"-" if transpose else b"+"), s2 == b"-"
    return rows, cols, flip_rows, flip_cols, transpose, end + 1


def _decode_scanlines(data: bytes, pos: int, rows: int, cols: int, name: str) -> np.ndarray:
    """Pixel data -> (rows, cols, 4) uint8, handling flat, old-RLE and new-RLE scanlines (they may be mixed)."""
    out = np.empty((rows, cols, 4), dtype=np.uint8)
    n = len(data)
    new_rle_ok = 8 <= cols <= 0x7FFF
    for y in range(rows):
        if pos + 4 > n:
            raise NFieldsError(f"{name}: truncated .hdr pixel data (scanline {y} of {rows})")
        b0, b1, b2, b3 = data[pos], data[pos + 1], data[pos + 2], data[pos + 3]
        if new_rle_ok and b0 == 2 and b1 == 2 and not b2 & 0x80:
            if (b2 << 8) | b3 != cols:
                raise NFieldsError(f"{name}: corrupt .hdr RLE scanline {y} (width mismatch)")
            pos += 4
            for c in range(4):  # each byte plane: runs (count > 128) or literal spans (count <= 128)
                plane = bytearray()
                while len(plane) < cols:
                    if pos >= n:
                        raise NFieldsError(f"{name}: truncated .hdr pixel data (scanline {y} of {rows})")
                    count = data[pos]
                    if count > 128:
                        if pos + 1 >= n:
                            raise NFieldsError(f"{name}: truncated .hdr pixel data (scanline {y} of {rows})")
                        plane += bytes((data[pos + 1],)) * (count - 128)
                        pos += 2
                    else:
                        if count == 0:
                            raise NFieldsError(f"{name}: corrupt .hdr RLE scanline {y} (zero-length span)")
                        plane += data[pos + 1 : pos + 1 + count]
                        pos += 1 + count
                if len(plane) != cols:
                    raise NFieldsError(f"{name}: corrupt .hdr RLE scanline {y} (overrun)")
                out[y, :, c] = np.frombuffer(bytes(plane), dtype=np.uint8)
            continue
        # Flat or old-style RLE scanline: 4-byte pixels, (1, 1, 1, k) repeats the previous pixel.
        chunk = np.frombuffer(data, dtype=np.uint8, count=min(4 * cols, (n - pos) // 4 * 4), offset=pos)
        px = chunk.reshape(-1, 4)
        if len(px) == cols and not np.any((px[:, 0] == 1) & (px[:, 1] == 1) & (px[:, 2] == 1)):
            out[y] = px
            pos += 4 * cols
            continue
        x, shift = 0, 0
        while x < cols:
            if pos + 4 > n:
                raise NFieldsError(f"{name}: truncated .hdr pixel data (scanline {y} of {rows})")
            p = data[pos : pos + 4]
            pos += 4
            if p[0] == 1 and p[1] == 1 and p[2] == 1:
                if x == 0:
                    raise NFieldsError(f"{name}: corrupt .hdr old-style RLE at scanline {y}")
                rep = p[3] << shift
                if x + rep > cols:
                    raise NFieldsError(f"{name}: corrupt .hdr old-style RLE at scanline {y}")
                out[y, x : x + rep] = out[y, x - 1]
                x += rep
                shift += 8
            else:
                out[y, x] = np.frombuffer(p, dtype=np.uint8)
                x += 1
                shift = 0
    return out


def read_hdr(path: str | Path) -> np.ndarray:
    """Read a Radiance ``.hdr`` (or, when an imageio plugin can, an ``.exr``) -> float32 (H, W, 3) linear radiance.

    Row 0 is the top of the image. Raises NFieldsError (one line naming the file) for a missing file, a file that is
    not RGBE, or truncated/corrupt pixel data.
    """
    path = Path(path)
    if not path.is_file():
        raise NFieldsError(f"{path}: no such file")
    if path.suffix.lower() == ".exr":
        return _read_exr(path)
    data = path.read_bytes()
    rows, cols, flip_rows, flip_cols, transpose, pos = _parse_header(data, str(path))
    img = rgbe_to_float(_decode_scanlines(data, pos, rows, cols, str(path)))
    if flip_rows:
        img = img[::-1]
    if flip_cols:
        img = img[:, ::-1]
    if transpose:  # scanlines were columns
        img = img.transpose(1, 0, 2)
    return np.ascontiguousarray(img)


def _read_exr(path: Path) -> np.ndarray:
    try:
        import imageio.v3 as iio

        img = np.asarray(iio.imread(path), dtype=np.float32)
    except Exception as e:  # imageio raises several types when no plugin handles EXR
        raise NFieldsError(
            f"{path}: cannot read .exr here ({type(e).__name__}); convert it to .hdr or install an imageio EXR plugin"
        ) from None
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


def _rle_plane(plane: np.ndarray) -> bytes:
    """New-style RLE of one byte plane of a scanline: runs of >= 4 equal bytes as runs, the rest as literal spans."""
    n = len(plane)
    change = np.flatnonzero(plane[1:] != plane[:-1]) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [n]]))
    out = bytearray()

    def literal(a: int, b: int) -> None:
        for s in range(a, b, 128):
            e = min(s + 128, b)
            out.append(e - s)
            out.extend(plane[s:e].tobytes())

    cursor = 0
    for s, ln in zip(starts[lengths >= 4].tolist(), lengths[lengths >= 4].tolist()):
        literal(cursor, s)
        for r in range(s, s + ln, 127):
            out.append(128 + min(127, s + ln - r))
            out.append(int(plane[r]))
        cursor = s + ln
    literal(cursor, n)
    return bytes(out)


def write_hdr(path: str | Path, image: np.ndarray, rle: bool = True) -> None:
    """Write float (H, W, 3) linear radiance as a Radiance ``.hdr`` (``-Y H +X W``, row 0 on top).

    ``rle=True`` uses the new-style run-length encoding (only possible for 8 <= W <= 32767; flat otherwise).
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise NFieldsError(f"{path}: write_hdr wants an (H, W, 3) image, got shape {tuple(img.shape)}")
    h, w = img.shape[:2]
    rgbe = float_to_rgbe(img)
    parts = [f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {h} +X {w}\n".encode("ascii")]
    if rle and 8 <= w <= 0x7FFF:
        head = bytes((2, 2, w >> 8, w & 0xFF))
        for y in range(h):
            parts.append(head)
            parts.extend(_rle_plane(rgbe[y, :, c]) for c in range(4))
    else:
        parts.append(rgbe.tobytes())
    Path(path).write_bytes(b"".join(parts))


def check_equirect(image, name: str = "image") -> None:
    """Raise NFieldsError unless ``image`` (H, W, 3) is a 2:1 equirectangular map (``W == 2 * H``)."""
    shape = tuple(image.shape)
    if len(shape) != 3 or shape[2] != 3:
        raise NFieldsError(f"{name}: an environment map must be (H, W, 3), got shape {shape}")
    h, w = shape[:2]
    if w != 2 * h:
        raise NFieldsError(f"{name}: {w}x{h} is not an equirectangular (2:1) map")


def read_envmap(path: str | Path) -> np.ndarray:
    """:func:`read_hdr` plus the 2:1 equirectangular check: float32 (H, 2H, 3) linear radiance."""
    img = read_hdr(path)
    check_equirect(img, str(path))
    return img
