"""Matching a season's encounters against a catalogue of known individuals, viewpoint-aware.

Per annotation, the catalogue's best individuals by cosine similarity (an individual scores the best of its photos),
searched only among catalogue photos of the annotation's species (a photo or annotation without a species meets
every one) and of a **compatible viewpoint**
(:class:`ViewpointTable`: a left flank is never compared with a right flank; front, back, top and unknown
viewpoints are compared with every one). Per **encounter**, the candidates of its annotations are pooled, each
annotation is scored exactly against each pooled individual, and the scores are fused by a rule (:data:`RULES`;
:func:`fuse`), so an encounter showing both flanks links them: the left-flank photos match a left-flank catalogue
photo, the right-flank ones are not compared with it (no score rather than a low one), and every annotation of the
encounter gets the encounter's decision (:mod:`animal_reid.season.decisions`).

**Two annotations in one photo are two animals**: :func:`match_encounters` first splits an encounter holding
several annotations of one photo into one track per animal
(:func:`animal_reid.season.encounters.split_same_photo`), and the decisions never give one known individual to two
sub-encounters sharing a photo (:func:`animal_reid.season.decisions.decide`).

Search: :class:`MatchCatalogue` keeps one group of rows per (species, viewpoint); a group is searched with one numpy
product per chunk of queries below :data:`NUMPY_MAX` rows and with :class:`animal_reid.search.GalleryIndex` (exact,
or faiss IVF past its ``AUTO_EXACT_MAX``) above. Memory is bounded by the chunks: no season-by-catalogue or
season-by-season matrix is ever formed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .annotations import Annotation
from .encounters import split_same_photo

__all__ = [
    "DEFAULT_VIEWPOINTS",
    "NUMPY_MAX",
    "RULES",
    "EncounterMatch",
    "MatchCatalogue",
    "ViewpointTable",
    "fuse",
    "match_encounters",
    "rank",
]

RULES = ("max", "mean", "top2mean", "vote")
#: catalogue rows of one (species, viewpoint) group searched with numpy; above: GalleryIndex
NUMPY_MAX = 50_000
_BLOCK = 1 << 22  # score-block entries (floats) computed at once


@dataclass(frozen=True)
class ViewpointTable:
    """Which viewpoints may be compared: each pair in ``incompatible`` never is (either order).

    Names are compared lower-case, and a pair's names match inside compound viewpoints: with the default
    ``(("left", "right"),)`` ``frontleft``, ``upleft`` or ``left`` is never compared with ``right`` or
    ``backright``. An unknown viewpoint (None, empty) is compatible with every one, and equal names always are.
    """

    incompatible: tuple[tuple[str, str], ...] = (("left", "right"),)

    @classmethod
    def parse(cls, spec: str) -> ViewpointTable:
        """``"left:right,front:back"`` -> the table with those incompatible pairs (``""``: all compatible)."""
        pairs = []
        for part in (p.strip() for p in spec.split(",")):
            names = [n.strip().lower() for n in part.split(":")] if part else []
            if part and (len(names) != 2 or not all(names)):
                raise ValueError(f"viewpoint pair {part!r} is not two names a:b (e.g. left:right)")
            if part:
                pairs.append((names[0], names[1]))
        return cls(tuple(pairs))

    def compatible(self, a: str | None, b: str | None) -> bool:
        a, b = (a or "").strip().lower(), (b or "").strip().lower()
        if not a or not b or a == b:
            return True
        return not any((x in a and y in b) or (y in a and x in b) for x, y in self.incompatible)

    def matrix(self, a: Sequence[str | None], b: Sequence[str | None]) -> np.ndarray:
        """``[len(a), len(b)]`` booleans: may ``a[i]`` be compared with ``b[j]``."""
        ua, ia = np.unique(np.asarray([v or "" for v in a], dtype=object).astype(str), return_inverse=True)
        ub, ib = np.unique(np.asarray([v or "" for v in b], dtype=object).astype(str), return_inverse=True)
        small = np.array([[self.compatible(x, y) for y in ub] for x in ua], dtype=bool).reshape(
            len(ua), len(ub)
        )
        return small[ia.reshape(-1)][:, ib.reshape(-1)]


DEFAULT_VIEWPOINTS = ViewpointTable()


# ---------------------------------------------------------------------------------------------------------------
# fusion
def _vote_counts(scores: np.ndarray) -> np.ndarray:
    filled = np.where(np.isnan(scores), -np.inf, scores)
    voting = np.isfinite(filled).any(axis=1)
    return np.bincount(filled[voting].argmax(axis=1), minlength=scores.shape[1])


def fuse(scores, rule: str = "max") -> np.ndarray:
    """One score per candidate from ``scores`` ``[annotations, candidates]`` (NaN: not compared).

    ``max``: the best annotation's; ``mean``: the mean over the annotations compared; ``top2mean``: the mean of
    the best two (the one where only one was compared); ``vote``: each annotation votes for its best candidate and a
    candidate scores the mean of its voters' scores (no vote: its mean, ranked after every voted one by
    :func:`rank`). NaN where no annotation was compared with the candidate.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be [annotations, candidates], got shape {s.shape}")
    if rule not in RULES:
        raise ValueError(f"fusion rule must be one of {', '.join(RULES)}, got {rule!r}")
    out = np.full(s.shape[1], np.nan)
    seen = ~np.isnan(s).all(axis=0)
    if not seen.any():
        return out
    t = s[:, seen]
    if rule == "max":
        out[seen] = np.nanmax(t, axis=0)
    elif rule == "mean":
        out[seen] = np.nanmean(t, axis=0)
    elif rule == "top2mean":
        top = -np.sort(-np.where(np.isnan(t), -np.inf, t), axis=0)[:2]
        out[seen] = np.where(np.isfinite(top[-1]), top.mean(axis=0), top[0]) if len(top) == 2 else top[0]
    else:
        out = _vote_fused(s, seen)
    return out


def _vote_fused(s: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """``vote``: the mean of a candidate's voters' scores; a candidate without votes, its mean over all."""
    winners = np.where(np.isnan(s), -np.inf, s).argmax(axis=1)
    voted = np.zeros_like(s, dtype=bool)
    rows = np.flatnonzero(~np.isnan(s).all(axis=1))
    voted[rows, winners[rows]] = True
    n = voted.sum(axis=0)
    out = np.full(s.shape[1], np.nan)
    out[n > 0] = np.where(voted, np.nan_to_num(s), 0).sum(axis=0)[n > 0] / n[n > 0]
    out[seen & (n == 0)] = np.nanmean(s[:, seen & (n == 0)], axis=0)
    return out


def rank(scores, rule: str = "max") -> tuple[np.ndarray, np.ndarray]:
    """``(order, fused)``: candidates best first (never-compared ones left out) and the fused scores.

    Candidates rank by fused score; under ``vote`` by votes first, then fused score; ties by candidate index.
    """
    s = np.asarray(scores, dtype=np.float64)
    fused = fuse(s, rule)
    keep = np.flatnonzero(~np.isnan(fused))
    votes = _vote_counts(s)[keep] if rule == "vote" else np.zeros(len(keep))
    order = keep[np.lexsort((keep, -fused[keep], -votes))]
    return order, fused


# ---------------------------------------------------------------------------------------------------------------
# catalogue
def _species_ok(query: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``[Q, R]``: a query may meet a row when either species is unknown or they are equal."""
    q, r = query[:, None], rows[None, :]
    return (q == "") | (r == "") | (q == r)


class MatchCatalogue:
    """The known individuals' photos: unit embeddings, identities, species and viewpoints, ready to search.

    ``viewpoints=None`` or ``table=None``: viewpoint-blind. Species and viewpoints may be None per row (unknown).
    """

    def __init__(self, embeddings, identities, species=None, viewpoints=None, table=DEFAULT_VIEWPOINTS):
        emb = np.asarray(embeddings, dtype=np.float32)
        n = len(identities)
        if emb.ndim != 2 or emb.shape[0] != n or n == 0:
            raise ValueError(
                f"the catalogue needs [N, D] embeddings, one per identity (N >= 1), got {emb.shape}"
            )
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        self.embeddings = emb / np.where(norms > 0, norms, 1.0)
        self.identities = np.asarray([str(i) for i in identities], dtype=object)
        self.species = _strings(species, n, "species")
        self.viewpoints = _strings(viewpoints if table is not None else None, n, "viewpoints")
        self.table = table if table is not None else ViewpointTable(())
        self.names, codes = np.unique(self.identities.astype(str), return_inverse=True)
        self.codes = codes.reshape(-1)
        order = np.argsort(self.codes, kind="stable")
        bounds = np.searchsorted(self.codes[order], np.arange(len(self.names) + 1))
        self.rows_of = {name: order[bounds[j] : bounds[j + 1]] for j, name in enumerate(self.names)}
        self.groups: dict[tuple[str, str], np.ndarray] = defaultdict(list)
        for i, key in enumerate(zip(self.species, self.viewpoints, strict=True)):
            self.groups[key].append(i)
        self.groups = {k: np.asarray(v, dtype=np.int64) for k, v in self.groups.items()}
        self._indexes: dict[tuple[str, str], object] = {}

    def __len__(self) -> int:
        return len(self.identities)

    def _group_top(self, key: tuple[str, str], q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [Q, k], catalogue rows [Q, k])`` of the group's best rows (-inf / -1 padding)."""
        rows = self.groups[key]
        k = min(k, len(rows))
        if len(rows) > NUMPY_MAX:
            from ..search import GalleryIndex

            if key not in self._indexes:
                self._indexes[key] = GalleryIndex.build(self.embeddings[rows], method="auto")
            s, i = self._indexes[key].search(q, k)
            return s, np.where(i >= 0, rows[np.maximum(i, 0)], -1)
        g = self.embeddings[rows]
        out_s, out_i = np.empty((len(q), k), np.float32), np.empty((len(q), k), np.int64)
        step = max(1, _BLOCK // max(1, len(rows)))
        for a in range(0, len(q), step):
            sims = q[a : a + step] @ g.T
            top = (
                np.argpartition(-sims, k - 1, axis=1)[:, :k]
                if k < len(rows)
                else np.tile(np.arange(k), (len(sims), 1))
            )
            out_s[a : a + step] = np.take_along_axis(sims, top, 1)
            out_i[a : a + step] = rows[top]
        return out_s, out_i

    def _compatible_groups(self, species: str, viewpoint: str) -> list[tuple[str, str]]:
        return [
            key for key in self.groups
            if (not species or not key[0] or key[0] == species) and self.table.compatible(viewpoint, key[1])
        ]  # fmt: skip

    def candidates(
        self, embeddings, species=None, viewpoints=None, k: int = 10
    ) -> list[list[tuple[str, float]]]:
        """Per query row, its ``k`` best individuals ``(identity, score)``, best first (fewer when fewer compare)."""
        q = np.asarray(embeddings, dtype=np.float32)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        sp, vp = _strings(species, len(q), "species"), _strings(viewpoints, len(q), "viewpoints")
        out: list[list[tuple[str, float]]] = [[] for _ in range(len(q))]
        by_key: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i, key in enumerate(zip(sp, vp, strict=True)):
            by_key[key].append(i)
        for (s, v), members in by_key.items():
            groups = self._compatible_groups(s, v)
            todo, k_img = np.asarray(members), max(50, 10 * k)
            while len(todo):
                hits = [self._group_top(g, q[todo], k_img) for g in groups]
                truncated = any(k_img < len(self.groups[g]) for g in groups)  # a wider search may find more
                again = []
                for j, qi in enumerate(todo):
                    best = _best_per_individual(self.identities, [(h[0][j], h[1][j]) for h in hits])
                    if len(best) < k and truncated:
                        again.append(qi)
                    else:
                        out[qi] = best[:k]
                todo, k_img = np.asarray(again, dtype=np.int64), 4 * k_img
        return out

    def individual_scores(
        self, embeddings, individuals: Sequence[str], species=None, viewpoints=None
    ) -> np.ndarray:
        """``[rows, individuals]`` exact best cosine of each query row over each individual's compatible photos
        (NaN where the individual has none of the row's species and a compatible viewpoint)."""
        q = np.asarray(embeddings, dtype=np.float32)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        sp, vp = _strings(species, len(q), "species"), _strings(viewpoints, len(q), "viewpoints")
        parts = [self.rows_of[name] for name in individuals]
        if not parts:
            return np.zeros((len(q), 0))
        rows = np.concatenate(parts)
        sims = (q @ self.embeddings[rows].T).astype(np.float64)
        ok = _species_ok(sp, self.species[rows]) & self.table.matrix(vp, self.viewpoints[rows])
        sims = np.where(ok, sims, -np.inf)
        starts = np.cumsum([0] + [len(p) for p in parts[:-1]])
        best = np.maximum.reduceat(sims, starts, axis=1)
        return np.where(np.isfinite(best), best, np.nan)


def _strings(values, n: int, what: str) -> np.ndarray:
    if values is None:
        return np.full(n, "", dtype=object)
    if len(values) != n:
        raise ValueError(f"{what} has {len(values)} entries, expected {n} (one per row)")
    return np.asarray(["" if v is None else str(v) for v in values], dtype=object)


def _best_per_individual(identities: np.ndarray, hits) -> list[tuple[str, float]]:
    scores = np.concatenate([h[0] for h in hits]) if hits else np.zeros(0)
    rows = np.concatenate([h[1] for h in hits]) if hits else np.zeros(0, np.int64)
    keep = (rows >= 0) & np.isfinite(scores)
    scores, rows = scores[keep], rows[keep]
    order = np.lexsort((rows, -scores))
    best: dict[str, float] = {}
    for r in order:
        best.setdefault(identities[rows[r]], float(scores[r]))
    return list(best.items())


# ---------------------------------------------------------------------------------------------------------------
# encounters
@dataclass
class EncounterMatch:
    """One (sub-)encounter's candidates: fused scores, best first, and each annotation's score for each."""

    encounter: str
    species: str | None
    annotation_ids: list[str]
    photos: list[str]
    candidates: list[tuple[str, float]]  # (individual, fused score), best first
    scores: np.ndarray = field(repr=False)  # [annotations, candidates]; NaN: not compared (viewpoint)
    rule: str = "max"

    @property
    def best(self) -> tuple[str | None, float | None]:
        return self.candidates[0] if self.candidates else (None, None)


def match_encounters(
    annotations: Sequence[Annotation],
    embeddings,
    catalogue: MatchCatalogue,
    rule: str = "max",
    k: int = 5,
    shortlist: int = 10,
) -> list[EncounterMatch]:
    """Each (sub-)encounter of ``annotations`` (encounters set, e.g. by
    :func:`~animal_reid.season.encounters.group_encounters`) matched against ``catalogue``: the ``k`` best
    individuals by the fused scores of the union of its annotations' ``shortlist`` best individuals."""
    if rule not in RULES:
        raise ValueError(f"fusion rule must be one of {', '.join(RULES)}, got {rule!r}")
    if k < 1 or shortlist < 1:
        raise ValueError(f"k and shortlist must be >= 1, got {k} and {shortlist}")
    emb = np.asarray(embeddings, dtype=np.float32)
    anns = split_same_photo(annotations, emb)
    species = [a.species for a in anns]
    views = [a.viewpoint for a in anns]
    per_ann = catalogue.candidates(emb, species, views, k=max(k, shortlist))
    groups: dict[str, list[int]] = defaultdict(list)
    for i, a in enumerate(anns):
        groups[a.encounter].append(i)
    out = []
    for enc, idx in groups.items():
        names = list(dict.fromkeys(name for i in idx for name, _ in per_ann[i]))
        scores = catalogue.individual_scores(
            emb[idx], names, [species[i] for i in idx], [views[i] for i in idx]
        )
        order, fused = rank(scores, rule) if names else (np.zeros(0, np.int64), np.zeros(0))
        top = order[:k]
        out.append(
            EncounterMatch(
                encounter=enc,
                species=anns[idx[0]].species,
                annotation_ids=[anns[i].annotation_id for i in idx],
                photos=list(dict.fromkeys(anns[i].photo for i in idx)),
                candidates=[(names[j], float(fused[j])) for j in top],
                scores=scores[:, top] if names else np.zeros((len(idx), 0)),
                rule=rule,
            )
        )
    return out
