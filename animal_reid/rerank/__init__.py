"""Local-feature re-ranking: re-score a global shortlist by checking that the same patterns line up.

A global embedding finds the likely individuals; this package confirms them the way a biologist would. For each
query and each gallery image of its shortlist (the top ``K`` by cosine, within the query's species) it matches
local keypoints (OpenCV SIFT or ORB, no weights), keeps the matches that pass Lowe's ratio test and a MAGSAC
fundamental-matrix check, and fuses the inlier count with the cosine:

    fused = cosine + weight[species] * inliers / (inliers + scale)

``weight`` and ``scale`` are fitted on validation queries (:func:`fit_fusion`), never set by hand, and saved as
``rerank_fusion.json`` beside the model or the gallery. Keypoints are computed inside the annotated box (rotated
by ``theta``), once per gallery image, and cached on disk beside the embeddings under a key made of the feature
settings and OpenCV's version; each image is keyed like the embedding cache (path, size and mtime, or a hash of
its bytes, plus box and rotation). Images too small or too plain for keypoints keep their global score and are
counted, never raised.

Modules: :mod:`.features` (extraction and the on-disk cache), :mod:`.fusion` (the fitted score fusion),
:mod:`.reranker` (matching, verification, parallel re-scoring, match drawings), :mod:`.pairx` (re-ranking with
PAIR-X scores from the model's own feature maps, cached per image) and :mod:`.score_fusion` (one formula for the
cosine, SIFT and PAIR-X scores, fitted on validation). This package imports
numpy, OpenCV, PIL, :mod:`animal_reid.io` (the atomic writer, the part-file cache, progress bars) and, lazily,
``modeling`` (the image processor's crop); nothing imports it but ``animal_reid.identify`` (lazily, under
``--rerank local``) and the benchmarks.
"""

from .features import FEATURE_METHODS, LocalFeatureCache, LocalFeatureConfig, LocalFeatures, LocalFeatureStore
from .fusion import FUSION_FILE, Fusion, best_match_in_shortlist, fit_fusion, unknown_identities
from .pairx import PairxReranker, StageMapCache
from .reranker import LocalReranker, PairMatch, RerankOutput, draw_matches
from .score_fusion import PAIRX_FUSION_FILE, PAIRX_SCORES, SCORE_NAMES, ScoreFusion, fit_score_fusion

__all__ = [
    "FEATURE_METHODS",
    "FUSION_FILE",
    "PAIRX_FUSION_FILE",
    "PAIRX_SCORES",
    "SCORE_NAMES",
    "PairxReranker",
    "ScoreFusion",
    "StageMapCache",
    "fit_score_fusion",
    "Fusion",
    "LocalFeatureCache",
    "LocalFeatureConfig",
    "LocalFeatureStore",
    "LocalFeatures",
    "LocalReranker",
    "PairMatch",
    "RerankOutput",
    "best_match_in_shortlist",
    "draw_matches",
    "fit_fusion",
    "unknown_identities",
]
