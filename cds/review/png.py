"""A minimal PNG encoder (ISO/IEC 15948: IHDR, one IDAT, IEND), so no imaging library is needed."""

from __future__ import annotations

import struct
import zlib

import numpy as np


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of an 8-bit image.

    Args:
        pixels: ``uint8`` array, ``(rows, cols)`` greyscale or ``(rows, cols, 3)`` RGB.

    Raises:
        ValueError: another shape or dtype.
    """
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ValueError("encode_png takes a uint8 (rows, cols) or (rows, cols, 3) array")
    if pixels.ndim == 3 and pixels.shape[2] != 3:
        raise ValueError("colour images must have 3 channels")
    rows, cols = pixels.shape[:2]
    colour_type = 2 if pixels.ndim == 3 else 0
    raw = np.ascontiguousarray(pixels).reshape(rows, -1)
    # Filter type 0 (None) before each scanline.
    scanlines = np.hstack([np.zeros((rows, 1), np.uint8), raw]).tobytes()
    header = struct.pack(">IIBBBBB", cols, rows, 8, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(scanlines, 6))
        + _chunk(b"IEND", b"")
    )
