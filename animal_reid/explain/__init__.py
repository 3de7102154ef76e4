"""PAIR-X-style explanations of a match: where two images agree, in the re-ID model's own features.

Shrack et al. 2025, "Pairwise Matching of Intermediate Representations for Fine-grained Explainability": the
model's intermediate feature maps of the two images are matched cell to cell (mutual nearest neighbours), and the
pairs are mapped back to pixels of each image. Modules: :mod:`.features` (reading one backbone stage with a hook;
the processor's crop geometry), :mod:`.correspondences` (mutual nearest neighbours, cell-to-pixel mapping,
:func:`match`). Imports torch; nothing in the package imports this one at start-up.
"""

from __future__ import annotations

from .correspondences import Correspondences, Match, match, mutual_nearest_neighbours, to_pixels
from .features import CropGeometry, default_stage, feature_maps, preprocess, stage_grids

__all__ = [
    "Correspondences",
    "CropGeometry",
    "Match",
    "default_stage",
    "feature_maps",
    "match",
    "mutual_nearest_neighbours",
    "preprocess",
    "stage_grids",
    "to_pixels",
]
