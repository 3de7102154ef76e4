"""Match scores from feature-map correspondences: how well two images' matched cells agree in geometry and how
much of what the model relies on they cover (PAIR-X, Shrack et al. 2025; Wild Me's MiewID re-ranking uses the
same two).

- **Inverted residual mean**: a homography is fitted (OpenCV, RANSAC) to the most relevant matched cell centres,
  in grid units of each image; the mean reprojection error of those matches, ``r`` cells, gives
  ``1 / (1 + r)``: 1 when the matches move together like one flat pattern, towards 0 when they scatter. Fewer
  than 4 matches, or no homography: 0.
- **Match coverage**: the share of each image's relevance that lies on matched cells, averaged over the two
  images (0 .. 1).
- **Matched similarity**: the mean cosine similarity of the matched cells' feature vectors, weighted by the
  product of their relevance (0 when nothing matches): how alike the two images look where the model looks, at a
  finer grid than the embedding's single vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .correspondences import Correspondences, interior, mutual_nearest_neighbours

RESIDUAL_MATCHES = 30  # the most relevant matches the homography is fitted to
RANSAC_CELLS = 1.5  # RANSAC's reprojection threshold, in cells


@dataclass(frozen=True)
class PairScores:
    """``residual`` (inverted residual mean, 0 .. 1), ``coverage`` (0 .. 1), ``similarity`` (relevance-weighted
    mean cosine of the matched cells), ``n_matches`` (mutual nearest neighbours) and the matches themselves, most
    relevant first (``relevance`` = product of the two cells')."""

    residual: float
    coverage: float
    similarity: float
    n_matches: int
    matches: Correspondences
    relevance: torch.Tensor

    def as_dict(self) -> dict[str, float]:
        return {
            "residual": self.residual,
            "coverage": self.coverage,
            "similarity": self.similarity,
            "n_matches": self.n_matches,
        }


def by_relevance(found: Correspondences, rel_a: torch.Tensor, rel_b: torch.Tensor):
    """The correspondences re-ordered by the product of their cells' relevance, descending, and that product."""
    ra = rel_a[found.cells_a[:, 0], found.cells_a[:, 1]]
    rb = rel_b[found.cells_b[:, 0], found.cells_b[:, 1]]
    weight = ra * rb
    order = torch.sort(weight, descending=True, stable=True).indices
    ordered = Correspondences(found.cells_a[order], found.cells_b[order], found.similarity[order])
    return ordered, weight[order]


def inverted_residual_mean(cells_a: np.ndarray, cells_b: np.ndarray) -> float:
    """``1 / (1 + mean reprojection error in cells)`` of a RANSAC homography from ``cells_a`` to ``cells_b``
    (``[N, 2]`` row, col); 0 with fewer than 4 pairs or when no homography is found."""
    import cv2

    if len(cells_a) < 4:
        return 0.0
    src = cells_a[:, ::-1].astype(np.float32) + 0.5  # (x, y) cell centres
    dst = cells_b[:, ::-1].astype(np.float32) + 0.5
    h, _ = cv2.findHomography(src, dst, cv2.RANSAC, RANSAC_CELLS)
    if h is None or not np.all(np.isfinite(h)):
        return 0.0
    ones = np.ones((len(src), 1), dtype=np.float64)
    proj = np.hstack([src, ones]) @ h.T
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = proj[:, :2] / proj[:, 2:3]
    err = np.linalg.norm(xy - dst, axis=1)
    if not np.all(np.isfinite(err)):
        return 0.0
    return float(1.0 / (1.0 + err.mean()))


def coverage(found: Correspondences, rel_a: torch.Tensor, rel_b: torch.Tensor) -> float:
    """Mean over the two images of the share of their relevance on matched cells."""
    shares = []
    for cells, rel in ((found.cells_a, rel_a), (found.cells_b, rel_b)):
        total = float(rel.sum())
        shares.append(float(rel[cells[:, 0], cells[:, 1]].sum()) / total if total > 0 else 0.0)
    return float(np.mean(shares))


def matched_similarity(found: Correspondences, weight: torch.Tensor) -> float:
    """The matches' cosine similarity averaged with their relevance ``weight`` (plain mean where every weight is
    0; 0 without matches)."""
    if len(found) == 0:
        return 0.0
    total = float(weight.sum())
    if total <= 0:
        return float(found.similarity.mean())
    return float((found.similarity * weight).sum()) / total


def pair_scores(
    fa: torch.Tensor, fb: torch.Tensor, rel_a: torch.Tensor, rel_b: torch.Tensor, border: int = 0
) -> PairScores:
    """Scores of one pair from its feature maps ``[C, H, W]`` and relevance maps ``[H, W]``; ``border`` rings of
    cells left out of the matches and of each image's relevance total."""
    if border > 0:
        rel_a = rel_a * interior(*rel_a.shape, border).reshape(rel_a.shape)
        rel_b = rel_b * interior(*rel_b.shape, border).reshape(rel_b.shape)
    found, weight = by_relevance(mutual_nearest_neighbours(fa, fb, border), rel_a, rel_b)
    top = min(RESIDUAL_MATCHES, len(found))
    residual = inverted_residual_mean(found.cells_a[:top].numpy(), found.cells_b[:top].numpy())
    cover = coverage(found, rel_a, rel_b)
    return PairScores(residual, cover, matched_similarity(found, weight), len(found), found, weight)
