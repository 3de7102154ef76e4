"""The picture of one PAIR-X explanation, in the paper's figure style (Shrack et al. 2025, Fig. 1).

Two panels side by side, each the part of its photo the model saw (the crop's corners mapped through
:meth:`~animal_reid.explain.features.CropGeometry.to_photo`, plus a margin; the whole photo without a box) scaled to
one height; over each crop its relevance grid as a semi-transparent heat map (colour map *inferno*: dark = little
relevance, bright yellow = most); the ``top`` most relevant correspondences as lines between the panels, one colour
each, the strongest widest and most opaque, with a small circle at each end; and a caption strip with the cosine,
the two match scores, the number of mutual matches, the stage and the relevance method.

:func:`explanation_layout` gives the :class:`Panel` geometry alone (where a photo pixel lands in the figure), so a
caller can place its own marks on the picture. PIL and numpy only.
"""

from __future__ import annotations

import colorsys
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

MARGIN = 0.15  # photo shown around the crop, as a share of the crop's size
GAP = 16  # pixels between the two panels
HEAT_ALPHA = (0.3, 0.65)  # opacity of the heat map at no relevance and at the image's peak
LINE_ALPHA = (255, 150)  # opacity of the strongest and of the weakest line drawn
BACKGROUND = (255, 255, 255)
# matplotlib's "inferno" (perceptually uniform) at 0, 1/8, ..., 1; interpolated linearly in between
INFERNO = np.array(
    [
        [0, 0, 4],
        [33, 12, 74],
        [87, 16, 110],
        [138, 34, 106],
        [188, 55, 84],
        [228, 90, 49],
        [249, 142, 9],
        [249, 203, 53],
        [252, 255, 164],
    ],
    dtype=np.float64,
)
METHOD_NAMES = {"lrp": "LRP (zennit, EpsilonPlus)", "gradxact": "gradient x activation"}


def load_photo(image: Any) -> Image.Image:
    """``image`` (a path, encoded bytes, a PIL image or an ``H x W x C`` uint8 array) as an RGB PIL image in its
    displayed orientation (EXIF applied): the pixels the explanation's coordinates refer to."""
    if isinstance(image, np.ndarray):
        return Image.fromarray(image).convert("RGB")
    if isinstance(image, bytes | bytearray | memoryview):
        return _upright(Image.open(io.BytesIO(bytes(image))))
    if isinstance(image, str | os.PathLike):
        with Image.open(image) as im:
            return _upright(im)
    return _upright(image)


def _upright(image: Image.Image) -> Image.Image:
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - malformed EXIF: the processor keeps such an image unrotated too
        pass
    return image.convert("RGB")


def crop_corners(geometry: Any) -> np.ndarray:
    """``[4, 2]`` photo pixels of the model input's corners (top-left, top-right, bottom-right, bottom-left)."""
    import torch

    w, h = geometry.input_size
    x, y = geometry.to_photo(torch.tensor([0.0, w, w, 0.0]), torch.tensor([0.0, 0.0, h, h]))
    return np.stack([x.numpy(), y.numpy()], axis=1).astype(np.float64)


def box_corners(box: Sequence[float], theta: float = 0.0) -> np.ndarray:
    """``[4, 2]`` corners of the box ``(x, y, w, h)`` turned by ``theta`` radians about its centre (the image
    processor's convention), in the order of :func:`crop_corners`."""
    x, y, w, h = (float(v) for v in box)
    c, s = math.cos(theta), math.sin(theta)
    half = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2.0
    rot = np.array([[c, -s], [s, c]])
    return half @ rot.T + np.array([x + w / 2.0, y + h / 2.0])


@dataclass(frozen=True)
class Panel:
    """Where one photo lies in the figure: the photo rectangle ``region`` (left, top, right, bottom, photo pixels)
    drawn at ``offset`` (x, y figure pixels) with ``size`` (width, height)."""

    region: tuple[float, float, float, float]
    offset: tuple[int, int]
    size: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """Figure pixels per photo pixel, along x and along y."""
        left, top, right, bottom = self.region
        return self.size[0] / (right - left), self.size[1] / (bottom - top)

    def to_figure(self, xy: np.ndarray) -> np.ndarray:
        """``[N, 2]`` photo pixels to figure pixels."""
        sx, sy = self.scale
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        out = (xy - np.array(self.region[:2])) * np.array([sx, sy])
        return out + np.array(self.offset, dtype=np.float64)

    def render(self, photo: Image.Image) -> Image.Image:
        """The panel's part of ``photo``, resized to ``size`` (nothing drawn on it)."""
        return photo.resize(self.size, Image.Resampling.BICUBIC, box=self.region, reducing_gap=3.0)


def _panel(photo_size: tuple[int, int], geometry: Any, height: int, offset: tuple[int, int]) -> Panel:
    """The crop's bounding rectangle plus :data:`MARGIN`, inside the photo, ``height`` pixels high."""
    corners = crop_corners(geometry)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    pad = MARGIN * (hi - lo)
    left, top = np.maximum(lo - pad, 0.0)
    right, bottom = np.minimum(hi + pad, np.array(photo_size, dtype=np.float64))
    if right - left < 1.0 or bottom - top < 1.0:  # a crop outside the photo: show the whole photo
        left, top, (right, bottom) = 0.0, 0.0, photo_size
    width = max(1, round((right - left) * height / (bottom - top)))
    return Panel((float(left), float(top), float(right), float(bottom)), offset, (width, height))


def explanation_layout(
    photo_sizes: Sequence[tuple[int, int]], explanation: Any, *, height: int = 320, title: str | None = None
) -> tuple[Panel, Panel]:
    """The two :class:`Panel` of :func:`draw_explanation` for photos of ``photo_sizes`` (width, height each)."""
    if height < 16:
        raise ValueError(f"height must be >= 16 pixels, got {height}")
    top = _title_height(height) if title else 0
    a = _panel(tuple(photo_sizes[0]), explanation.geometry_a, height, (0, top))
    b = _panel(tuple(photo_sizes[1]), explanation.geometry_b, height, (a.size[0] + GAP, top))
    return a, b


def colormap(values: np.ndarray) -> np.ndarray:
    """``values`` in [0, 1] (any shape) to RGB floats 0..255 (shape + (3,)) through :data:`INFERNO`."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0) * (len(INFERNO) - 1)
    i = np.minimum(np.floor(v).astype(int), len(INFERNO) - 2)
    t = (v - i)[..., None]
    return INFERNO[i] * (1.0 - t) + INFERNO[i + 1] * t


def _grid_affine(panel: Panel, geometry: Any, grid_hw: tuple[int, int]) -> tuple[float, ...]:
    """PIL ``AFFINE`` coefficients taking a panel pixel to heat-grid coordinates (cell ``j`` spans [j, j + 1])."""
    a, b, c, d, e, f = geometry.affine
    inv = np.linalg.inv(np.array([[a, b], [d, e]], dtype=np.float64))  # photo offset -> crop pixel
    sx, sy = panel.scale
    to_photo = np.array([[1.0 / sx, 0.0], [0.0, 1.0 / sy]])
    per_cell = np.diag([grid_hw[1] / geometry.crop_size[0], grid_hw[0] / geometry.crop_size[1]])
    lin = per_cell @ inv @ to_photo
    shift = per_cell @ inv @ (np.array(panel.region[:2]) - np.array([c, f]))
    return (lin[0, 0], lin[0, 1], shift[0], lin[1, 0], lin[1, 1], shift[1])


def heat_overlay(image: Image.Image, panel: Panel, heat: np.ndarray, geometry: Any) -> Image.Image:
    """``image`` (the rendered panel) with ``heat`` (the relevance grid over the model input) laid over the
    crop, upsampled bilinearly, coloured by :func:`colormap` and scaled to its peak."""
    heat = np.asarray(heat, dtype=np.float32)
    peak = float(heat.max()) if heat.size else 0.0
    norm = heat / peak if peak > 0 else np.zeros_like(heat)
    coeffs = _grid_affine(panel, geometry, heat.shape)
    kwargs = {"method": Image.Transform.AFFINE, "data": coeffs}
    values = Image.fromarray(norm).transform(panel.size, resample=Image.Resampling.BILINEAR, **kwargs)
    inside = Image.new("L", heat.shape[::-1], 255).transform(panel.size, **kwargs)
    v = np.asarray(values, dtype=np.float64)
    alpha = (HEAT_ALPHA[0] + (HEAT_ALPHA[1] - HEAT_ALPHA[0]) * np.clip(v, 0, 1))[..., None]
    alpha = alpha * (np.asarray(inside, dtype=np.float64)[..., None] / 255.0)
    photo = np.asarray(image, dtype=np.float64)
    out = photo * (1.0 - alpha) + colormap(v) * alpha
    return Image.fromarray(np.round(out).astype(np.uint8))


def line_colours(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct saturated colours (hues spread by the golden ratio, so any prefix is spread too)."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((0.02 + i * 0.618034) % 1.0, 0.85, 1.0)
        out.append((round(r * 255), round(g * 255), round(b * 255)))
    return out


def _draw_matches(figure: Image.Image, ends_a: np.ndarray, ends_b: np.ndarray, height: int) -> Image.Image:
    """Lines ``ends_a[i]`` -> ``ends_b[i]`` (figure pixels, most relevant first; width and opacity falling with
    the rank) with an opaque circle at each end."""
    n = len(ends_a)
    if n == 0:
        return figure
    layer = Image.new("RGBA", figure.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    widest, colours = max(2, round(height / 90)), line_colours(n)
    for i in reversed(range(n)):  # the most relevant drawn last, on top
        rank = i / (n - 1) if n > 1 else 0.0
        width = max(1, round(widest * (1.0 - 0.5 * rank)))
        alpha = round(LINE_ALPHA[0] + (LINE_ALPHA[1] - LINE_ALPHA[0]) * rank)
        rgb = colours[i]
        pa, pb = tuple(ends_a[i]), tuple(ends_b[i])
        draw.line([pa, pb], fill=(*rgb, alpha), width=width)
        radius = widest + 1.5
        for x, y in (pa, pb):
            ring = [x - radius, y - radius, x + radius, y + radius]
            draw.ellipse(ring, fill=(*rgb, 255), outline=(0, 0, 0, 255))
    return Image.alpha_composite(figure.convert("RGBA"), layer).convert("RGB")


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's built-in font at ``size`` pixels (a fixed size on Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1
        return ImageFont.load_default()


def _text_size(height: int) -> int:
    return max(11, height // 24)


def _title_height(height: int) -> int:
    return _text_size(height) + 12


def caption_lines(explanation: Any, drawn: int) -> list[str]:
    """The caption strip's two lines: cosine and scores; matches, stage and relevance method."""
    s = explanation.scores
    method = METHOD_NAMES.get(explanation.method, explanation.method)
    return [
        f"cosine {explanation.cosine:.3f}   residual {s.residual:.3f}   coverage {s.coverage:.3f}"
        f"   matched similarity {s.similarity:.3f}",
        f"{s.n_matches} mutual matches ({drawn} drawn)   stage {explanation.stage}   relevance: {method}",
    ]


def _draw_box(figure: Image.Image, panel: Panel, box, theta: float) -> None:
    """The annotated box (turned by ``theta``) as a thin white outline on its panel."""
    corners = panel.to_figure(box_corners(box, theta))
    ImageDraw.Draw(figure).polygon([tuple(p) for p in corners], outline=(255, 255, 255), width=1)


def draw_explanation(
    image_a: Any,
    image_b: Any,
    explanation: Any,
    *,
    boxes: Sequence[Sequence[float] | None] = (None, None),
    thetas: Sequence[float] = (0.0, 0.0),
    height: int = 320,
    top: int = 10,
    title: str | None = None,
) -> Image.Image:
    """The figure of ``explanation`` (an :class:`~animal_reid.explain.Explanation` of ``image_a`` and ``image_b``:
    paths, bytes, PIL images or arrays, as given to ``explain_pair``): see the module docstring. ``boxes`` and
    ``thetas`` (the ones the explanation was computed with) are outlined on their panels; ``top``: the number of
    correspondences drawn (at most those in the explanation); ``title``: a line above the panels."""
    if top < 0:
        raise ValueError(f"top must be >= 0 correspondences, got {top}")
    photos = (load_photo(image_a), load_photo(image_b))
    panels = explanation_layout([p.size for p in photos], explanation, height=height, title=title)
    n = min(top, len(explanation.xy_a))
    captions = caption_lines(explanation, n)
    face = font(_text_size(height))
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(draw.textlength(t, font=face) for t in [*captions, title or ""])
    strip = 2 * (_text_size(height) + 6) + 8
    width = max(panels[1].offset[0] + panels[1].size[0], math.ceil(text_w) + 16)
    figure = Image.new("RGB", (width, panels[0].offset[1] + height + strip), BACKGROUND)
    heats = (explanation.heat_a, explanation.heat_b)
    geometries = (explanation.geometry_a, explanation.geometry_b)
    for photo, panel, heat, geometry in zip(photos, panels, heats, geometries, strict=True):
        figure.paste(heat_overlay(panel.render(photo), panel, heat, geometry), panel.offset)
    for panel, box, theta in zip(panels, boxes, thetas, strict=True):
        if box is not None:
            _draw_box(figure, panel, box, float(theta or 0.0))
    ends = (panels[0].to_figure(explanation.xy_a[:n]), panels[1].to_figure(explanation.xy_b[:n]))
    figure = _draw_matches(figure, *ends, height)
    _draw_text(figure, title, captions, face, panels[0].offset[1] + height)
    return figure


def _draw_text(figure: Image.Image, title: str | None, captions: list[str], face, strip_top: int) -> None:
    draw = ImageDraw.Draw(figure)
    line = face.size + 6 if hasattr(face, "size") else 16
    if title:
        draw.text((8, 4), title, fill=(0, 0, 0), font=face)
    for i, text in enumerate(captions):
        draw.text((8, strip_top + 6 + i * line), text, fill=(0, 0, 0), font=face)
