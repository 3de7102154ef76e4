"""Generated photos for tests: JPEGs of colour blocks carrying an EXIF orientation tag."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def turned_jpeg(
    orientation: int, size: tuple[int, int] = (96, 56), seed: int = 0, exif: dict | None = None
) -> bytes:
    """A JPEG whose stored pixels (``size`` = width, height) are 8-pixel colour blocks, with EXIF ``orientation``
    (1-8) and any other EXIF tags in ``exif`` (tag number -> value)."""
    rng = np.random.default_rng(seed)
    w, h = size
    blocks = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
    arr = np.kron(blocks, np.ones((8, 8, 1), np.uint8))[:h, :w]
    tags = Image.Exif()
    tags[0x0112] = orientation
    for tag, value in (exif or {}).items():
        tags[tag] = value
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95, exif=tags.tobytes())
    return buf.getvalue()
