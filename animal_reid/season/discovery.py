"""Discovery of new individuals: the annotations no known individual claims, clustered into proposed new ones.

``discover(embeddings, threshold, must_link_groups=..., cannot_link=...)`` returns a cluster id per row:

1. **must-link pre-merge**: rows of one must-link group (an encounter) start as one node, embedded as the mean of
   their unit rows, renormalised (fewer nodes to search; an encounter is matched as one). A group holding two rows of
   one cannot-link value (two animals of one photo) is an error naming both rows, or with ``conflicts="split"`` is
   dissolved into its rows (logged, naming the group and rows).
2. **kNN graph** over the nodes from a faiss index, never an N x N matrix (memory O(N k)):
   ``"exact"`` (``faiss.knn``, inner product, no copy of the rows), ``"ivf"`` (``IndexIVFFlat``, inner product,
   ``nlist = 2 sqrt(N)`` cells, k-means (10 iterations) on at most 64 rows per cell, ``nprobe = 32``) or ``"hnsw"``
   (``IndexHNSWFlat``, inner product, ``M = 32``, ``efConstruction = 80``, ``efSearch = max(64, k + 1)``).
   ``"auto"``: exact up to ``EXACT_MAX`` nodes, IVF above (on 2 cores, 1e5 nodes: IVF several times faster than HNSW
   at the same recall of the neighbours above the threshold, and deterministic; IVF's work grows as N^1.5, HNSW's
   as N log N: BENCHMARKS.md, discovery scale).
3. **clustering**: the edges with similarity >= ``threshold`` are joined in descending similarity (ties by node
   ids) by a union-find that refuses any merge bringing two rows of one cannot-link value into one cluster
   (per-component sets of values, the smaller merged into the larger). Without constraints this is single linkage
   at ``threshold``: connected components (scipy), and the ordered union-find runs only over the components that
   hold a cannot-link conflict.

Which threshold: a similarity on the same scale as the calibration's decision bands
(:mod:`animal_reid.season.decisions`, per species). The season command should pass
``bands.band_for(species).known_above`` (the score from which two annotations are called the same individual);
``new_below`` joins too eagerly, as single linkage chains (on the scale benchmark's data, 0.4 instead of 0.5 chains
each of its 20 look-alike groups into one cluster: ARI 0.004). The season benchmark fixes the choice on the
validation season.

Repeatability: exact search and IVF (k-means seeded by ``seed``) give the same labels on every run; faiss builds an
HNSW graph on several threads, so its borderline neighbours are not guaranteed to repeat (they did in our runs).

``cluster_quality`` (from :mod:`animal_reid.season.clustering_quality`) scores labels against the truth;
``proposed_ids`` names clusters like ``new:lion:0007``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from animal_reid.extras import require_extra
from animal_reid.season.clustering_quality import cluster_quality

logger = logging.getLogger(__name__)

__all__ = ["INDEXES", "EXACT_MAX", "KnnGraph", "knn_graph", "discover", "cluster_quality", "proposed_ids"]

INDEXES = ("auto", "exact", "hnsw", "ivf")
EXACT_MAX = 20_000  # nodes up to which index="auto" searches exactly
IVF_NPROBE = 32
IVF_CELLS = 2  # nlist = 2 sqrt(N): k-means on 64 rows per cell stays cheap; ~sqrt(N) / 2 rows per cell
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 64
SEARCH_CHUNK = 1 << 14  # queries per faiss call
CONFLICTS = ("error", "split")


@dataclass
class KnnGraph:
    """Each node's ``k`` nearest other nodes: ``indices [M, k]`` (-1 where missing), ``scores [M, k]`` (-inf)."""

    indices: np.ndarray
    scores: np.ndarray
    method: str
    params: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


def _faiss():
    require_extra("animal_reid.season.discovery", "search")
    import faiss

    return faiss


# ----------------------------------------------------------------------------------------------------------------
# inputs
def check_embeddings(embeddings) -> np.ndarray:
    """``embeddings`` as C-contiguous float32 unit rows ([N, D]); rows off unit norm are normalised."""
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"embeddings must be a 2-D [N, D] array with D >= 1, got shape {x.shape}")
    if x.dtype.kind not in "fiu":
        raise ValueError(f"embeddings must be numbers, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        raise ValueError(f"embeddings: row {int(np.argmin(finite))} is not finite (nan or inf)")
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    if (norms == 0).any():
        raise ValueError(f"embeddings: row {int(np.argmin(norms))} is all zeros (no direction)")
    if np.abs(norms - 1).max(initial=0) > 1e-3:
        x = x / norms[:, None]
    return x


def _codes(values, n: int, name: str) -> tuple[np.ndarray, list]:
    """Integer codes of a per-row array (first-appearance order; -1 for a missing value: None, NaN, "") and the
    value of each code; ``values`` None: every row -1."""
    if values is None:
        return np.full(n, -1, dtype=np.int64), []
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ValueError(
            f"{name} must be a sequence with one value per embedding row, got {type(values).__name__}"
        )
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries, expected {n} (one per embedding row)")
    table: dict = {}
    out = np.empty(n, dtype=np.int64)
    for i, v in enumerate(values.tolist() if isinstance(values, np.ndarray) else values):
        missing = v is None or (isinstance(v, str) and v == "") or (isinstance(v, float) and math.isnan(v))
        try:
            out[i] = -1 if missing else table.setdefault(v, len(table))
        except TypeError:
            raise ValueError(f"{name}: row {i} holds an unhashable {type(v).__name__}") from None
    return out, list(table)


def _check_options(threshold, k, index, conflicts) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)):
        raise ValueError(f"threshold must be a number in [-1, 1], got {threshold!r}")
    if not (-1.0 <= float(threshold) <= 1.0):  # also false for nan
        raise ValueError(f"threshold must be in [-1, 1] (a cosine similarity), got {threshold!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if index not in INDEXES:
        raise ValueError(f"index must be one of {INDEXES}, got {index!r}")
    if conflicts not in CONFLICTS:
        raise ValueError(f"conflicts must be one of {CONFLICTS}, got {conflicts!r}")


# ----------------------------------------------------------------------------------------------------------------
# must-link nodes
def _conflicting_groups(group: np.ndarray, cannot: np.ndarray) -> dict[int, tuple[int, int]]:
    """Must-link groups holding two rows of one cannot-link value: ``{group code: (row, row)}``."""
    rows = np.flatnonzero((group >= 0) & (cannot >= 0))
    pairs = group[rows] * (int(cannot.max()) + 1) + cannot[rows]
    order = np.argsort(pairs, kind="stable")
    dup = np.flatnonzero(pairs[order][1:] == pairs[order][:-1])
    out: dict[int, tuple[int, int]] = {}
    for d in dup:
        first, second = int(rows[order[d]]), int(rows[order[d + 1]])
        out.setdefault(int(group[first]), (first, second))
    return out


def _nodes(group: np.ndarray, cannot: np.ndarray, conflicts: str, names: tuple[list, list]) -> np.ndarray:
    """The node of each row (0..M-1 in first-appearance order): one per must-link group, one per other row."""
    bad = _conflicting_groups(group, cannot) if (cannot >= 0).any() else {}
    for g, (i, j) in bad.items():
        photo = names[1][cannot[i]]
        what = f"must_link_groups: group {names[0][g]!r} holds rows {i} and {j} of one cannot_link value {photo!r}"
        if conflicts == "error":
            raise ValueError(what + " (two animals of one photo are never one individual)")
        logger.warning("%s: the group is dissolved into its rows", what)
    group = group.copy()
    if bad:
        group[np.isin(group, list(bad))] = -1
    n = group.shape[0]
    return _first_appearance(np.where(group >= 0, group, group.max(initial=-1) + 1 + np.arange(n)))


def group_means(x: np.ndarray, node_of_row: np.ndarray, n_nodes: int) -> np.ndarray:
    """Each node's embedding: the renormalised mean of its rows (``x`` itself when every node is one row)."""
    if n_nodes == x.shape[0]:  # nodes numbered by first row: node i is row i
        return x
    from scipy import sparse

    member = sparse.csr_matrix(
        (np.ones(x.shape[0], dtype=np.float32), (node_of_row, np.arange(x.shape[0]))),
        shape=(n_nodes, x.shape[0]),
    )
    means = np.ascontiguousarray(member @ x, dtype=np.float32)
    means /= np.maximum(np.sqrt(np.einsum("ij,ij->i", means, means)), 1e-12)[:, None]
    return means


# ----------------------------------------------------------------------------------------------------------------
# kNN graph
def _new_index(faiss, x: np.ndarray, method: str, seed: int) -> tuple[object, dict]:
    n, d = x.shape
    if method == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        return index, {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}
    nlist = int(max(1, min(n // 39, round(IVF_CELLS * math.sqrt(n)))))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed, index.cp.niter, index.cp.max_points_per_centroid = seed, 10, 64
    sample = np.sort(np.random.default_rng(seed).choice(n, size=min(n, 64 * nlist), replace=False))
    index.train(x[sample])
    index.nprobe = min(IVF_NPROBE, nlist)
    return index, {"nlist": nlist, "nprobe": index.nprobe, "train_rows": int(sample.shape[0]), "niter": 10}


def _drop_self(ids: np.ndarray, scores: np.ndarray, start: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` hits of each query that are not the query itself (rows ``start..``), -1 / -inf padded."""
    ids = np.where(ids == (start + np.arange(ids.shape[0]))[:, None], -1, ids)
    order = np.argsort(ids < 0, axis=1, kind="stable")[:, :k]
    ids, scores = np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1).astype(np.float32)
    scores[ids < 0] = -np.inf
    return ids.astype(np.int64, copy=False), scores


def knn_graph(x: np.ndarray, k: int = 10, index: str = "auto", seed: int = 0) -> KnnGraph:
    """The ``k`` nearest other rows of every row of ``x`` (float32 unit rows) by inner product."""
    faiss = _faiss()
    n = x.shape[0]
    method = index if index != "auto" else ("exact" if n <= EXACT_MAX else "ivf")
    t0 = time.perf_counter()
    ann, params = (None, {}) if method == "exact" else _new_index(faiss, x, method, seed)
    if ann is not None:
        ann.add(x)
        if method == "hnsw":
            ann.hnsw.efSearch = params["efSearch"] = max(HNSW_EF_SEARCH, k + 1)
    t1 = time.perf_counter()
    indices = np.full((n, k), -1, dtype=np.int64)
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    for s in range(0, n, SEARCH_CHUNK):
        q = x[s : s + SEARCH_CHUNK]
        if ann is None:
            d, i = faiss.knn(q, x, min(k + 1, n), metric=faiss.METRIC_INNER_PRODUCT)
        else:
            d, i = ann.search(q, k + 1)
        i, d = _drop_self(i, d, s, k)
        indices[s : s + q.shape[0], : i.shape[1]], scores[s : s + q.shape[0], : d.shape[1]] = i, d
    seconds = {"build": t1 - t0, "search": time.perf_counter() - t1}
    logger.info("kNN graph: %d nodes, k=%d, %s %s, %.1f s", n, k, method, params, sum(seconds.values()))
    return KnnGraph(indices, scores, method, params, seconds)


# ----------------------------------------------------------------------------------------------------------------
# clustering
def _edges(graph: KnnGraph, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected edges ``(a < b, similarity)`` at or above ``threshold``, by descending similarity then ids."""
    n, k = graph.indices.shape
    cols, sims = graph.indices.ravel(), graph.scores.ravel()
    keep = np.flatnonzero((cols >= 0) & (sims >= threshold))
    rows, cols, sims = keep // k, cols[keep], sims[keep]
    a, b = np.minimum(rows, cols), np.maximum(rows, cols)
    order = np.lexsort((-sims, a * n + b))  # by pair, the higher similarity first
    key = (a * n + b)[order]
    first = order[np.r_[True, key[1:] != key[:-1]]] if key.size else order
    a, b, sims = a[first], b[first], sims[first]
    order = np.lexsort((b, a, -sims))
    return a[order], b[order], sims[order]


def _constrained_union(nodes: np.ndarray, a, b, codes: dict[int, set]) -> tuple[dict[int, int], int]:
    """Union-find over the edges (in order) refusing merges that share a cannot-link value; ``(root of node,
    refused merges)``."""
    parent = {int(v): int(v) for v in nodes}

    def find(v: int) -> int:
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    refused = 0
    for u, v in zip(a.tolist(), b.tolist(), strict=True):
        ru, rv = find(u), find(v)
        if ru == rv:
            continue
        su, sv = codes.get(ru, set()), codes.get(rv, set())
        if len(su) > len(sv):
            ru, rv, su, sv = rv, ru, sv, su
        if su and not su.isdisjoint(sv):
            refused += 1
            continue
        parent[ru] = rv  # the smaller set joins the larger
        if su:
            sv |= su
            codes[rv] = sv
            codes.pop(ru, None)
    return {v: find(v) for v in parent}, refused


def _cluster(
    graph: KnnGraph, threshold: float, node_codes: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, dict]:
    """Node labels (a representative node per cluster) and counts: edges, conflicting components, refusals."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = graph.indices.shape[0]
    a, b, _ = _edges(graph, threshold)
    adj = coo_matrix((np.ones(a.shape[0], dtype=np.int8), (a, b)), shape=(n, n))
    _, comp = connected_components(adj, directed=False)
    nodes, codes = node_codes
    width = int(codes.max(initial=0)) + 1
    key = np.sort(comp[nodes] * width + codes)  # (component, value): twice in one component is a conflict
    conflicted = np.unique(key[1:][key[1:] == key[:-1]] // width)
    info = {"edges": int(a.shape[0]), "conflicting_components": int(conflicted.shape[0]), "refused_merges": 0}
    if conflicted.size == 0:
        return comp, info
    inside = np.isin(comp, conflicted)
    sel = inside[a]
    code_sets: dict[int, set] = {}
    for v, c in zip(nodes[inside[nodes]].tolist(), codes[inside[nodes]].tolist(), strict=True):
        code_sets.setdefault(v, set()).add(c)
    roots, info["refused_merges"] = _constrained_union(np.flatnonzero(inside), a[sel], b[sel], code_sets)
    labels = comp + n  # unconstrained components: their id offset past every node id
    labels[list(roots)] = list(roots.values())
    return labels, info


def _first_appearance(labels: np.ndarray) -> np.ndarray:
    """Relabel to 0..C-1 in order of first appearance."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(first.shape[0], dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.shape[0])
    return rank[inverse.reshape(-1)]


def discover(
    embeddings,
    threshold: float,
    *,
    must_link_groups=None,
    cannot_link=None,
    k: int = 10,
    index: str = "auto",
    seed: int = 0,
    conflicts: str = "error",
    stats: dict | None = None,
) -> np.ndarray:
    """Cluster ids ``[N]`` (0..C-1, numbered by first row) of the rows of ``embeddings`` ([N, D] unit rows).

    ``must_link_groups`` / ``cannot_link``: one value per row (None, NaN or "" for none), e.g. encounter ids and
    photo ids. ``stats``, when a dict, receives the index, its parameters, counts and seconds per step, the kNN
    graph (``"graph"``) and each row's node (``"node_of_row"``).
    """
    _check_options(threshold, k, index, conflicts)
    x = check_embeddings(embeddings)
    n = x.shape[0]
    t0 = time.perf_counter()
    must, must_names = _codes(must_link_groups, n, "must_link_groups")
    cannot, cannot_names = _codes(cannot_link, n, "cannot_link")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    node_of_row = _nodes(must, cannot, conflicts, (must_names, cannot_names))
    n_nodes = int(node_of_row.max()) + 1
    nx = group_means(x, node_of_row, n_nodes)
    t1 = time.perf_counter()
    graph = knn_graph(nx, k=k, index=index, seed=seed)
    t2 = time.perf_counter()
    has = cannot >= 0
    pairs = np.unique(np.stack([node_of_row[has], cannot[has]], axis=1), axis=0)
    node_labels, info = _cluster(graph, float(threshold), (pairs[:, 0], pairs[:, 1]))
    labels = _first_appearance(node_labels[node_of_row])
    t3 = time.perf_counter()
    info.update(
        rows=n, nodes=n_nodes, clusters=int(labels.max()) + 1, index=graph.method, params=graph.params
    )
    info["seconds"] = {"groups": t1 - t0, **graph.seconds, "cluster": t3 - t2, "total": t3 - t0}
    logger.info("discovery: %s", info)
    if stats is not None:
        stats.update(info, graph=graph, node_of_row=node_of_row)
    return labels


# ----------------------------------------------------------------------------------------------------------------
# names
def proposed_ids(labels, species, prefix: str = "new") -> list[str]:
    """``"<prefix>:<species>:<number>"`` per row, clusters numbered 1, 2, ... per species in order of their first row
    (4 digits at least: ``new:lion:0001``).

    ``species``: one name for every row, or one per row; a cluster whose rows name two species is an error."""
    lab = np.asarray(labels)
    if lab.ndim != 1 or (lab.size and (lab.dtype.kind not in "iu" or lab.min() < 0)):
        raise ValueError("labels must be non-negative integer cluster ids, one per row")
    sp = [species] * lab.shape[0] if isinstance(species, str) else list(species)
    if len(sp) != lab.shape[0]:
        raise ValueError(f"species has {len(sp)} entries, expected {lab.shape[0]} (one per row)")
    first_row: dict[int, int] = {}
    numbers: dict[int, int] = {}
    per_species: dict[str, int] = {}
    for i, (c, s) in enumerate(zip(lab.tolist(), sp, strict=True)):
        if not isinstance(s, str) or not s or ":" in s:
            raise ValueError(f"species: row {i} has {s!r}, expected a non-empty name without ':'")
        j = first_row.setdefault(c, i)
        if sp[j] != s:
            raise ValueError(f"cluster {c} holds rows {j} ({sp[j]}) and {i} ({s}) of two species")
        if j == i:
            numbers[c] = per_species[s] = per_species.get(s, 0) + 1
    width = {s: max(4, len(str(m))) for s, m in per_species.items()}
    return [f"{prefix}:{s}:{numbers[c]:0{width[s]}d}" for c, s in zip(lab.tolist(), sp, strict=True)]
