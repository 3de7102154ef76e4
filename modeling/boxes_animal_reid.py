"""Boxes and orientation for the image processor: the one coordinate rule, box checks and rotated-crop geometry.

Boxes are ``[x, y, w, h]`` in the pixels of the photo as displayed, EXIF orientation applied (:func:`displayed_size`),
the convention of COCO tools and MegaDetector; every part of the package (builder, processor, identify, training,
re-ranking, service) reads them so. :func:`checked_box` turns a box from any source into four finite floats or
raises :class:`InvalidBoxError` naming the image and the box; :func:`rotated_window` and :func:`rotated_crop_affine`
are the geometry of a box rotated by ``theta`` about its centre; :func:`min_decode_scale` the JPEG draft scale a
crop allows. Ships to the Hub with the other modeling files (imported relatively, nothing else of the repository).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image


class InvalidImageError(ValueError):
    """An image (or its box) that cannot give a meaningful embedding."""


class InvalidBoxError(InvalidImageError):
    """A bounding box (or its ``theta``) that cannot be used with its image; the message names both, in one line.

    Boxes are ``[x, y, w, h]`` of real numbers (ints, floats, NumPy or 0-d tensor scalars) in the pixels of the
    image as displayed (EXIF orientation applied); strings (even ``"10"``), booleans, nulls and nested lists are
    refused, not converted.
    """


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of an image as displayed, EXIF orientation applied: the coordinates boxes are given in.

    The one orientation rule of the package (builder, processor, identify, training, re-ranking, service): boxes
    are in the displayed photo's pixels, the convention of COCO tools and MegaDetector.
    """
    w, h = image.size
    return (h, w) if exif_swaps_axes(image) else (w, h)


def exif_swaps_axes(image: Image.Image) -> bool:
    """Whether the EXIF orientation (5-8) turns the stored image by 90 degrees."""
    try:
        return image.getexif().get(0x0112) in (5, 6, 7, 8)
    except Exception:  # malformed EXIF: exif_transpose will leave the image as stored
        return False


def min_decode_scale(
    size: tuple[int, int],
    target: tuple[int, int],
    box: Sequence[float] | None,
    theta: float,
    min_side: int,
) -> float:
    """Smallest decoding scale (<= 1) at which the region resized to ``target`` keeps at least its pixels.

    The region is the image, or the box (its part inside the image when not rotated). Anything invalid
    returns 1.0: a full decode, so the usual validation reports it.
    """
    w0, h0 = size
    if box is None:
        rw, rh = float(w0), float(h0)
    else:
        try:
            x, y, w, h = (float(v) for v in box)
        except (TypeError, ValueError):
            return 1.0
        if not all(math.isfinite(v) for v in (x, y, w, h, theta)) or w <= 0 or h <= 0:
            return 1.0
        if theta == 0.0:
            w, h = min(x + w, w0) - max(x, 0.0), min(y + h, h0) - max(y, 0.0)
        else:  # the part of the rotated box that crop() samples
            u0, v0, u1, v1 = rotated_window((x, y, w, h), theta, w0, h0)
            w, h = u1 - u0, v1 - v0
        if not (w >= 1 and h >= 1):
            return 1.0
        rw, rh = w, h
    return min(1.0, max(target[0] / rw, target[1] / rh, min_side / min(rw, rh)))


SHOWN = " (boxes are in the pixels of the image as displayed, EXIF orientation applied)"
SEQUENCES = (list, tuple, np.ndarray, torch.Tensor)


def show_box(box: Any) -> str:
    """A box (or a value) as messages show it: its repr on one line, shortened."""
    text = " ".join(repr(list(box) if isinstance(box, tuple) else box).split())
    return text if len(text) <= 80 else text[:77] + "..."


def real_number(value: Any) -> tuple[float | None, str]:
    """``(value, "")`` as a float for a real number (NumPy and 0-d tensor scalars too, not a bool), else
    ``(None, what it is instead)``."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value), ""
    if value is None or isinstance(value, bool):
        return None, "null" if value is None else f"a boolean ({value})"
    kind = "a string" if isinstance(value, str | bytes) else f"a {type(value).__name__}"
    if isinstance(value, SEQUENCES):
        kind = "a nested list" if isinstance(value, list | tuple) else "an array"
    return None, f"{kind} ({show_box(value)})"


def checked_theta(theta: Any, name: str, box: str = "") -> float:
    """``theta`` (radians; None means 0) as a finite float, else :class:`InvalidBoxError`."""
    value, other = (0.0, "") if theta is None else real_number(theta)
    of = f" of bounding box {box}" if box else ""
    if value is None:
        raise InvalidBoxError(f"{name}: theta{of} must be a number of radians, got {other}")
    if not math.isfinite(value):
        raise InvalidBoxError(f"{name}: theta{of} is {value}, not a finite number of radians")
    return value


def checked_box(box: Any, theta: Any, name: str) -> tuple[tuple[float, float, float, float], float]:
    """``(x, y, w, h)`` and ``theta`` as floats; :class:`InvalidBoxError` naming the image (``name``) and the box
    unless 4 finite real numbers with ``w, h > 0``."""
    shown, need = show_box(box), f"{name}: bounding box must be 4 numbers [x, y, w, h], got"
    if isinstance(box, np.ndarray | torch.Tensor):
        if box.ndim != 1:
            raise InvalidBoxError(f"{need} an array of shape {tuple(box.shape)}")
        box = box.tolist()
    if not isinstance(box, list | tuple):
        raise InvalidBoxError(f"{need} {real_number(box)[1] or f'the single number {box!r}'}")
    if len(box) != 4:
        raise InvalidBoxError(f"{need} {len(box)} values: {shown}")
    values = []
    for field, v in zip("xywh", box, strict=True):
        value, other = real_number(v)
        if value is None:
            raise InvalidBoxError(f"{need} {shown}: {field} is {other}")
        if not math.isfinite(value):
            raise InvalidBoxError(f"{name}: bounding box {shown} has a non-finite {field} ({value})")
        values.append(value)
    x, y, w, h = values
    if w <= 0 or h <= 0:
        raise InvalidBoxError(
            f"{name}: bounding box {shown} has zero or negative size (w={w:g}, h={h:g}); w and h must be > 0"
        )
    return (x, y, w, h), checked_theta(theta, name, shown)


def rotated_crop_affine(
    box: tuple[float, float, float, float], theta: float, window: tuple[float, float, float, float]
) -> tuple[tuple[int, int], tuple[float, float, float, float, float, float]]:
    """Output size and PIL affine coefficients sampling ``window`` of the rotated box, one pixel per unit."""
    x, y, w, h = box
    u0, v0, u1, v1 = window
    cx, cy = x + w / 2.0, y + h / 2.0
    c, s = math.cos(theta), math.sin(theta)
    if (u0, v0, u1, v1) == (0.0, 0.0, w, h):  # the whole box (every box inside the image)
        ow, oh = max(1, round(w)), max(1, round(h))
        # output pixel (u, v) samples the image at centre + R(theta) @ (u - w/2, v - h/2)
        a, b = c * w / ow, -s * h / oh
        d, e = s * w / ow, c * h / oh
        cst = cx - c * w / 2 + s * h / 2
        fst = cy - s * w / 2 - c * h / 2
    else:  # the window [u0, u1] x [v0, v1] of the box, at the same one-pixel-per-unit scale
        du, dv = u1 - u0, v1 - v0
        ow, oh = max(1, round(du)), max(1, round(dv))
        a, b = c * du / ow, -s * dv / oh
        d, e = s * du / ow, c * dv / oh
        cst = cx + c * (u0 - w / 2) - s * (v0 - h / 2)
        fst = cy + s * (u0 - w / 2) + c * (v0 - h / 2)
    return (ow, oh), (a, b, cst, d, e, fst)


def rotated_window(
    box: tuple[float, float, float, float], theta: float, iw: int, ih: int
) -> tuple[float, float, float, float]:
    """The part ``(u0, v0, u1, v1)`` of a rotated box, in box coordinates (``[0, w] x [0, h]``), that sees the image.

    The image's corners are taken into the box's frame; outside their bounding range (plus one pixel, for
    bilinear sampling at the edge) every box pixel would be background. The whole box when it lies inside the
    image; an empty range (``u1 <= u0``) when it misses it. Never larger than the image's rotated extent.
    """
    x, y, w, h = box
    cx, cy = x + w / 2.0, y + h / 2.0
    c, s = math.cos(theta), math.sin(theta)
    us, vs = [], []
    for px in (0.0, float(iw)):
        for py in (0.0, float(ih)):
            dx, dy = px - cx, py - cy
            us.append(c * dx + s * dy + w / 2.0)
            vs.append(-s * dx + c * dy + h / 2.0)
    if not all(math.isfinite(v) for v in (*us, *vs)):
        return 0.0, 0.0, 0.0, 0.0
    u0, u1 = max(0.0, math.floor(min(us)) - 1.0), min(w, math.ceil(max(us)) + 1.0)
    v0, v1 = max(0.0, math.floor(min(vs)) - 1.0), min(h, math.ceil(max(vs)) + 1.0)
    return u0, v0, u1, v1
