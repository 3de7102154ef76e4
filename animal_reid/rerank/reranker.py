"""Match a query's keypoints against each image of its shortlist, verify them, fuse, and draw them.

Matching: brute-force nearest neighbours (L2 for SIFT, Hamming for ORB), Lowe's ratio test, then the inliers of a
fundamental matrix fitted by MAGSAC (``cv2.USAC_MAGSAC``; OpenCV seeds it, so a pair always gives the same count).
A fundamental matrix first: flanks bend and turn, and an epipolar check holds for any rigid view change; when it
finds nothing (points degenerate for F, e.g. a flat pattern under pure translation) a MAGSAC homography is tried.
Queries run on ``workers`` threads (OpenCV releases the GIL), each pair alone, so the scores are identical for any
worker count, unless ``time_budget_s`` cuts a query short: its unmatched candidates keep the cosine (counted).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io import cv2_threads, progress_bar
from .features import LocalFeatureConfig, LocalFeatures, LocalFeatureStore, load_crop
from .fusion import Fusion

logger = logging.getLogger(__name__)


@dataclass
class PairMatch:
    """The verified matches of a query and a gallery image; ``n_inliers`` -1 when one side has no keypoints."""

    n_matches: int
    n_inliers: int
    query_xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32), repr=False)
    gallery_xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32), repr=False)


def match_pair(q: LocalFeatures, g: LocalFeatures, config: LocalFeatureConfig) -> PairMatch:
    """Ratio-test matches of ``q`` against ``g`` and the inliers among them of a MAGSAC fundamental matrix or
    homography (``config.geometry``)."""
    import cv2

    if not (q.usable and g.usable):
        return PairMatch(0, -1)
    if config.method == "sift":
        matcher = cv2.BFMatcher(cv2.NORM_L2)
        qd, gd = q.desc.astype(np.float32), g.desc.astype(np.float32)
    else:
        matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
        qd, gd = q.desc, g.desc
    if len(gd) < 2:
        return PairMatch(0, 0)
    pairs = matcher.knnMatch(qd, gd, k=2)
    good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < config.ratio * m[1].distance]
    if len(good) < config.min_matches:
        return PairMatch(len(good), 0)
    p1 = q.xy[[m.queryIdx for m in good]].astype(np.float64)
    p2 = g.xy[[m.trainIdx for m in good]].astype(np.float64)
    mask = _fundamental_inliers(p1, p2, config) if config.geometry == "fundamental" else None
    if mask is None or not mask.any():
        # a flat pattern seen from a shifted viewpoint is degenerate for F (every point on one plane): a homography
        # then describes the same geometry and verifies it
        mask = _homography_inliers(p1, p2, config)
    if mask is None:
        return PairMatch(len(good), 0)
    keep = mask.ravel().astype(bool)
    return PairMatch(len(good), int(keep.sum()), p1[keep].astype(np.float32), p2[keep].astype(np.float32))


def _fundamental_inliers(p1: np.ndarray, p2: np.ndarray, config: LocalFeatureConfig) -> np.ndarray | None:
    import cv2

    try:
        return cv2.findFundamentalMat(p1, p2, cv2.USAC_MAGSAC, config.ransac_px, 0.999, 10000)[1]
    except cv2.error:  # degenerate point sets (all on a line, duplicates)
        return None


def _homography_inliers(p1: np.ndarray, p2: np.ndarray, config: LocalFeatureConfig) -> np.ndarray | None:
    import cv2

    try:
        return cv2.findHomography(
            p1, p2, cv2.USAC_MAGSAC, config.ransac_px, maxIters=10000, confidence=0.999
        )[1]
    except cv2.error:
        return None


@dataclass
class RerankOutput:
    """Re-ranked shortlists: every array is [Q, K] in the order of the ``indices`` given (best cosine first)."""

    indices: np.ndarray  # gallery index per shortlist slot (-1: padding)
    cosine: np.ndarray
    inliers: np.ndarray  # verified matches, -1: not verified (fallback to the cosine)
    scores: np.ndarray  # fused
    stats: dict[str, Any]

    def order(self) -> np.ndarray:
        """Per query, the slots sorted by fused score (ties: shortlist order); padding last."""
        s = np.where(self.indices >= 0, self.scores, -np.inf)
        return np.argsort(-s, axis=1, kind="stable")

    def ranked(self) -> tuple[np.ndarray, np.ndarray]:
        """``(gallery indices [Q, K], fused scores [Q, K])``, best first."""
        o = self.order()
        return np.take_along_axis(self.indices, o, 1), np.take_along_axis(self.scores, o, 1)


class LocalReranker:
    """Re-scores global shortlists with verified local matches (see the package docstring).

    ``k``: shortlist size re-scored per query; ``workers``: threads (default 1); ``time_budget_s``: per query, after
    which its remaining candidates keep the cosine; ``cache_dir``: the local-feature cache (None: memory only).
    """

    def __init__(
        self,
        fusion: Fusion | None = None,
        config: LocalFeatureConfig | None = None,
        k: int = 20,
        workers: int = 1,
        time_budget_s: float | None = None,
        cache_dir: str | os.PathLike | None = None,
        progress: bool | None = None,
    ):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if time_budget_s is not None and not time_budget_s > 0:
            raise ValueError(f"time_budget_s must be > 0 or None, got {time_budget_s!r}")
        if config is None and fusion is not None and fusion.feature_config:
            config = LocalFeatureConfig.from_dict(fusion.feature_config)
        self.config = config or LocalFeatureConfig()
        if fusion is None:
            logger.warning(
                "local re-ranking without a fitted fusion: using weight 1.0, scale 20 (fit one with "
                "animal_reid.rerank.fit_fusion on validation queries)"
            )
            fusion = Fusion()
        self.fusion = fusion
        self.k, self.workers, self.time_budget_s, self.progress = k, workers, time_budget_s, progress
        self.store = LocalFeatureStore(self.config, cache_dir)

    @classmethod
    def from_fusion_file(cls, path: str | os.PathLike, **kwargs) -> LocalReranker:
        return cls(Fusion.load(path), **kwargs)

    def match(self, query: Any, gallery_image: Any) -> PairMatch:
        """Verified matches of two items (features from the store), e.g. for drawing."""
        qf, gf = self.store.features([query, gallery_image], progress=False)
        return match_pair(qf, gf, self.config)

    def verify(
        self,
        queries: Sequence[Any],
        gallery: Sequence[Any],
        indices: np.ndarray,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Inlier counts [Q, K] of each query against its shortlisted gallery images (-1: not verified)."""
        idx = np.asarray(indices, dtype=np.int64)[:, : self.k]
        t0 = time.perf_counter()
        used = sorted(set(idx[idx >= 0].tolist()))
        g_feats = dict(
            zip(
                used,
                self.store.features(
                    [gallery[i] for i in used], self.workers, self.progress, "gallery keypoints"
                ),
                strict=True,
            )
        )
        q_feats = self.store.features(list(queries), self.workers, self.progress, "query keypoints")
        t_features = time.perf_counter() - t0
        budget = self.time_budget_s

        def one(qi: int) -> tuple[list[int], int]:
            start = time.perf_counter()
            row, over = [], 0
            for gi in idx[qi]:
                if gi < 0:
                    row.append(-1)
                elif budget is not None and time.perf_counter() - start > budget:
                    row.append(-1)
                    over += 1
                else:
                    row.append(match_pair(q_feats[qi], g_feats[int(gi)], self.config).n_inliers)
            return row, over

        t1 = time.perf_counter()
        bar = progress_bar(len(idx), "re-ranking", self.progress)
        rows = []
        with cv2_threads(1):
            if self.workers <= 1:
                for qi in range(len(idx)):
                    rows.append(one(qi))
                    bar.update(1)
            else:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(self.workers) as pool:
                    for r in pool.map(one, range(len(idx))):
                        rows.append(r)
                        bar.update(1)
        bar.close()
        inl = np.array([r for r, _ in rows], dtype=np.int64).reshape(idx.shape)
        q_status = [f.status for f in q_feats]
        g_status = {i: f.status for i, f in g_feats.items()}
        stats = {
            "n_queries": int(len(idx)),
            "k": int(idx.shape[1]),
            "n_pairs": int((idx >= 0).sum()),
            "n_pairs_verified": int((inl >= 0).sum()),
            "n_pairs_over_time_budget": int(sum(o for _, o in rows)),
            "query_fallback": {s: q_status.count(s) for s in sorted(set(q_status)) if s != "ok"},
            "gallery_fallback": {
                s: list(g_status.values()).count(s) for s in sorted(set(g_status.values())) if s != "ok"
            },
            "n_queries_fallback": int(sum(s != "ok" for s in q_status)),
            "n_gallery_fallback": int(sum(s != "ok" for s in g_status.values())),
            "features_s": round(t_features, 3),
            "matching_s": round(time.perf_counter() - t1, 3),
            "features_computed": self.store.n_computed,
            "workers": self.workers,
        }
        if stats["n_queries_fallback"] or stats["n_gallery_fallback"]:
            logger.info(
                "local re-ranking: %d queries and %d gallery images without usable keypoints kept the global score",
                stats["n_queries_fallback"], stats["n_gallery_fallback"],
            )  # fmt: skip
        return inl, stats

    def rerank(
        self,
        queries: Sequence[Any],
        gallery: Sequence[Any],
        indices: np.ndarray,
        cosine: np.ndarray,
        species: Sequence | None = None,
    ) -> RerankOutput:
        """Fused scores of shortlists ``indices`` [Q, >=K] (best cosine first) with cosines ``cosine``.

        ``species`` [Q] (default: each query item's ``species``) picks the fitted per-species weight.
        """
        idx = np.asarray(indices, dtype=np.int64)[:, : self.k]
        cos = np.asarray(cosine, dtype=np.float64)[:, : self.k]
        if idx.shape != cos.shape or idx.shape[0] != len(queries):
            raise ValueError(
                f"{len(queries)} queries, indices {idx.shape} and cosine {cos.shape} do not agree"
            )
        if species is None and any(getattr(q, "species", None) for q in queries):
            species = [getattr(q, "species", None) for q in queries]
        inl, stats = self.verify(queries, gallery, idx)
        scores = self.fusion.fuse(np.where(idx >= 0, cos, -np.inf), inl, species)
        return RerankOutput(idx, cos, inl, scores, stats)


# ------------------------------------------------------------------------------------------------------------------
# drawing
def draw_matches(query: Any, candidate: Any, match: PairMatch, config: LocalFeatureConfig, height: int = 220,
                 caption: str | None = None, colour=(40, 200, 60)):  # fmt: skip
    """The query crop beside the candidate crop (box and theta applied), with a line per verified match: PIL RGB."""
    from PIL import Image, ImageDraw

    q = load_crop(query, config.max_side, grey=False, max_upscale=config.max_upscale)
    g = load_crop(candidate, config.max_side, grey=False, max_upscale=config.max_upscale)
    sq, sg = height / q.height, height / g.height
    q = q.resize((max(1, round(q.width * sq)), height))
    g = g.resize((max(1, round(g.width * sg)), height))
    gap, text_h = 8, 18 if caption else 0
    sheet = Image.new("RGB", (q.width + gap + g.width, height + text_h), "white")
    sheet.paste(q, (0, 0))
    sheet.paste(g, (q.width + gap, 0))
    draw = ImageDraw.Draw(sheet)
    for (x1, y1), (x2, y2) in zip(match.query_xy, match.gallery_xy, strict=True):
        a = (x1 * sq, y1 * sq)
        b = (q.width + gap + x2 * sg, y2 * sg)
        draw.line([a, b], fill=colour, width=1)
        for x, y in (a, b):
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], outline=colour)
    if caption:
        draw.text((2, height + 2), caption, fill="black")
    return sheet


def draw_match_sheet(
    query: Any,
    candidates: Sequence[Any],
    matches: Sequence[PairMatch],
    captions: Sequence[str],
    path: str | os.PathLike,
    config: LocalFeatureConfig,
    height: int = 200,
) -> Path:
    """One row per candidate: query and candidate with their verified keypoint matches drawn; saved as PNG."""
    from PIL import Image

    rows = [
        draw_matches(query, c, m, config, height, cap)
        for c, m, cap in zip(candidates, matches, captions, strict=True)
    ]
    if not rows:
        raise ValueError("no candidates to draw")
    pad = 8
    sheet = Image.new(
        "RGB", (max(r.width for r in rows) + 2 * pad, sum(r.height + pad for r in rows) + pad), "white"
    )
    y = pad
    for r in rows:
        sheet.paste(r, (pad, y))
        y += r.height + pad
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(p)
    return p
