"""Fusion of the global cosine with the verified local-match count, fitted on validation queries.

    fused = cosine + weight[species] * inliers / (inliers + scale)          (inliers < 0: not verified -> cosine)

:func:`fit_fusion` picks ``scale`` and a global ``weight`` maximising the species-averaged top-1 of the re-ranked
shortlist on validation queries (ties: higher mean reciprocal rank of the first true match, then the smaller
weight), then each species with at least ``min_per_species`` validation queries gets its own best weight. A weight
above 0 (global or per species) must raise validation top-1 over the cosine alone: one that only ties it (won on
the reciprocal-rank tie-break) falls back to 0. On the 480-dog open split the trained model's dog weight was won
that way (top-1 tied, reciprocal rank up, mAP down 2.2 points) and lost 3 test queries (docs/experiment-log.md, from BENCHMARKS.md §9).
``significance`` < 1 adds a guard: a species then keeps its own weight only where a one-sided sign test of the
queries it puts right against those it puts wrong passes at that level, else 0. It is off by default (1.0): on the
six-species open split it removed every gain of the trained model (cattle, lion and nyala got p 0.12-0.32 from
64-140 validation queries), and ImageNet lion's loss, which it was meant to stop, is not separable on validation
from trained nyala's gain (BENCHMARKS.md §9). The grid includes 0: on the validation data the fusion never does
worse than the cosine alone. The fitted :class:`Fusion`, its top-1-vs-weight curve and the feature settings it was
fitted with are saved as JSON (``rerank_fusion.json`` beside a model or a gallery)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io import write_atomic

FUSION_FILE = "rerank_fusion.json"
DEFAULT_WEIGHTS = tuple(round(0.05 * i, 2) for i in range(41))  # 0 .. 2
DEFAULT_SCALES = (5.0, 10.0, 20.0, 40.0, 80.0)


@dataclass
class Fusion:
    """``fused = cosine + weight_for(species) * inliers / (inliers + scale)``; see the module docstring."""

    weight: float = 1.0
    scale: float = 20.0
    per_species: dict[str, float] = field(default_factory=dict)
    fitted: bool = False
    feature_config: dict | None = None
    shortlist_k: int | None = None
    curve: dict | None = None  # {"weights": [...], "top1": {species: [...]}} at the chosen scale
    n_queries: dict | None = None
    open_set_threshold: dict | None = None  # an OpenSetThreshold fitted on fused scores, if any

    def __post_init__(self):
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"weight must be a finite number >= 0, got {self.weight!r}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a finite number > 0, got {self.scale!r}")
        for sp, w in self.per_species.items():
            if not (math.isfinite(w) and w >= 0):
                raise ValueError(f"weight of species {sp!r} must be a finite number >= 0, got {w!r}")

    def weight_for(self, species: str | None) -> float:
        return (
            float(self.per_species.get(species, self.weight)) if species is not None else float(self.weight)
        )

    def weights(self, species: Sequence | None, n: int) -> np.ndarray:
        if species is None:
            return np.full(n, self.weight, dtype=np.float64)
        return np.array([self.weight_for(s) for s in species], dtype=np.float64)

    def fuse(self, cosine, inliers, species: Sequence | None = None) -> np.ndarray:
        """Fused scores of ``cosine`` [Q, K] (or [K]) and ``inliers`` (same shape; < 0: not verified)."""
        cos = np.asarray(cosine, dtype=np.float64)
        n = np.asarray(inliers, dtype=np.float64)
        if cos.shape != n.shape:
            raise ValueError(f"cosine {cos.shape} and inliers {n.shape} differ in shape")
        bonus = np.where(n > 0, n / (np.maximum(n, 0) + self.scale), 0.0)
        w = self.weights(species, cos.shape[0] if cos.ndim == 2 else 1)
        w = w[:, None] if cos.ndim == 2 else w[0]
        return cos + w * bonus

    def threshold(self):
        """The open-set threshold fitted on fused scores (an ``OpenSetThreshold``), or None."""
        if self.open_set_threshold is None:
            return None
        from animal_reid.openset import OpenSetThreshold

        return OpenSetThreshold.from_dict(self.open_set_threshold)

    def to_dict(self) -> dict[str, Any]:
        return {
            "formula": "cosine + weight[species] * inliers / (inliers + scale)",
            "weight": self.weight,
            "scale": self.scale,
            "per_species": self.per_species,
            "fitted": self.fitted,
            "feature_config": self.feature_config,
            "shortlist_k": self.shortlist_k,
            "curve": self.curve,
            "n_queries": self.n_queries,
            "open_set_threshold": self.open_set_threshold,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fusion:
        keys = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in keys})

    def save(self, path: str | os.PathLike) -> Path:
        return save_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Fusion:
        try:
            d = json.loads(Path(path).read_text())
            if not isinstance(d, dict):
                raise ValueError("not a JSON object")
            return cls.from_dict(d)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: not a re-ranking fusion file ({err})") from err


def save_json(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """``data`` as indented JSON at ``path`` (folders made, written atomically): how fusions are saved."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2).encode()
    write_atomic(p, lambda f: f.write(text))
    return p


def _scores(cos, bonus, correct, w) -> tuple[np.ndarray, np.ndarray]:
    """Per query: top-1 hit (0/1) and reciprocal rank of the first true match in the re-ranked shortlist."""
    fused = cos + w * bonus
    order = np.argsort(-fused, axis=1, kind="stable")
    hits = np.take_along_axis(correct, order, axis=1)
    top1 = hits[:, 0].astype(np.float64)
    has = hits.any(axis=1)
    rr = np.where(has, 1.0 / (hits.argmax(axis=1) + 1.0), 0.0)
    return top1, rr


def fit_fusion(
    cosine,
    inliers,
    correct,
    species: Sequence | None = None,
    *,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    scales: Sequence[float] = DEFAULT_SCALES,
    min_per_species: int = 20,
    significance: float = 1.0,
    **fusion_fields,
) -> Fusion:
    """Fit ``scale`` and the weights on validation shortlists.

    ``cosine`` [Q, K]: global similarities of each validation query's shortlist, best first (padding: -inf);
    ``inliers`` [Q, K]: verified matches (< 0: not verified); ``correct`` [Q, K] bool: the gallery image shows
    the query's individual; ``species`` [Q]. ``significance``: level of the sign test a species' own weight must
    pass against the cosine alone (1, the default: every species keeps its own best weight). Extra keyword arguments become
    fields of the returned Fusion.
    """
    cos = np.asarray(cosine, dtype=np.float64)
    n = np.asarray(inliers, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    if not (cos.shape == n.shape == ok.shape) or cos.ndim != 2:
        raise ValueError(
            f"cosine, inliers, correct must be [Q, K] of one shape, got {cos.shape}, {n.shape}, {ok.shape}"
        )
    if cos.shape[0] == 0:
        raise ValueError("no validation queries to fit the fusion on")
    if not 0 < significance <= 1:
        raise ValueError(f"significance must be in (0, 1], got {significance}")
    if not weights or min(weights) < 0 or not scales or min(scales) <= 0:
        raise ValueError("weights must be >= 0 and scales > 0 (non-empty grids)")
    sp = np.array(["all"] * cos.shape[0] if species is None else [str(s) for s in species], dtype=object)
    names = sorted(set(sp.tolist()))
    groups = {s: np.flatnonzero(sp == s) for s in names}
    weights = sorted(float(w) for w in weights)
    best = None
    per_scale, hits = {}, {}
    for c in scales:
        bonus = np.where(n > 0, n / (np.maximum(n, 0) + c), 0.0)
        table = {s: [] for s in names}  # species -> [(top1, mrr)] per weight
        for w in weights:
            t1, rr = _scores(cos, bonus, ok, w)
            hits[c, w] = t1
            for s, idx in groups.items():
                table[s].append((float(t1[idx].mean()), float(rr[idx].mean())))
        per_scale[c] = table
        for wi, w in enumerate(weights):
            macro = (
                float(np.mean([table[s][wi][0] for s in names])),
                float(np.mean([table[s][wi][1] for s in names])),
            )
            cand = (macro, -w, -c)
            if best is None or cand > best[0]:
                best = (cand, w, c)
    _, w_all, c_best = best
    table = per_scale[c_best]
    w_all = _gain_or_zero(
        w_all, weights, [np.mean([table[s][i][0] for s in names]) for i in range(len(weights))]
    )
    per_species, tests = _species_weights(table, groups, weights, min_per_species, significance, hits, c_best)
    curve = {"weights": weights, "scale": c_best, "top1": {s: [t for t, _ in table[s]] for s in names}}
    curve["sign_tests"] = tests
    fields = {"feature_config": None, "shortlist_k": cos.shape[1], **fusion_fields}
    return Fusion(
        weight=w_all,
        scale=float(c_best),
        per_species=per_species,
        fitted=True,
        curve=curve,
        n_queries={s: int(len(i)) for s, i in groups.items()},
        **fields,
    )


def _species_weights(table, groups, weights, min_per_species, significance, hits, scale):
    """Each species' best weight on its own (top-1, MRR) curve, kept only where a one-sided sign test of its
    per-query top-1 against the grid's smallest weight (0: the cosine alone) passes at ``significance``."""
    out, tests = {}, {}
    for s, idx in groups.items():
        if s == "all" or len(idx) < min_per_species:
            continue
        own = weights[_lexargmax([(t1, rr, -w) for (t1, rr), w in zip(table[s], weights, strict=True)])]
        own = _gain_or_zero(own, weights, [t1 for t1, _ in table[s]])
        fused, plain = hits[scale, own][idx], hits[scale, weights[0]][idx]
        gained, lost = int(((fused > 0) & (plain == 0)).sum()), int(((fused == 0) & (plain > 0)).sum())
        p = sign_test_p(gained, lost)
        out[s] = own if p <= significance else weights[0]  # the grid's smallest weight: 0, the cosine alone
        tests[s] = {"own_weight": own, "gained": gained, "lost": lost, "p": p, "kept": out[s] == own}
    return out, tests


def _gain_or_zero(w: float, weights: list[float], top1: list[float]) -> float:
    """``w``, or the grid's smallest weight (0: the cosine alone) when ``w`` does not raise top-1 above it."""
    return w if top1[weights.index(w)] > top1[0] else weights[0]


def sign_test_p(gained: int, lost: int) -> float:
    """One-sided sign test: P(at least ``gained`` of ``gained + lost`` changed queries go right by chance)."""
    n = gained + lost
    if n == 0:
        return 1.0
    return float(sum(math.comb(n, k) for k in range(gained, n + 1)) / 2**n)


def _lexargmax(rows: list[tuple]) -> int:
    return max(range(len(rows)), key=lambda i: rows[i])


def best_match_in_shortlist(scores, candidate_labels, true_labels, unknown) -> tuple[np.ndarray, np.ndarray]:
    """Best score and label of each query's shortlist; for ``unknown`` queries, their own individual removed.

    This is how a shortlist looks when the query's individual is not in the gallery: the open-set decision
    (new individual or not) is then fitted and scored on the same fused scores that rank the candidates.
    ``scores`` and ``candidate_labels`` are [Q, K]; a query left with no candidate gets score -inf, label None.
    """
    s = np.asarray(scores, dtype=np.float64)
    lab = np.asarray(candidate_labels, dtype=object)
    t = np.asarray(true_labels, dtype=object)
    keep = ~(np.asarray(unknown, dtype=bool)[:, None] & (lab == t[:, None]))
    masked = np.where(keep, s, -np.inf)
    j = masked.argmax(axis=1)
    best = masked[np.arange(len(s)), j]
    labels = np.where(np.isfinite(best), lab[np.arange(len(s)), j], None)
    return best, labels


def unknown_identities(labels, fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """A seeded mask over queries whose individual is treated as absent from the gallery (``fraction`` of them)."""
    t = np.asarray(labels, dtype=object)
    ids = sorted(set(t.tolist()), key=str)
    rng = np.random.default_rng(seed)
    chosen = set(rng.permutation(len(ids))[: int(round(fraction * len(ids)))].tolist())
    out = {ids[i] for i in chosen}
    return np.array([x in out for x in t.tolist()], dtype=bool)
