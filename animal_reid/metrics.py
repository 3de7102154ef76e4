"""Re-identification metrics: CMC top-k and mAP over embeddings, for the two protocols of the field.

Pure functions over L2-normalised embeddings (rows that are not get normalised: scores are cosines), identity
labels, encounter ids and species keys; no model.

Protocols
---------
* **leave-one-out** (the paper's, Otarashvili et al. 2024): within each species, every test image queries
  all the other test images of that species.
* **query vs gallery** (MegaDescriptor's "query vs database"): the test images query a separate gallery
  (the training images), restricted to the query's species by default.

Gallery exclusions follow fast-reid / torchreid: gallery images of the **same identity and the same
encounter** as the query are removed from its gallery (in leave-one-out this removes the query itself; with no
encounter ids only the query itself is removed). Images of other identities from the same encounter stay, as
hard negatives. A query left with no true match in its gallery is counted in ``n_queries_without_match``
and excluded from CMC and mAP, never a crash.

Ties in scores are broken by gallery order (stable sort), the same in the brute-force reference of the tests.

Signature used by the training loop (see docs/CONTRACTS.md, "Metrics")::

    evaluate_reid(embeddings, labels, encounters=None, species=None, *,
                  gallery_embeddings=None, gallery_labels=None, gallery_encounters=None,
                  gallery_species=None, topk=(1, 5, 10), max_rank=20, within_species=True,
                  chunk_size=None, device=None) -> dict

With no ``gallery_*`` it runs leave-one-out; with them, query vs gallery. The dict is JSON-ready::

    {"protocol": "leave_one_out", "top1": 0.62, "top5": 0.81, "top10": 0.86, "mAP": 0.41,
     "cmc": [...max_rank floats...], "n_queries": 500, "n_queries_without_match": 12, "n_species": 2,
     "micro": {"top1": ..., "top5": ..., "top10": ..., "mAP": ...},
     "per_species": {"lion": {"top1": ..., "mAP": ..., "cmc": [...], "n_queries": ...,
                              "n_queries_without_match": ...}, ...}}

``top*``, ``mAP`` and ``cmc`` at the top level are macro averages over the species that have at least one
query with a match; ``micro`` pools all such queries. All figures are fractions in [0, 1] (not percent).
Without ``species`` everything counts as one species, ``"all"``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = [
    "RankingResult",
    "rank_queries",
    "leave_one_out",
    "query_gallery",
    "summarize",
    "evaluate_reid",
    "encode_labels",
    "cosine_topk",
]

ALL_SPECIES = "all"
DEFAULT_MEMORY_BUDGET_BYTES = 256 * 1024**2


@dataclass
class RankingResult:
    """Per-query outcome of ranking a gallery.

    ``first_match_rank[i]`` is the 0-based rank of the first true match of query ``i`` (``-1`` when its gallery
    holds none); ``average_precision[i]`` its AP (``nan`` when it has no match).
    """

    first_match_rank: np.ndarray
    average_precision: np.ndarray

    @property
    def n_queries(self) -> int:
        return int(self.first_match_rank.shape[0])

    @property
    def has_match(self) -> np.ndarray:
        return self.first_match_rank >= 0

    @property
    def n_queries_without_match(self) -> int:
        return int((~self.has_match).sum())

    def cmc(self, max_rank: int) -> np.ndarray:
        """CMC curve: fraction of the queries with a match whose first match is within rank r (r = 1..max_rank)."""
        ranks = self.first_match_rank[self.has_match]
        if ranks.size == 0:
            return np.full(max_rank, np.nan)
        return np.array([(ranks < r).mean() for r in range(1, max_rank + 1)], dtype=np.float64)

    def mean_ap(self) -> float:
        ap = self.average_precision[self.has_match]
        return float(ap.mean()) if ap.size else float("nan")

    @staticmethod
    def concatenate(results: Sequence[RankingResult]) -> RankingResult:
        if not results:
            return RankingResult(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64))
        return RankingResult(
            np.concatenate([r.first_match_rank for r in results]),
            np.concatenate([r.average_precision for r in results]),
        )


def encode_labels(*arrays: Sequence | np.ndarray | None) -> list[np.ndarray | None]:
    """Map several label arrays to shared integer codes (same value -> same code across arrays).

    ``None`` arrays stay ``None``. Missing values (None / NaN) get a fresh code each, so they never compare equal.
    """
    arrays = tuple(a.detach().cpu().numpy() if hasattr(a, "detach") else a for a in arrays)  # torch tensors
    present = [np.asarray(a, dtype=object).reshape(-1) for a in arrays if a is not None]
    if not present:
        return [None for _ in arrays]
    joined = np.concatenate(present)
    codes = np.empty(joined.shape[0], dtype=np.int64)
    table: dict = {}
    fresh = -1
    for i, value in enumerate(joined):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            codes[i] = fresh
            fresh -= 1
            continue
        key = value.item() if isinstance(value, np.generic) else value
        codes[i] = table.setdefault(key, len(table))
    out: list[np.ndarray | None] = []
    start = 0
    for a in arrays:
        if a is None:
            out.append(None)
            continue
        n = len(a)
        out.append(codes[start : start + n])
        start += n
    return out


def _as_tensor(x, device=None) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D [N, D] array, got shape {tuple(t.shape)}")
    t = t.to(device=device, dtype=torch.float32)
    # cosine similarity: unit rows (a no-op up to rounding for the L2-normalised rows the contract asks for)
    return torch.nn.functional.normalize(t, dim=1)


def _auto_chunk(n_gallery: int, budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES) -> int:
    # per query row: scores (4 B) + sort values and indices (12 B) + several bool masks; ~32 B per gallery item
    return max(1, min(4096, budget_bytes // max(1, 32 * n_gallery)))


def _check_row_counts(arrays: Sequence[tuple[str, Sequence | np.ndarray | None, int]]) -> None:
    """Raise :class:`ValueError` for a ``(name, array, rows)`` whose array is given with another length."""
    for name, arr, n in arrays:
        if arr is not None and len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} entries, expected {n} (one per embedding row)")


def _codes(arr: Sequence | np.ndarray, device: torch.device) -> torch.Tensor:
    """Integer codes as an int64 tensor on ``device``."""
    return torch.as_tensor(np.asarray(arr, dtype=np.int64), device=device)


def _rank_chunk(
    scores: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_labels: torch.Tensor,
    query_encounters: torch.Tensor | None,
    gallery_encounters: torch.Tensor | None,
    query_self: torch.Tensor | None,
    positions: torch.Tensor,
) -> tuple[np.ndarray, np.ndarray]:
    """First-match rank and AP of a chunk of queries, from their ``scores`` against the whole gallery.

    Gallery images of the same identity and encounter as the query, and the query itself (``query_self``), are
    removed first; ``positions`` is ``1..n_gallery``. Arguments other than the gallery's are the chunk's rows.
    """
    same_id = query_labels[:, None] == gallery_labels[None, :]
    remove = torch.zeros_like(same_id)
    if query_encounters is not None:
        remove |= same_id & (query_encounters[:, None] == gallery_encounters[None, :])
    if query_self is not None:
        rows = torch.arange(query_self.shape[0], device=scores.device)
        has_self = query_self >= 0
        remove[rows[has_self], query_self[has_self]] = True
    scores.masked_fill_(remove, float("-inf"))
    match = same_id & ~remove
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    hits = torch.gather(match, 1, order)
    n_pos = hits.sum(dim=1)
    has = n_pos > 0
    fr = torch.where(has, hits.int().argmax(dim=1), torch.full_like(n_pos, -1))
    hitf = hits.float()
    precision_at_hit = hitf.cumsum(dim=1) / positions
    ap_chunk = (precision_at_hit * hitf).sum(dim=1) / n_pos.clamp(min=1)
    ap_chunk = torch.where(
        has, ap_chunk.double(), torch.full_like(ap_chunk, float("nan"), dtype=torch.float64)
    )
    return fr.cpu().numpy(), ap_chunk.cpu().numpy()


@torch.inference_mode()
def rank_queries(
    query_embeddings,
    gallery_embeddings,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    query_encounters: np.ndarray | None = None,
    gallery_encounters: np.ndarray | None = None,
    query_gallery_index: np.ndarray | None = None,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
) -> RankingResult:
    """Rank the gallery for every query by cosine similarity (dot product of unit rows) and score it.

    Labels and encounters are integer codes (see :func:`encode_labels`). ``query_gallery_index[i]`` is the
    gallery position of query ``i`` itself (leave-one-out), or -1 / ``None`` when the query is not in the gallery.
    Similarities are computed ``chunk_size`` queries at a time, so memory stays ~``32 * chunk * n_gallery`` bytes.
    """
    q = _as_tensor(query_embeddings, device)
    g = _as_tensor(gallery_embeddings, q.device)
    nq, ng = q.shape[0], g.shape[0]
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query and gallery embedding widths differ: {q.shape[1]} vs {g.shape[1]}")
    _check_row_counts(
        [
            ("query_labels", query_labels, nq),
            ("gallery_labels", gallery_labels, ng),
            ("query_encounters", query_encounters, nq),
            ("gallery_encounters", gallery_encounters, ng),
            ("query_gallery_index", query_gallery_index, nq),
        ]
    )
    if nq == 0:
        return RankingResult.concatenate([])
    if ng == 0:
        return RankingResult(np.full(nq, -1, dtype=np.int64), np.full(nq, np.nan))

    dev = q.device
    ql, gl = _codes(query_labels, dev), _codes(gallery_labels, dev)
    qe = ge = None
    if query_encounters is not None and gallery_encounters is not None:
        qe, ge = _codes(query_encounters, dev), _codes(gallery_encounters, dev)
    qself = _codes(query_gallery_index, dev) if query_gallery_index is not None else None

    chunk = chunk_size or _auto_chunk(ng)
    first_rank = np.empty(nq, dtype=np.int64)
    ap = np.empty(nq, dtype=np.float64)
    positions = torch.arange(1, ng + 1, device=dev, dtype=torch.float32)
    for start in range(0, nq, chunk):
        stop = min(nq, start + chunk)
        first_rank[start:stop], ap[start:stop] = _rank_chunk(
            q[start:stop] @ g.T,
            ql[start:stop],
            gl,
            qe[start:stop] if qe is not None else None,
            ge,
            qself[start:stop] if qself is not None else None,
            positions,
        )
    return RankingResult(first_rank, ap)


def _group_indices(
    species_codes: np.ndarray | None, n: int, names: np.ndarray | None
) -> dict[str, np.ndarray]:
    if species_codes is None:
        return {ALL_SPECIES: np.arange(n)}
    groups: dict[str, np.ndarray] = {}
    for code in np.unique(species_codes):
        idx = np.flatnonzero(species_codes == code)
        groups[str(names[idx[0]])] = idx
    return groups


def leave_one_out(
    embeddings,
    labels,
    encounters=None,
    species=None,
    chunk_size: int | None = None,
    device=None,
) -> dict[str, RankingResult]:
    """The paper's protocol: within each species, every image queries all the other images of that species.

    Returns one :class:`RankingResult` per species (key ``"all"`` when ``species`` is None).
    """
    emb = _as_tensor(embeddings, device)
    n = emb.shape[0]
    _check_len("labels", labels, n)
    _check_len("encounters", encounters, n)
    _check_len("species", species, n)
    lab, enc, sp = encode_labels(labels, encounters, species)
    sp_names = None if species is None else np.asarray(species, dtype=object)
    out: dict[str, RankingResult] = {}
    for name, idx in _group_indices(sp, n, sp_names).items():
        sub = emb[torch.as_tensor(idx, device=emb.device)]
        out[name] = rank_queries(
            sub,
            sub,
            lab[idx],
            lab[idx],
            None if enc is None else enc[idx],
            None if enc is None else enc[idx],
            query_gallery_index=np.arange(len(idx)),
            chunk_size=chunk_size,
            device=device,
        )
    return out


def query_gallery(
    query_embeddings,
    query_labels,
    gallery_embeddings,
    gallery_labels,
    query_encounters=None,
    gallery_encounters=None,
    query_species=None,
    gallery_species=None,
    within_species: bool = True,
    chunk_size: int | None = None,
    device=None,
) -> dict[str, RankingResult]:
    """MegaDescriptor's protocol: queries rank a separate gallery (database), per query species.

    With ``within_species`` (default) and species given on both sides, a query's gallery is the gallery
    images of its own species; otherwise the whole gallery.
    """
    q = _as_tensor(query_embeddings, device)
    g = _as_tensor(gallery_embeddings, q.device)
    _check_len("query_labels", query_labels, q.shape[0])
    _check_len("gallery_labels", gallery_labels, g.shape[0])
    _check_len("query_encounters", query_encounters, q.shape[0])
    _check_len("gallery_encounters", gallery_encounters, g.shape[0])
    _check_len("query_species", query_species, q.shape[0])
    _check_len("gallery_species", gallery_species, g.shape[0])
    if (query_encounters is None) != (gallery_encounters is None):
        raise ValueError("give encounters for both queries and gallery, or for neither")
    ql, gl = encode_labels(query_labels, gallery_labels)
    qe, ge = encode_labels(query_encounters, gallery_encounters)
    qs, gs = encode_labels(query_species, gallery_species)
    names = None if query_species is None else np.asarray(query_species, dtype=object)
    out: dict[str, RankingResult] = {}
    for name, qidx in _group_indices(qs, q.shape[0], names).items():
        if within_species and qs is not None and gs is not None:
            gidx = np.flatnonzero(gs == qs[qidx[0]])
        else:
            gidx = np.arange(g.shape[0])
        out[name] = rank_queries(
            q[torch.as_tensor(qidx, device=q.device)],
            g[torch.as_tensor(gidx, device=q.device)],
            ql[qidx],
            gl[gidx],
            None if qe is None else qe[qidx],
            None if ge is None else ge[gidx],
            chunk_size=chunk_size,
            device=device,
        )
    return out


def _check_len(name: str, arr, n: int) -> None:
    if arr is not None and len(arr) != n:
        raise ValueError(f"{name} has {len(arr)} entries, expected {n} (one per embedding row)")


def _nan_to_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def summarize(
    per_species: dict[str, RankingResult], protocol: str, topk: Sequence[int] = (1, 5, 10), max_rank: int = 20
) -> dict:
    """Turn per-species ranking results into the flat, JSON-ready dict documented at the top of the module."""
    max_rank = max(max_rank, *topk)
    species_out: dict[str, dict] = {}
    cmcs, maps = [], []
    for name, res in per_species.items():
        cmc = res.cmc(max_rank)
        m_ap = res.mean_ap()
        entry = {f"top{k}": _nan_to_none(cmc[k - 1]) for k in topk}
        entry["mAP"] = _nan_to_none(m_ap)
        entry["cmc"] = [_nan_to_none(v) for v in cmc]
        entry["n_queries"] = res.n_queries
        entry["n_queries_without_match"] = res.n_queries_without_match
        species_out[name] = entry
        if res.n_queries - res.n_queries_without_match > 0:
            cmcs.append(cmc)
            maps.append(m_ap)
    pooled = RankingResult.concatenate(list(per_species.values()))
    pooled_cmc = pooled.cmc(max_rank)
    n_q = pooled.n_queries
    n_nomatch = pooled.n_queries_without_match
    if n_nomatch:
        logger.info(
            "%d of %d queries have no true match in their gallery; excluded from CMC/mAP", n_nomatch, n_q
        )
    macro_cmc = np.mean(cmcs, axis=0) if cmcs else np.full(max_rank, np.nan)
    out = {"protocol": protocol}
    for k in topk:
        out[f"top{k}"] = _nan_to_none(macro_cmc[k - 1])
    out["mAP"] = _nan_to_none(float(np.mean(maps))) if maps else None
    out["cmc"] = [_nan_to_none(v) for v in macro_cmc]
    out["n_queries"] = n_q
    out["n_queries_without_match"] = n_nomatch
    out["n_species"] = len(cmcs)
    out["micro"] = {f"top{k}": _nan_to_none(pooled_cmc[k - 1]) for k in topk}
    out["micro"]["mAP"] = _nan_to_none(pooled.mean_ap())
    out["per_species"] = species_out
    return out


def evaluate_reid(
    embeddings,
    labels,
    encounters=None,
    species=None,
    *,
    gallery_embeddings=None,
    gallery_labels=None,
    gallery_encounters=None,
    gallery_species=None,
    topk: Sequence[int] = (1, 5, 10),
    max_rank: int = 20,
    within_species: bool = True,
    chunk_size: int | None = None,
    device=None,
) -> dict:
    """CMC top-k and mAP, per species and macro-averaged, as a flat JSON-ready dict (see the module docstring).

    Leave-one-out over ``embeddings`` when no gallery is given; otherwise the rows of ``embeddings`` query
    ``gallery_embeddings``.
    """
    if any(int(k) < 1 for k in topk):
        raise ValueError(f"topk values must be >= 1, got {tuple(topk)}")
    if gallery_embeddings is None:
        if gallery_labels is not None:
            raise ValueError("gallery_labels given without gallery_embeddings")
        per_species = leave_one_out(
            embeddings, labels, encounters, species, chunk_size=chunk_size, device=device
        )
        protocol = "leave_one_out"
    else:
        if gallery_labels is None:
            raise ValueError("gallery_embeddings given without gallery_labels")
        per_species = query_gallery(
            embeddings,
            labels,
            gallery_embeddings,
            gallery_labels,
            query_encounters=encounters,
            gallery_encounters=gallery_encounters,
            query_species=species,
            gallery_species=gallery_species,
            within_species=within_species,
            chunk_size=chunk_size,
            device=device,
        )
        protocol = "query_gallery"
    return summarize(per_species, protocol, topk=topk, max_rank=max_rank)


@torch.inference_mode()
def cosine_topk(
    queries, gallery, k: int, chunk_size: int | None = None, device=None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` dot-product scores and gallery indices per query, chunked over queries."""
    q = _as_tensor(queries, device)
    g = _as_tensor(gallery, q.device)
    k = min(k, g.shape[0])
    chunk = chunk_size or _auto_chunk(g.shape[0])
    scores = np.empty((q.shape[0], k), dtype=np.float32)
    idx = np.empty((q.shape[0], k), dtype=np.int64)
    for start in range(0, q.shape[0], chunk):
        s, i = torch.topk(q[start : start + chunk] @ g.T, k, dim=1)
        scores[start : start + chunk] = s.cpu().numpy()
        idx[start : start + chunk] = i.cpu().numpy()
    return scores, idx
