"""Open-set re-identification: decide "new individual" when a query's best gallery match is too far.

The decision is a threshold on the best-match cosine similarity: a query whose best score is below the threshold
is a new individual (``NEW_INDIVIDUAL``), otherwise it takes the identity of its best match. Thresholds are
calibrated on validation queries whose status is known (their identity is in the gallery or not), per species
where a species has enough known and unknown validation queries, with a global fallback.

Figures, as in AnimalCLEF 2025:

* **BAKS**, balanced accuracy on known samples: over queries whose identity is in the gallery, the accuracy of
  the predicted identity (``NEW_INDIVIDUAL`` counts as wrong) per true identity, averaged over identities.
* **BAUS**, balanced accuracy on unknown samples: over queries whose identity is not in the gallery, the rate of
  ``NEW_INDIVIDUAL`` per true identity, averaged over identities.
* their geometric mean ``sqrt(BAKS * BAUS)`` (AnimalCLEF's score, averaged over datasets/species there);
* **AUROC** of the new-individual score (``-best_score``) for telling unknown queries from known ones.

Plain (not balanced) accuracies on known and unknown queries are reported beside them.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .metrics import cosine_topk

logger = logging.getLogger(__name__)

__all__ = [
    "NEW_INDIVIDUAL",
    "best_matches",
    "predict_open_set",
    "baks",
    "baus",
    "auroc",
    "open_set_report",
    "calibrate_threshold",
    "OpenSetThreshold",
    "open_set_split",
    "gallery_queries",
    "same_encounter",
]

NEW_INDIVIDUAL = "new_individual"


def best_matches(query_embeddings, gallery_embeddings, gallery_labels, chunk_size: int | None = None):
    """Best gallery match of each query: ``(best_score [Q] float, best_label [Q] object, best_index [Q] int)``."""
    if len(gallery_labels) != len(gallery_embeddings):
        raise ValueError(
            f"gallery_labels has {len(gallery_labels)} entries, expected {len(gallery_embeddings)} (one per row)"
        )
    scores, idx = cosine_topk(query_embeddings, gallery_embeddings, 1, chunk_size=chunk_size)
    labels = np.asarray(gallery_labels, dtype=object)
    return scores[:, 0].astype(np.float64), labels[idx[:, 0]], idx[:, 0]


def predict_open_set(best_scores, best_labels, threshold: float | np.ndarray) -> np.ndarray:
    """Best-match identity, or ``NEW_INDIVIDUAL`` where ``best_score < threshold`` (scalar or one per query)."""
    s = np.asarray(best_scores, dtype=np.float64)
    out = np.asarray(best_labels, dtype=object).copy()
    out[s < np.asarray(threshold, dtype=np.float64)] = NEW_INDIVIDUAL
    return out


def _balanced_rate(groups: np.ndarray, correct: np.ndarray) -> float:
    if groups.size == 0:
        return float("nan")
    _, inv = np.unique(groups.astype(str), return_inverse=True)
    per_group = np.bincount(inv, weights=correct.astype(np.float64)) / np.bincount(inv)
    return float(per_group.mean())


def baks(y_true, y_pred, unknown_identities) -> float:
    """Balanced accuracy on known samples (NaN when there are none)."""
    t, p = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    known = ~np.isin(t, np.asarray(list(unknown_identities), dtype=object))
    return _balanced_rate(t[known], t[known] == p[known])


def baus(y_true, y_pred, unknown_identities, new_class=NEW_INDIVIDUAL) -> float:
    """Balanced accuracy on unknown samples: rate of ``new_class`` per unknown identity, averaged (NaN if none)."""
    t, p = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    unknown = np.isin(t, np.asarray(list(unknown_identities), dtype=object))
    return _balanced_rate(t[unknown], p[unknown] == new_class)


def auroc(is_positive, score) -> float:
    """Area under the ROC curve of ``score`` for ``is_positive`` (Mann-Whitney U, ties count half).

    NaN when either class is empty.
    """
    y = np.asarray(is_positive, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # average ranks over ties
    uniq, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _report(y_true, y_pred, best_scores, is_unknown) -> dict:
    t = np.asarray(y_true, dtype=object)
    p = np.asarray(y_pred, dtype=object)
    unk = np.asarray(is_unknown, dtype=bool)
    unknown_ids = set(t[unk].tolist())
    b_k = baks(t, p, unknown_ids)
    b_u = baus(t, p, unknown_ids)
    known = ~unk
    out = {
        "BAKS": _none_if_nan(b_k),
        "BAUS": _none_if_nan(b_u),
        "geometric_mean": _none_if_nan(math.sqrt(b_k * b_u))
        if not (math.isnan(b_k) or math.isnan(b_u))
        else None,
        "AUROC": _none_if_nan(auroc(unk, -np.asarray(best_scores, dtype=np.float64))),
        "accuracy_known": _none_if_nan(float(np.mean(t[known] == p[known])) if known.any() else float("nan")),
        "accuracy_unknown": _none_if_nan(
            float(np.mean(p[unk] == NEW_INDIVIDUAL)) if unk.any() else float("nan")
        ),
        "n_known": int(known.sum()),
        "n_unknown": int(unk.sum()),
    }
    return out


def _none_if_nan(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def open_set_report(y_true, y_pred, best_scores, is_unknown, species=None) -> dict:
    """Open-set figures (BAKS, BAUS, geometric mean, AUROC, plain accuracies), overall and per species.

    ``is_unknown[i]`` says query ``i``'s identity is absent from the gallery. With ``species``, the top level also
    holds ``mean_geometric_mean``, the AnimalCLEF score: the per-species geometric means averaged (a species
    with no known or no unknown queries counts as 0 there, as in AnimalCLEF).
    """
    n = len(y_true)
    for name, arr in (("y_pred", y_pred), ("best_scores", best_scores), ("is_unknown", is_unknown)):
        if len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} entries, expected {n} (one per query)")
    out = _report(y_true, y_pred, best_scores, is_unknown)
    if species is not None:
        if len(species) != n:
            raise ValueError(f"species has {len(species)} entries, expected {n} (one per query)")
        sp = np.asarray(species, dtype=object)
        t, p, s, u = (np.asarray(a, dtype=object) for a in (y_true, y_pred, best_scores, is_unknown))
        per = {}
        for name in sorted(set(sp.tolist()), key=str):
            m = sp == name
            per[str(name)] = _report(t[m], p[m], s[m].astype(np.float64), u[m].astype(bool))
        out["per_species"] = per
        out["mean_geometric_mean"] = float(np.mean([r["geometric_mean"] or 0.0 for r in per.values()]))
    return out


def calibrate_threshold(best_scores, best_labels, true_labels, is_unknown) -> tuple[float, float]:
    """Threshold maximising ``sqrt(BAKS * BAUS)`` on validation queries; returns ``(threshold, objective)``.

    Candidates are the midpoints between consecutive distinct best scores and points just outside their range;
    among equal objectives the middle of the best run of candidates is taken, which keeps the threshold away
    from the scores it separates.
    """
    s = np.asarray(best_scores, dtype=np.float64)
    t = np.asarray(true_labels, dtype=object)
    b = np.asarray(best_labels, dtype=object)
    unk = np.asarray(is_unknown, dtype=bool)
    if not (len(s) == len(t) == len(b) == len(unk)):
        raise ValueError(
            f"lengths differ: best_scores {len(s)}, best_labels {len(b)}, true_labels {len(t)}, is_unknown {len(unk)}"
        )
    if not unk.any() or unk.all():
        raise ValueError(
            f"calibration needs both known and unknown queries, got {int((~unk).sum())} known and {int(unk.sum())} unknown"
        )
    # per-sample weights: 1 / (number of identities in the group * images of this identity)
    w = np.zeros(len(s))
    for group in (unk, ~unk):
        _, inv, counts = np.unique(t[group].astype(str), return_inverse=True, return_counts=True)
        w[group] = 1.0 / (len(counts) * counts[inv])
    known_ok = (~unk) & (b == t)
    uniq = np.unique(s)
    eps = 1e-6
    cands = np.concatenate([[uniq[0] - eps], (uniq[:-1] + uniq[1:]) / 2.0, [uniq[-1] + eps]])
    # BAKS(c) = sum of w over correct known queries with s >= c; BAUS(c) = sum of w over unknown with s < c
    ks, kw = s[known_ok], w[known_ok]
    order = np.argsort(ks)
    ks, kw = ks[order], kw[order]
    k_suffix = np.concatenate([np.cumsum(kw[::-1])[::-1], [0.0]])
    baks_c = k_suffix[np.searchsorted(ks, cands, side="left")]
    us, uw = s[unk], w[unk]
    order = np.argsort(us)
    us, uw = us[order], uw[order]
    u_prefix = np.concatenate([[0.0], np.cumsum(uw)])
    baus_c = u_prefix[np.searchsorted(us, cands, side="left")]
    obj = np.sqrt(np.clip(baks_c, 0, None) * np.clip(baus_c, 0, None))
    best = obj.max()
    winners = np.flatnonzero(np.isclose(obj, best, rtol=0, atol=1e-12))
    # the longest run of consecutive winners, its middle candidate
    runs = np.split(winners, np.flatnonzero(np.diff(winners) > 1) + 1)
    run = max(runs, key=len)
    return float(cands[run[len(run) // 2]]), float(best)


def same_encounter(query_encounters, gallery_encounters) -> np.ndarray:
    """``[Q, G]`` mask: query and gallery image share an encounter id (``None`` shares nothing)."""
    q = np.asarray(query_encounters, dtype=object)[:, None]
    return (q == np.asarray(gallery_encounters, dtype=object)[None, :]) & (q != None)  # noqa: E711


def gallery_queries(
    embeddings,
    labels,
    species=None,
    encounters=None,
    max_queries_per_species: int | None = 5000,
    seed: int = 0,
    chunk_size: int = 256,
) -> dict:
    """Open-set queries simulated from a labelled gallery alone, to calibrate without held-out queries.

    Within its species, every image (a seeded sample of ``max_queries_per_species`` where there are more, which
    bounds the cost to that many rows against the whole gallery) queries the rest of the gallery twice: as a *known*
    query (itself and images of its encounter removed; kept only when another image of its identity remains) and as
    an *unknown* query (its whole identity removed; kept when another identity remains). Embeddings are
    L2-normalised rows. Returns arrays over simulated queries, ready for :meth:`OpenSetThreshold.fit`: best_score,
    best_label, true, unknown, species.
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    lab = np.asarray(labels, dtype=object).astype(str)
    n = len(lab)
    if emb.ndim != 2 or len(emb) != n:
        raise ValueError(f"embeddings must be [N, D] with one row per label, got {emb.shape} for {n} labels")
    spc = np.asarray(species if species is not None else [""] * n, dtype=object).astype(str)
    enc = np.asarray(encounters if encounters is not None else [None] * n, dtype=object)
    if len(spc) != n or len(enc) != n:
        raise ValueError(f"species and encounters need one entry per label ({n})")
    out: dict[str, list] = {k: [] for k in ("best_score", "best_label", "true", "unknown", "species")}
    rng = np.random.default_rng(seed)
    for sp in sorted(set(spc.tolist())):
        idx = np.flatnonzero(spc == sp)
        queries = idx
        if max_queries_per_species is not None and len(idx) > max_queries_per_species:
            queries = np.sort(rng.choice(idx, size=max_queries_per_species, replace=False))
        for start in range(0, len(queries), chunk_size):
            rows = queries[start : start + chunk_size]
            sims = emb[rows] @ emb[idx].T
            same_id = lab[rows][:, None] == lab[idx][None, :]
            same_enc = same_encounter(enc[rows], enc[idx]) | (rows[:, None] == idx[None, :])
            for unknown, mask in ((False, same_enc), (True, same_id)):
                masked = np.where(mask, -np.inf, sims)
                best = masked.argmax(axis=1)
                score = masked[np.arange(len(rows)), best]
                keep = np.isfinite(score)
                if not unknown:
                    keep &= (same_id & ~same_enc).any(axis=1)
                out["best_score"] += score[keep].astype(np.float64).tolist()
                out["best_label"] += lab[idx][best[keep]].tolist()
                out["true"] += lab[rows][keep].tolist()
                out["unknown"] += [unknown] * int(keep.sum())
                out["species"] += [sp] * int(keep.sum())
    return {
        k: np.asarray(v, dtype=object if k in ("best_label", "true", "species") else None)
        for k, v in out.items()
    }


@dataclass
class OpenSetThreshold:
    """Calibrated new-individual thresholds: one global, optionally one per species.

    Optionally a second, higher threshold per species, ``known_above`` (decision bands,
    :class:`animal_reid.season.decisions.Bands`): a best score at or above it is *known*, one below the
    new-individual threshold is *new*, one between the two is *unsure* (:meth:`decision`). Without it a score is
    known or new. Files without ``known_above`` (every file written before it existed) load unchanged, and files
    without one are written as before.
    """

    global_threshold: float
    per_species: dict[str, float] = field(default_factory=dict)
    objective: str = "geometric_mean_BAKS_BAUS"
    calibration: dict = field(default_factory=dict)
    known_above: float | None = None
    known_above_per_species: dict[str, float] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        best_scores,
        best_labels,
        true_labels,
        is_unknown,
        species=None,
        min_per_species: int = 20,
    ) -> OpenSetThreshold:
        """Calibrate on validation queries; a species gets its own threshold when it has at least
        ``min_per_species`` known and as many unknown queries, otherwise it uses the global one."""
        s = np.asarray(best_scores, dtype=np.float64)
        b = np.asarray(best_labels, dtype=object)
        t = np.asarray(true_labels, dtype=object)
        u = np.asarray(is_unknown, dtype=bool)
        thr, obj = calibrate_threshold(s, b, t, u)
        info = {
            "global": {
                "threshold": thr,
                "objective": obj,
                "n_known": int((~u).sum()),
                "n_unknown": int(u.sum()),
            }
        }
        per: dict[str, float] = {}
        if species is not None:
            sp = np.asarray(species, dtype=object)
            if len(sp) != len(s):
                raise ValueError(f"species has {len(sp)} entries, expected {len(s)} (one per query)")
            for name in sorted(set(sp.tolist()), key=str):
                m = sp == name
                nk, nu = int((~u[m]).sum()), int(u[m].sum())
                if nk >= min_per_species and nu >= min_per_species:
                    st, so = calibrate_threshold(s[m], b[m], t[m], u[m])
                    per[str(name)] = st
                    info[str(name)] = {"threshold": st, "objective": so, "n_known": nk, "n_unknown": nu}
                else:
                    logger.info(
                        "species %s: %d known / %d unknown validation queries (< %d): global threshold",
                        name,
                        nk,
                        nu,
                        min_per_species,
                    )
        return cls(global_threshold=thr, per_species=per, calibration=info)

    @classmethod
    def fit_gallery(
        cls, embeddings, labels, species=None, encounters=None, min_per_species: int = 20
    ) -> OpenSetThreshold:
        """Calibrate on queries simulated from a labelled gallery (:func:`gallery_queries`): no held-out queries
        needed, and each species with enough images gets a threshold fitted to its own gallery."""
        q = gallery_queries(embeddings, labels, species, encounters)
        if len(q["true"]) == 0:
            raise ValueError(
                "the gallery gives no calibration queries: it needs two identities of one species"
            )
        thr = cls.fit(
            q["best_score"], q["best_label"], q["true"], q["unknown"],
            q["species"] if species is not None else None, min_per_species=min_per_species,
        )  # fmt: skip
        thr.calibration["source"] = "gallery"
        return thr

    def threshold_for(self, species: str | None) -> float:
        if species is not None and str(species) in self.per_species:
            return self.per_species[str(species)]
        return self.global_threshold

    def thresholds(self, species: Sequence | None, n: int) -> np.ndarray:
        if species is None:
            return np.full(n, self.global_threshold)
        return np.array([self.threshold_for(s) for s in species], dtype=np.float64)

    def predict(self, best_scores, best_labels, species=None) -> np.ndarray:
        return predict_open_set(best_scores, best_labels, self.thresholds(species, len(best_scores)))

    def known_above_for(self, species: str | None) -> float:
        """The score from which a match is *known* (the new-individual threshold where no band is set)."""
        if species is not None and str(species) in self.known_above_per_species:
            return self.known_above_per_species[str(species)]
        if self.known_above is not None and (species is None or str(species) not in self.per_species):
            return self.known_above
        return self.threshold_for(species)

    def decision(self, best_score: float | None, species: str | None = None) -> str:
        """``"new"`` below the new-individual threshold, ``"known"`` from ``known_above``, ``"unsure"`` between."""
        if best_score is None or math.isnan(best_score) or best_score < self.threshold_for(species):
            return "new"
        return (
            "known"
            if best_score >= max(self.known_above_for(species), self.threshold_for(species))
            else "unsure"
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.known_above is None and not self.known_above_per_species:
            del d["known_above"], d["known_above_per_species"]  # as written before bands existed
        return d

    @classmethod
    def from_dict(cls, d: dict) -> OpenSetThreshold:
        if "global_threshold" not in d:
            raise ValueError(f"an open-set threshold dict needs 'global_threshold', got keys {sorted(d)}")
        keys = (
            "global_threshold",
            "per_species",
            "objective",
            "calibration",
            "known_above",
            "known_above_per_species",
        )
        return cls(**{k: d[k] for k in keys if k in d and d[k] is not None})

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | os.PathLike) -> OpenSetThreshold:
        return cls.from_dict(json.loads(Path(path).read_text()))


def open_set_split(labels, unknown_fraction: float = 0.3, queries_per_known: int = 1, seed: int = 0):
    """Split labelled images into an open-set gallery and queries, seeded.

    A fraction of the identities (rounded, at least one when there are two or more) becomes unknown: all their
    images are queries. Each known identity with at least two images gives ``queries_per_known`` images
    (at most all but one) to the queries and keeps the rest in the gallery. Returns boolean masks
    ``(is_gallery, is_query, is_unknown)``; ``is_unknown`` is True only on queries of unknown identities.
    """
    if not 0.0 < unknown_fraction < 1.0:
        raise ValueError(f"unknown_fraction must be in (0, 1), got {unknown_fraction}")
    lab = np.asarray(labels, dtype=object).astype(str)
    ids = np.unique(lab)
    rng = np.random.default_rng(seed)
    n_unknown = int(round(unknown_fraction * len(ids)))
    if len(ids) >= 2:
        n_unknown = min(max(1, n_unknown), len(ids) - 1)
    unknown_ids = set(rng.choice(ids, size=n_unknown, replace=False).tolist()) if n_unknown else set()
    is_gallery = np.zeros(len(lab), dtype=bool)
    is_query = np.zeros(len(lab), dtype=bool)
    is_unknown = np.zeros(len(lab), dtype=bool)
    for ident in ids:
        idx = np.flatnonzero(lab == ident)
        if ident in unknown_ids:
            is_query[idx] = True
            is_unknown[idx] = True
            continue
        idx = rng.permutation(idx)
        nq = min(queries_per_known, len(idx) - 1)
        is_query[idx[:nq]] = True
        is_gallery[idx[nq:]] = True
    return is_gallery, is_query, is_unknown
