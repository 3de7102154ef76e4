"""Point correspondences between two images from the re-ID model's intermediate feature maps.

The first step of PAIR-X (Shrack et al. 2025, "Pairwise Matching of Intermediate Representations for
Fine-grained Explainability"): two cells, one in each image's feature grid, correspond when each is the other's
most similar cell (mutual nearest neighbours under cosine similarity of channel vectors). Unlike keypoint matching
(:mod:`animal_reid.rerank`) this uses the features the model itself embeds with, so it shows what the model
compares. :func:`match` runs the whole step on two photos and gives the correspondences in the pixels of each
model input (and, through :class:`~animal_reid.explain.features.CropGeometry`, of each photo).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .features import CropGeometry, default_stage, feature_maps, preprocess


@dataclass(frozen=True)
class Correspondences:
    """Mutual nearest-neighbour cell pairs, most similar first: ``cells_a`` and ``cells_b`` are ``[N, 2]`` (row,
    col) in each grid, ``similarity`` ``[N]`` their cosine similarity."""

    cells_a: torch.Tensor
    cells_b: torch.Tensor
    similarity: torch.Tensor

    def __len__(self) -> int:
        return int(self.similarity.shape[0])


def _unit_cells(f: torch.Tensor) -> torch.Tensor:
    """``[C, H, W]`` to ``[H * W, C]`` rows of unit length (cosine similarity is then a matrix product)."""
    if f.ndim != 3:
        raise ValueError(f"expected a [C, H, W] feature map, got shape {tuple(f.shape)}")
    return F.normalize(f.detach().float().flatten(1).T, dim=1)


def interior(height: int, width: int, border: int) -> torch.Tensor:
    """``[H * W]`` bool, row-major: the cells at least ``border`` cells away from every edge."""
    rows = torch.arange(height)[:, None].expand(height, width)
    cols = torch.arange(width)[None, :].expand(height, width)
    keep = (rows >= border) & (rows < height - border) & (cols >= border) & (cols < width - border)
    return keep.reshape(-1)


def mutual_nearest_neighbours(fa: torch.Tensor, fb: torch.Tensor, border: int = 0) -> Correspondences:
    """Cell pairs of ``fa [C, Ha, Wa]`` and ``fb [C, Hb, Wb]`` that are each other's nearest neighbour by cosine
    similarity of their channel vectors, sorted by similarity, descending (ties: by cell of ``fa``). ``border``:
    the outermost rings of cells take no part (zero padding makes border cells alike whatever the photos show)."""
    if fa.shape[0] != fb.shape[0]:
        raise ValueError(f"feature maps have {fa.shape[0]} and {fb.shape[0]} channels; they must match")
    sim = _unit_cells(fa) @ _unit_cells(fb).T  # [Ha*Wa, Hb*Wb]
    keep_a, keep_b = interior(*fa.shape[1:], border), interior(*fb.shape[1:], border)
    if border > 0:
        sim[~keep_a, :] = -2.0  # below any cosine: never a nearest neighbour of an interior cell
        sim[:, ~keep_b] = -2.0
    best_b = sim.argmax(dim=1)
    best_a = sim.argmax(dim=0)
    ia = torch.arange(sim.shape[0])
    ia = ia[(best_a[best_b] == ia) & keep_a & keep_b[best_b]]
    ib = best_b[ia]
    score = sim[ia, ib]
    order = torch.sort(score, descending=True, stable=True).indices
    ia, ib, score = ia[order], ib[order], score[order]
    wa, wb = fa.shape[2], fb.shape[2]
    cells_a = torch.stack([ia // wa, ia % wa], dim=1)
    cells_b = torch.stack([ib // wb, ib % wb], dim=1)
    return Correspondences(cells_a, cells_b, score)


def to_pixels(
    cells: torch.Tensor, grid_hw: Sequence[int], geometry: CropGeometry
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` float tensors: the centres of ``cells [N, 2]`` (row, col) of an ``H x W`` grid in the pixels of
    the model input described by ``geometry`` (``geometry.to_photo`` takes them on to the photo)."""
    height, width = grid_hw
    in_w, in_h = geometry.input_size
    x = (cells[:, 1].float() + 0.5) * (in_w / width)
    y = (cells[:, 0].float() + 0.5) * (in_h / height)
    return x, y


@dataclass(frozen=True)
class Match:
    """The top correspondences of two images: ``xy_a`` and ``xy_b`` ``[N, 2]`` (x, y) in the pixels of each model
    input, ``similarity [N]``, descending; ``stage`` read, its grids, and each input's crop geometry."""

    xy_a: torch.Tensor
    xy_b: torch.Tensor
    similarity: torch.Tensor
    stage: int | str
    grid_a: tuple[int, int]
    grid_b: tuple[int, int]
    geometry_a: CropGeometry
    geometry_b: CropGeometry

    def photo_xy(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(xy_a, xy_b)`` in the pixels of each displayed photo."""
        pa = torch.stack(self.geometry_a.to_photo(self.xy_a[:, 0], self.xy_a[:, 1]), dim=1)
        pb = torch.stack(self.geometry_b.to_photo(self.xy_b[:, 0], self.xy_b[:, 1]), dim=1)
        return pa, pb


def match(
    model: Any,
    processor: Any,
    image_a: Any,
    image_b: Any,
    stage: int | str | None = None,
    top: int = 50,
    boxes: Sequence[Sequence[float] | None] = (None, None),
    thetas: Sequence[float] = (0.0, 0.0),
) -> Match:
    """The ``top`` mutual-nearest-neighbour correspondences of ``image_a`` and ``image_b`` (each cropped to its
    box) at one backbone ``stage`` (None: :func:`~animal_reid.explain.features.default_stage`)."""
    stage = default_stage(model) if stage is None else stage
    pa, geometry_a = preprocess(processor, image_a, boxes[0], thetas[0])
    pb, geometry_b = preprocess(processor, image_b, boxes[1], thetas[1])
    maps = feature_maps(model, torch.cat([pa, pb]), stage)
    found = mutual_nearest_neighbours(maps[0], maps[1])
    n = min(top, len(found))
    grid_a, grid_b = tuple(maps[0].shape[-2:]), tuple(maps[1].shape[-2:])
    xa = torch.stack(to_pixels(found.cells_a[:n], grid_a, geometry_a), dim=1)
    xb = torch.stack(to_pixels(found.cells_b[:n], grid_b, geometry_b), dim=1)
    return Match(xa, xb, found.similarity[:n], stage, grid_a, grid_b, geometry_a, geometry_b)
