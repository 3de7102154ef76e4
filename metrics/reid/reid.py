"""Re-identification metric for 🤗 Evaluate: CMC top-k and mAP over embeddings, per species.

Self-contained (numpy only), because ``evaluate.load`` copies this file alone into its modules cache. The same
maths lives in ``animal_reid.metrics`` of the animal-reid package, and its tests check that both agree.
"""

from __future__ import annotations

import math

import datasets
import evaluate
import numpy as np

_CITATION = """\
@article{otarashvili2024multispecies,
  title   = {Multispecies Animal Re-ID Using a Large Community-Curated Dataset},
  author  = {Otarashvili, Lasha and Subramanian, Tamilselvan and Holmberg, Jason and Levenson, J. J. and Stewart, Charles V.},
  journal = {arXiv preprint arXiv:2412.05602},
  year    = {2024}
}
"""

_DESCRIPTION = """\
Closed-set re-identification metrics over L2-normalised embeddings: CMC top-k accuracy and mean average precision
(mAP), per species and macro-averaged over species. Two protocols: leave-one-out within a species (every image
queries all the other images of its species; the default) and query vs gallery (pass `gallery_embeddings` and
`gallery_labels`). Gallery images of the same identity and the same encounter as a query are removed from its
gallery (in leave-one-out that removes the query itself); queries left with no true match are counted in
`n_queries_without_match` and excluded from CMC/mAP, as in fast-reid/torchreid. Ties are broken by gallery order.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: embeddings, one list of floats per image (rows are L2-normalised if they are not).
    references: identity label of each image (str or int).
    encounters (optional, list): encounter id per image; same-identity same-encounter gallery matches are dropped.
    species (optional, list): species per image; metrics are computed per species and macro-averaged.
    gallery_embeddings, gallery_labels, gallery_encounters, gallery_species (optional): a separate gallery
        (query-vs-gallery protocol); without them the protocol is leave-one-out.
    topk (tuple of int, default (1, 5, 10)), max_rank (int, default 20): CMC ranks reported.
    within_species (bool, default True): in query vs gallery, rank only the gallery images of the query's species.
    chunk_size (int, optional): queries scored at a time (memory ~ 24 * chunk_size * gallery size bytes).
Encounters, species and the gallery are passed to `compute`, not `add_batch`; they must align with all the rows
added so far.
Returns:
    dict with `protocol`, `top1`, `top5`, `top10`, `mAP`, `cmc` (macro over species, fractions in [0, 1]),
    `n_queries`, `n_queries_without_match`, `n_species`, `micro` (pooled over queries) and `per_species`.
Examples:
    >>> reid = evaluate.load("path/to/metrics/reid")
    >>> out = reid.compute(predictions=[[1, 0], [0.96, 0.26], [0, 1], [0.1, 0.99]], references=["a", "a", "b", "b"])
    >>> out["top1"], out["mAP"]
    (1.0, 1.0)
"""

ALL_SPECIES = "all"


def _encode(*arrays):
    """Shared integer codes across arrays; None/NaN entries get fresh codes that match nothing."""
    table, fresh, out = {}, -1, []
    for a in arrays:
        if a is None:
            out.append(None)
            continue
        codes = np.empty(len(a), dtype=np.int64)
        for i, v in enumerate(a):
            if v is None or (isinstance(v, float) and math.isnan(v)):
                codes[i] = fresh
                fresh -= 1
            else:
                codes[i] = table.setdefault(v.item() if isinstance(v, np.generic) else v, len(table))
        out.append(codes)
    return out


def _unit(x):
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D [N, D] array, got shape {x.shape}")
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n == 0, 1.0, n)


def _rank(q, g, ql, gl, qe, ge, self_index, chunk_size):
    """First-match rank (-1 if none) and AP (nan if none) of every query against its gallery."""
    nq, ng = q.shape[0], g.shape[0]
    first = np.full(nq, -1, dtype=np.int64)
    ap = np.full(nq, np.nan)
    if nq == 0 or ng == 0:
        return first, ap
    chunk = chunk_size or max(1, min(4096, (256 * 1024**2) // (24 * ng)))
    positions = np.arange(1, ng + 1, dtype=np.float64)
    for s in range(0, nq, chunk):
        e = min(nq, s + chunk)
        scores = q[s:e] @ g.T
        same = ql[s:e, None] == gl[None, :]
        remove = np.zeros_like(same)
        if qe is not None:
            remove |= same & (qe[s:e, None] == ge[None, :])
        if self_index is not None:
            remove[np.arange(e - s), self_index[s:e]] = True
        scores[remove] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")
        hits = np.take_along_axis(same & ~remove, order, axis=1)
        n_pos = hits.sum(axis=1)
        has = n_pos > 0
        first[s:e] = np.where(has, hits.argmax(axis=1), -1)
        prec = np.cumsum(hits, axis=1) / positions
        ap[s:e] = np.where(has, (prec * hits).sum(axis=1) / np.maximum(n_pos, 1), np.nan)
    return first, ap


def _none(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _cmc(first, max_rank):
    r = first[first >= 0]
    if r.size == 0:
        return np.full(max_rank, np.nan)
    return np.array([(r < k).mean() for k in range(1, max_rank + 1)])


def _summary(per_species, protocol, topk, max_rank):
    max_rank = max(max_rank, *topk)
    out_species, cmcs, maps = {}, [], []
    all_first, all_ap = [], []
    for name, (first, ap) in per_species.items():
        cmc = _cmc(first, max_rank)
        valid = first >= 0
        m_ap = float(ap[valid].mean()) if valid.any() else float("nan")
        entry = {f"top{k}": _none(cmc[k - 1]) for k in topk}
        entry.update(
            mAP=_none(m_ap),
            cmc=[_none(v) for v in cmc],
            n_queries=int(first.size),
            n_queries_without_match=int((~valid).sum()),
        )
        out_species[name] = entry
        if valid.any():
            cmcs.append(cmc)
            maps.append(m_ap)
        all_first.append(first)
        all_ap.append(ap)
    first = np.concatenate(all_first) if all_first else np.zeros(0, dtype=np.int64)
    ap = np.concatenate(all_ap) if all_ap else np.zeros(0)
    macro = np.mean(cmcs, axis=0) if cmcs else np.full(max_rank, np.nan)
    pooled = _cmc(first, max_rank)
    out = {"protocol": protocol}
    out.update({f"top{k}": _none(macro[k - 1]) for k in topk})
    out["mAP"] = _none(float(np.mean(maps))) if maps else None
    out["cmc"] = [_none(v) for v in macro]
    out["n_queries"] = int(first.size)
    out["n_queries_without_match"] = int((first < 0).sum())
    out["n_species"] = len(cmcs)
    out["micro"] = {f"top{k}": _none(pooled[k - 1]) for k in topk}
    out["micro"]["mAP"] = _none(float(ap[first >= 0].mean())) if (first >= 0).any() else None
    out["per_species"] = out_species
    return out


def _groups(codes, names, n):
    if codes is None:
        return {ALL_SPECIES: np.arange(n)}
    out = {}
    for c in np.unique(codes):
        idx = np.flatnonzero(codes == c)
        out[str(names[idx[0]])] = idx
    return out


def _check(name, arr, n):
    if arr is not None and len(arr) != n:
        raise ValueError(f"{name} has {len(arr)} entries, expected {n} (one per embedding row)")


def reid_metrics(
    embeddings,
    labels,
    encounters=None,
    species=None,
    gallery_embeddings=None,
    gallery_labels=None,
    gallery_encounters=None,
    gallery_species=None,
    topk=(1, 5, 10),
    max_rank=20,
    within_species=True,
    chunk_size=None,
):
    """The whole computation, as a plain function (numpy only)."""
    q = _unit(embeddings)
    labels = list(labels)
    _check("references", labels, q.shape[0])
    _check("encounters", encounters, q.shape[0])
    _check("species", species, q.shape[0])
    if any(int(k) < 1 for k in topk):
        raise ValueError(f"topk values must be >= 1, got {tuple(topk)}")
    per = {}
    if gallery_embeddings is None:
        ql, qe, qs = _encode(labels, encounters, species)
        names = None if species is None else list(species)
        for name, idx in _groups(qs, names, q.shape[0]).items():
            sub = q[idx]
            per[name] = _rank(
                sub,
                sub,
                ql[idx],
                ql[idx],
                None if qe is None else qe[idx],
                None if qe is None else qe[idx],
                np.arange(len(idx)),
                chunk_size,
            )
        return _summary(per, "leave_one_out", tuple(topk), max_rank)
    if gallery_labels is None:
        raise ValueError("gallery_embeddings given without gallery_labels")
    if (encounters is None) != (gallery_encounters is None):
        raise ValueError("give encounters for both queries and gallery, or for neither")
    g = _unit(gallery_embeddings)
    _check("gallery_labels", gallery_labels, g.shape[0])
    _check("gallery_encounters", gallery_encounters, g.shape[0])
    _check("gallery_species", gallery_species, g.shape[0])
    ql, gl = _encode(labels, list(gallery_labels))
    qe, ge = _encode(encounters, gallery_encounters)
    qs, gs = _encode(species, gallery_species)
    names = None if species is None else list(species)
    for name, qidx in _groups(qs, names, q.shape[0]).items():
        if within_species and qs is not None and gs is not None:
            gidx = np.flatnonzero(gs == qs[qidx[0]])
        else:
            gidx = np.arange(g.shape[0])
        per[name] = _rank(
            q[qidx],
            g[gidx],
            ql[qidx],
            gl[gidx],
            None if qe is None else qe[qidx],
            None if ge is None else ge[gidx],
            None,
            chunk_size,
        )
    return _summary(per, "query_gallery", tuple(topk), max_rank)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Reid(evaluate.Metric):
    """CMC top-k and mAP for animal (or person) re-identification embeddings."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Sequence(datasets.Value("float32")),
                        "references": datasets.Value("string"),
                    }
                ),
                datasets.Features(
                    {
                        "predictions": datasets.Sequence(datasets.Value("float32")),
                        "references": datasets.Value("int64"),
                    }
                ),
            ],
            reference_urls=["https://arxiv.org/abs/2412.05602", "https://github.com/JDAI-CV/fast-reid"],
        )

    def _compute(self, predictions, references, **kwargs):
        return reid_metrics(np.asarray(predictions, dtype=np.float32), references, **kwargs)
