"""PAIR-X for one pair of photos, and its scores for a query's shortlist.

:func:`explain_pair` runs the whole method on two photos (each cropped to its box and rotation as embedding
does): the stage's feature maps, the relevance of each cell to the pair's cosine
(:mod:`.relevance`), mutual-nearest-neighbour correspondences ordered by the product of their cells' relevance,
the two match scores (:mod:`.scores`), and everything mapped back to photo pixels. :func:`shortlist_scores` gives
the scores of a query against ``K`` gallery images from feature maps already computed (the re-ranker caches the
gallery's), with one batched relevance pass per side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .correspondences import to_pixels
from .features import CropGeometry, feature_maps, preprocess, stage_index
from .relevance import default_method, pair_relevance
from .scores import PairScores, pair_scores


@dataclass(frozen=True)
class Explanation:
    """One explained pair. ``xy_a`` / ``xy_b`` ``[N, 2]``: the top matches in photo pixels (x, y), most relevant
    first, with their feature ``similarity`` and ``relevance``; ``heat_a`` / ``heat_b``: each image's relevance
    grid; ``cosine``: the embeddings' similarity; ``scores``: the re-ranking scores of the pair."""

    xy_a: np.ndarray
    xy_b: np.ndarray
    similarity: np.ndarray
    relevance: np.ndarray
    heat_a: np.ndarray
    heat_b: np.ndarray
    cosine: float
    scores: PairScores
    stage: str
    method: str
    geometry_a: CropGeometry
    geometry_b: CropGeometry

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: matches (photo pixels, rounded to 0.1 px), scores, cosine, stage, method, heat maps."""
        matches = [
            {
                "a": [round(float(x), 1) for x in pa],
                "b": [round(float(x), 1) for x in pb],
                "similarity": round(float(s), 4),
                "relevance": float(r),
            }
            for pa, pb, s, r in zip(self.xy_a, self.xy_b, self.similarity, self.relevance, strict=True)
        ]
        return {
            "cosine": round(self.cosine, 6),
            "scores": self.scores.as_dict(),
            "stage": self.stage,
            "relevance_method": self.method,
            "matches": matches,
            "heat_a": np.round(self.heat_a, 6).tolist(),
            "heat_b": np.round(self.heat_b, 6).tolist(),
            "crop_a": {"input_size": self.geometry_a.input_size, "affine": self.geometry_a.affine},
            "crop_b": {"input_size": self.geometry_b.input_size, "affine": self.geometry_b.affine},
        }


def _photo_xy(cells: torch.Tensor, grid: tuple[int, int], geometry: CropGeometry) -> np.ndarray:
    x, y = to_pixels(cells, grid, geometry)
    px, py = geometry.to_photo(x, y)
    return torch.stack([px, py], dim=1).numpy().reshape(-1, 2)


def explain_pair(
    model: Any,
    processor: Any,
    image_a: Any,
    image_b: Any,
    *,
    boxes: Sequence[Sequence[float] | None] = (None, None),
    thetas: Sequence[float] = (0.0, 0.0),
    stage: int | str | None = None,
    method: str | None = None,
    top: int = 20,
    border: int = 0,
) -> Explanation:
    """PAIR-X for ``image_a`` and ``image_b`` (paths, PIL images or arrays, as embedding takes them): the ``top``
    most relevant correspondences at ``stage`` (None: the deepest with a grid of at least 14 x 14), relevance by
    ``method`` (None: LRP for convolutional backbones, gradient x activation for attention); ``border`` rings of
    cells along the crop's edges left out of the matches."""
    index = stage_index(model, stage)
    method = default_method(model) if method is None else method
    pa, geometry_a = preprocess(processor, image_a, boxes[0], thetas[0])
    pb, geometry_b = preprocess(processor, image_b, boxes[1], thetas[1])
    maps = feature_maps(model, torch.cat([pa, pb]), index).detach().float().cpu()
    rel_a, rel_b, cos = pair_relevance(model, maps[:1], maps[1:], index, method)
    scores = pair_scores(maps[0], maps[1], rel_a[0], rel_b[0], border)
    n = min(top, scores.n_matches)
    found = scores.matches
    return Explanation(
        xy_a=_photo_xy(found.cells_a[:n], tuple(maps.shape[-2:]), geometry_a),
        xy_b=_photo_xy(found.cells_b[:n], tuple(maps.shape[-2:]), geometry_b),
        similarity=found.similarity[:n].numpy(),
        relevance=scores.relevance[:n].numpy(),
        heat_a=rel_a[0].numpy(),
        heat_b=rel_b[0].numpy(),
        cosine=float(cos[0]),
        scores=scores,
        stage=f"{index}",
        method=method,
        geometry_a=geometry_a,
        geometry_b=geometry_b,
    )


def shortlist_scores(
    model: Any,
    index: int,
    query: torch.Tensor,
    gallery: torch.Tensor,
    method: str | None = None,
    borders: Sequence[int] = (0,),
) -> list[PairScores] | dict[int, list[PairScores]]:
    """Scores of ``query`` ``[C, H, W]`` against each of ``gallery`` ``[K, C, H, W]`` (stage-``index`` maps).

    With one ``borders`` value (default: 0, every cell matched) the list of scores; with several, one list per
    border width from the same relevance pass (how the benchmark compares them on validation)."""
    if gallery.shape[0] == 0:
        return [] if len(borders) == 1 else {b: [] for b in borders}
    query, gallery = query.detach().float().cpu(), gallery.detach().float().cpu()
    q = query[None].expand(gallery.shape[0], *query.shape)
    rel_q, rel_g, _ = pair_relevance(model, q, gallery, index, method)
    out = {
        b: [pair_scores(query, gallery[k], rel_q[k], rel_g[k], b) for k in range(gallery.shape[0])]
        for b in borders
    }
    return out[borders[0]] if len(borders) == 1 else out
