"""Checking what clients upload before anything is decoded, and embedding it: the routes' shared helpers.

Uploads are checked from their header (size, format, pixel count); every problem is a one-line 4xx
(:func:`fail`) naming the file.
"""

from __future__ import annotations

import io
import json
import math
import re

import numpy as np
from fastapi import HTTPException, UploadFile
from PIL import Image, UnidentifiedImageError

from animal_reid.serve.service import Service
from animal_reid.serve.store import NewPhoto
from modeling.boxes_animal_reid import displayed_size


def fail(status: int, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)


def check_image(data: bytes, name: str, service: Service) -> NewPhoto:
    """A NewPhoto when ``data`` is an allowed image within the limits (read from its header); else a 4xx.

    Its width and height are as displayed (EXIF orientation applied): the coordinates boxes are given in.
    """
    limits = service.limits
    if len(data) > limits.max_upload_bytes:
        raise fail(413, f"{name}: upload is over the {limits.max_upload_bytes} byte limit")
    if not data:
        raise fail(400, f"{name}: the upload is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (w, h) = im.format, displayed_size(im)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as err:
        if isinstance(err, Image.DecompressionBombError):
            raise fail(413, f"{name}: image has too many pixels (decompression bomb?)") from err
        raise fail(415, f"{name}: not an image in an allowed format ({', '.join(limits.formats)})") from err
    if fmt not in limits.formats:
        raise fail(415, f"{name}: {fmt} images are not accepted (allowed: {', '.join(limits.formats)})")
    if w * h > limits.max_pixels:
        raise fail(413, f"{name}: image is {w}x{h} pixels, over the {limits.max_pixels} pixel limit")
    return NewPhoto(data=data, format=fmt, width=w, height=h)


def parse_box(text: str | None, what: str = "box") -> list[float] | None:
    """``[x, y, w, h]`` from JSON (``[1, 2, 3, 4]``: numbers, not strings or booleans) or ``"1,2,3,4"``; None for
    empty; 422 otherwise. Boxes are in the photo's pixels as displayed (EXIF orientation applied); whether one fits
    its photo is the image processor's check, the same as everywhere else."""
    if text is None or not text.strip() or text.strip() == "null":
        return None
    try:
        value = json.loads(text) if text.strip().startswith("[") else [float(v) for v in text.split(",")]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            raise TypeError("not numbers")
        box = [float(v) for v in value]
    except (ValueError, TypeError) as err:
        raise fail(422, f"{what}: expected [x, y, w, h] numbers, got {text[:80]!r}") from err
    if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[2] <= 0 or box[3] <= 0:
        raise fail(422, f"{what}: expected 4 finite numbers [x, y, w, h] with w, h > 0, got {text[:80]!r}")
    return box


def json_list(text: str | None, n: int, what: str) -> list:
    """A JSON list of ``n`` entries (one per file); ``n`` Nones when not given; 422 otherwise."""
    if text is None or not text.strip():
        return [None] * n
    try:
        value = json.loads(text)
    except ValueError as err:
        raise fail(422, f"{what}: expected a JSON list, got {text[:80]!r}") from err
    if not isinstance(value, list) or len(value) != n:
        raise fail(422, f"{what}: expected a JSON list of {n} entries (one per file)")
    return value


async def read_upload(upload: UploadFile, service: Service) -> NewPhoto:
    data = await upload.read(service.limits.max_upload_bytes + 1)
    return check_image(data, upload.filename or "upload", service)


async def embed_photo(service: Service, photo: NewPhoto, name: str, box, theta: float) -> np.ndarray:
    """The photo's embedding through the micro-batcher; a 400 naming the file when it cannot be used."""
    try:
        return await service.batcher.embed(photo.data, box, float(theta or 0.0))
    except (ValueError, OSError) as err:  # InvalidImageError is a ValueError; truncated files raise OSError
        reason = re.sub(r"^<\d+ bytes>: ", "", (str(err).splitlines() or [type(err).__name__])[0])
        raise fail(400, f"{name}: cannot use this image: {reason[:300]}") from err
