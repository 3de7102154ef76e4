"""One fused score from the cosine and several re-ranking scores, one formula for every species:

    fused = cosine + w_sift * inliers / (inliers + scale) + w_residual * residual + w_coverage * coverage
                   + w_similarity * similarity

``inliers`` are SIFT's verified matches (< 0: not verified, no bonus); ``residual``, ``coverage`` and
``similarity`` are PAIR-X's scores (:mod:`animal_reid.explain.scores`); a fusion weighs only the scores it names.
The SIFT-only fusion (:class:`~.fusion.Fusion`) keeps its per-species weights; this one has the same form with
one weight per score for all species, fitted on validation shortlists by :func:`fit_score_fusion` over a grid
(species-averaged top-1, ties: mean reciprocal rank of the first true match, then the smaller weights). The grid
holds all-zero weights, and a fit that does not raise validation top-1 above the cosine alone falls back to them.
``max_species_loss`` (optional) admits only weights under which no species loses more than that many validation
queries from its top-1, net, against the cosine: one formula for all species that must not buy one species' gain
with another's loss. The grid is searched in batches of weightings (numpy). Saved as JSON like the SIFT fusion.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .fusion import DEFAULT_SCALES, save_json

PAIRX_SCORES = ("residual", "coverage", "similarity")  # per pair, from animal_reid.explain.scores
SCORE_NAMES = ("sift", *PAIRX_SCORES)
PAIRX_FUSION_FILE = "rerank_pairx_fusion.json"
GRID = tuple(round(0.1 * i, 1) for i in range(21))  # 0 .. 2 per score


def _bonus_terms(scores: Mapping[str, np.ndarray], scale: float) -> dict[str, np.ndarray]:
    """Each score as its bonus in 0 .. 1 (SIFT inliers through ``n / (n + scale)``, unverified: 0)."""
    out = {}
    for name, raw in scores.items():
        if name not in SCORE_NAMES:
            raise ValueError(f"unknown re-ranking score {name!r}; expected among {SCORE_NAMES}")
        s = np.asarray(raw, dtype=np.float64)
        out[name] = (
            np.where(s > 0, s / (np.maximum(s, 0) + scale), 0.0) if name == "sift" else np.nan_to_num(s)
        )
    return out


@dataclass
class ScoreFusion:
    """``fused = cosine + sum of weights[name] * bonus(name)``; see the module docstring."""

    weights: dict[str, float] = field(default_factory=dict)
    scale: float = 20.0  # SIFT's inliers / (inliers + scale)
    fitted: bool = False
    shortlist_k: int | None = None
    pairx_config: dict | None = None
    feature_config: dict | None = None  # SIFT's, when it has a weight
    curve: dict | None = None
    n_queries: dict | None = None
    open_set_threshold: dict | None = None
    max_species_loss: int | None = None  # the fit's constraint, if it had one

    def __post_init__(self):
        for name, w in self.weights.items():
            if name not in SCORE_NAMES:
                raise ValueError(f"unknown re-ranking score {name!r}; expected among {SCORE_NAMES}")
            if not (math.isfinite(w) and w >= 0):
                raise ValueError(f"weight of {name!r} must be a finite number >= 0, got {w!r}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a finite number > 0, got {self.scale!r}")

    def uses(self, name: str) -> bool:
        return self.weights.get(name, 0.0) > 0

    def fuse(self, cosine, scores: Mapping[str, np.ndarray]) -> np.ndarray:
        """Fused scores of ``cosine`` [Q, K] and each named score (same shape)."""
        cos = np.asarray(cosine, dtype=np.float64)
        out = cos.copy()
        for name, bonus in _bonus_terms(scores, self.scale).items():
            if bonus.shape != cos.shape:
                raise ValueError(f"score {name!r} has shape {bonus.shape}, the cosine {cos.shape}")
            out = out + self.weights.get(name, 0.0) * bonus
        return out

    def threshold(self):
        """The open-set threshold fitted on fused scores (an ``OpenSetThreshold``), or None."""
        if self.open_set_threshold is None:
            return None
        from animal_reid.openset import OpenSetThreshold

        return OpenSetThreshold.from_dict(self.open_set_threshold)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return {"formula": "cosine + sum_j weights[j] * score_j (sift: inliers / (inliers + scale))", **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoreFusion:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def save(self, path: str | os.PathLike) -> Path:
        return save_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> ScoreFusion:
        try:
            d = json.loads(Path(path).read_text())
            if not isinstance(d, dict) or "weights" not in d:
                raise ValueError("not a JSON object with weights")
            return cls.from_dict(d)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: not a PAIR-X re-ranking fusion file ({err})") from err


def _top1_rr(fused: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query (the last two axes are [Q, K]; any leading axes, e.g. a batch of weightings, are kept): 1.0 when
    a true candidate ranks first, and the reciprocal rank of the first true candidate."""
    best_true = np.where(correct, fused, -np.inf).max(axis=-1)
    rank = (fused > best_true[..., None]).sum(axis=-1)  # candidates strictly above the best true one
    has = correct.any(axis=-1)
    return (has & (rank == 0)).astype(np.float64), np.where(has, 1.0 / (rank + 1.0), 0.0)


def _group_sums(values: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """``[..., S]``: ``values [..., Q]`` summed within each species' queries."""
    return np.stack([values[..., g].sum(axis=-1) for g in groups], axis=-1)


def _macro(top1: np.ndarray, rr: np.ndarray, groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Species-averaged top-1 and mean reciprocal rank of the first true candidate (over the last axis)."""
    sizes = np.array([len(g) for g in groups], dtype=np.float64)
    return (_group_sums(top1, groups) / sizes).mean(axis=-1), (_group_sums(rr, groups) / sizes).mean(axis=-1)


def _worst_species_loss(top1: np.ndarray, plain_top1: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """The largest net number of top-1 queries any species loses against the cosine's ``plain_top1``."""
    lost = _group_sums(plain_top1, groups) - _group_sums(top1, groups)
    return np.rint(lost).astype(np.int64).max(axis=-1)


def _grid_stats(cos, ok, terms, names, combos, plain_top1, groups, batch: int = 256):
    """Macro top-1, macro reciprocal rank and worst species loss of every weighting in ``combos [B, n]``."""
    stacked = np.stack([terms[n] for n in names]) if names else np.zeros((0, *cos.shape))  # [n, Q, K]
    out = []
    for start in range(0, len(combos), batch):
        w = combos[start : start + batch]
        fused = cos[None] + np.tensordot(w, stacked, axes=1)  # [b, Q, K]
        top1, rr = _top1_rr(fused, ok[None])
        out.append((*_macro(top1, rr, groups), _worst_species_loss(top1, plain_top1, groups)))
    return tuple(np.concatenate(parts) for parts in zip(*out, strict=True))


def _best_admissible(top1s, rrs, combos, worst, max_species_loss) -> int | None:
    """The index of the best weighting by (top-1, reciprocal rank, smaller weight sum, earlier in the grid) among
    those within ``max_species_loss`` (None: all); None when none is."""
    rows = np.flatnonzero(
        np.ones(len(combos), dtype=bool) if max_species_loss is None else worst <= max_species_loss
    )
    if len(rows) == 0:
        return None
    order = np.lexsort((rows, combos[rows].sum(axis=1), -rrs[rows], -top1s[rows]))
    return int(rows[order[0]])


def fit_score_fusion(
    cosine,
    scores: Mapping[str, np.ndarray],
    correct,
    species: Sequence | None = None,
    *,
    grid: Sequence[float] = GRID,
    scales: Sequence[float] = DEFAULT_SCALES,
    max_species_loss: int | None = None,
    **fields: Any,
) -> ScoreFusion:
    """Fit one weight per score (and SIFT's scale) on validation shortlists: ``cosine`` [Q, K] (padding -inf),
    ``scores`` name -> [Q, K], ``correct`` [Q, K] bool, ``species`` [Q]; ``max_species_loss``: the most validation
    queries any species may lose net (None: no limit). Extra keyword arguments become fields."""
    cos = np.asarray(cosine, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    if cos.ndim != 2 or ok.shape != cos.shape or cos.shape[0] == 0:
        raise ValueError(
            f"cosine and correct must be one non-empty [Q, K] shape, got {cos.shape}, {ok.shape}"
        )
    names = [n for n in SCORE_NAMES if n in scores]
    sp = np.array(["all"] * len(cos) if species is None else [str(s) for s in species], dtype=object)
    groups = [np.flatnonzero(sp == s) for s in sorted(set(sp.tolist()))]
    plain_top1, plain_rr = _top1_rr(cos, ok)
    plain = tuple(float(x) for x in _macro(plain_top1, plain_rr, groups))
    best = (plain, 0.0, {n: 0.0 for n in names}, float(scales[0]))
    combos = np.array(list(itertools.product(sorted(grid), repeat=len(names))), dtype=np.float64)
    for scale in scales if "sift" in names else scales[:1]:
        terms = _bonus_terms({n: scores[n] for n in names}, float(scale))
        top1s, rrs, worst = _grid_stats(cos, ok, terms, names, combos, plain_top1, groups)
        i = _best_admissible(top1s, rrs, combos, worst, max_species_loss)
        if i is None:
            continue
        cand, combo = (float(top1s[i]), float(rrs[i])), [float(w) for w in combos[i]]
        if (cand, -sum(combo)) > (best[0], -best[1]):
            best = (cand, sum(combo), dict(zip(names, combo, strict=True)), float(scale))
    (top1, mrr), _, weights, scale = best
    if top1 <= plain[0]:  # ties on top-1 won on the reciprocal rank only: the cosine alone
        weights = {n: 0.0 for n in names}
    curve = {"validation_top1_cosine": plain[0], "validation_top1_fused": top1, "validation_mrr_fused": mrr}
    n_queries = {s: int((sp == s).sum()) for s in sorted(set(sp.tolist()))}
    return ScoreFusion(
        weights,
        scale,
        True,
        cos.shape[1],
        curve=curve,
        n_queries=n_queries,
        max_species_loss=max_species_loss,
        **fields,
    )
