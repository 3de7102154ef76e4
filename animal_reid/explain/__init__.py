"""PAIR-X-style explanations of a match: where two images agree, in the re-ID model's own features.

Shrack et al. 2025, "Pairwise Matching of Intermediate Representations for Fine-grained Explainability": the
model's intermediate feature maps of the two images are matched cell to cell (mutual nearest neighbours), and the
pairs are mapped back to pixels of each image. Modules: :mod:`.features` (reading one backbone stage with a hook;
the processor's crop geometry), :mod:`.correspondences` (mutual nearest neighbours, cell-to-pixel mapping,
:func:`match`), :mod:`.relevance` (LRP through zennit, or gradient x activation), :mod:`.scores` (inverted
residual mean, match coverage), :mod:`.pairx` (:func:`explain_pair`, :func:`shortlist_scores`). Imports torch; nothing in the package imports this one at start-up.
"""

from __future__ import annotations

from .correspondences import Correspondences, Match, match, mutual_nearest_neighbours, to_pixels
from .features import (
    CropGeometry,
    default_stage,
    feature_maps,
    preprocess,
    run_tail,
    stage_grids,
    stage_index,
)
from .pairx import Explanation, explain_pair, shortlist_scores
from .relevance import RELEVANCE_METHODS, default_method, pair_relevance
from .scores import PairScores, pair_scores

__all__ = [
    "RELEVANCE_METHODS",
    "Correspondences",
    "CropGeometry",
    "Explanation",
    "Match",
    "PairScores",
    "default_method",
    "default_stage",
    "explain_pair",
    "feature_maps",
    "match",
    "mutual_nearest_neighbours",
    "pair_relevance",
    "pair_scores",
    "preprocess",
    "run_tail",
    "shortlist_scores",
    "stage_grids",
    "stage_index",
    "to_pixels",
]
