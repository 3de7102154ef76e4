"""Benchmark: discovery of new individuals (``animal_reid.season.discovery.discover``) over 1e4 to 1e6 embeddings.

Synthetic clusters shaped like a season's unknown sightings: identities of 1-8 images each (about n / 4.5 of them),
each identity's centre drawn near one of 20 shared directions (a species' or a site's look: two identity centres of
one direction have cosine ~0.35), its images around the centre with a per-identity spread (mean same-identity
cosine drawn in [0.45, 0.85]). Unless ``--no-constraints``: each identity's images come as encounters of 1-3 images
(must-link groups), and 10% of the images share their photo with an image of another identity of the same
direction (cannot-link).

Per size, in its own process (so each peak is its own): the wall time of ``discover`` split into must-link nodes,
index build, kNN search and clustering; the peak resident memory during ``discover`` (``VmHWM``, the figure
``getrusage`` reports as ``ru_maxrss``, reset once the data is generated; it counts faiss' C++ allocations, which
tracemalloc would not see) and the resident memory of the data alone; the neighbour
recall@k of the index against exact search (``faiss.knn``) for a sample of 1,000 nodes, and the recall of the
exact neighbours at or above the threshold (the edges that matter); ARI / AMI / pairwise precision and recall of
the labels against the synthetic truth (``cluster_quality``).

    python -m benchmarks.bench_discovery --sizes 10000 100000 1000000 --dim 256
    python -m benchmarks.bench_discovery --sizes 100000 --index exact     # the exact graph, for comparison
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import report

N_DIRECTIONS = 20
CENTRE_COS = 0.35  # cosine of two identity centres of one direction
SAME_COS = (0.45, 0.85)  # range of an identity's mean same-identity cosine
CHUNK = 1 << 16


# ------------------------------------------------------------------------------------------------------------------
# data
def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(embeddings [n, dim], identity, encounter, photo)``: rows shuffled; photo -1 for a photo of one animal."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 9, size=n // 4 + 8)
    sizes = sizes[: int(np.searchsorted(np.cumsum(sizes), n)) + 1]
    sizes[-1] -= int(sizes.sum()) - n
    n_ids = sizes.shape[0]
    directions = _unit(rng.normal(size=(N_DIRECTIONS, dim)))
    spread = np.sqrt((1 / CENTRE_COS - 1) / dim)  # |noise|^2 = spread^2 dim gives that centre cosine
    centres = np.empty((n_ids, dim), dtype=np.float32)
    direction = rng.integers(0, N_DIRECTIONS, size=n_ids)
    for s in range(0, n_ids, CHUNK):
        e = min(n_ids, s + CHUNK)
        centres[s:e] = _unit(
            directions[direction[s:e]] + spread * rng.normal(size=(e - s, dim)).astype(np.float32)
        )
    same = rng.uniform(*SAME_COS, size=n_ids)
    noise = np.sqrt((1 / same - 1) / dim).astype(np.float32)
    identity = rng.permutation(np.repeat(np.arange(n_ids), sizes))
    x = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, CHUNK):
        ids = identity[s : s + CHUNK]
        x[s : s + CHUNK] = _unit(centres[ids] + noise[ids, None] * rng.normal(size=(ids.shape[0], dim)))
    return x, identity, _encounters(identity, rng), _photos(identity, direction[identity], rng)


def _encounters(identity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Runs of 1-3 images of one identity (in row order) share an encounter id."""
    order = np.argsort(identity, kind="stable")
    ident = identity[order]
    pos = np.arange(ident.shape[0]) - np.searchsorted(ident, ident)  # position within its identity
    run = rng.integers(1, 4, size=ident.shape[0])  # each identity's encounters are runs of its own length
    enc_in_id = pos // run[ident]
    key = ident.astype(np.int64) * 8 + enc_in_id
    out = np.empty_like(key)
    out[order] = np.unique(key, return_inverse=True)[1]
    return out


def _photos(
    identity: np.ndarray, look: np.ndarray, rng: np.random.Generator, share: float = 0.1
) -> np.ndarray:
    """Pairs of rows of two identities of one direction (one herd, one site) share a photo id (``share`` of the
    rows); -1 for the others."""
    photo = np.full(identity.shape[0], -1, dtype=np.int64)
    rows = rng.choice(identity.shape[0], size=int(identity.shape[0] * share) // 2 * 2, replace=False)
    rows = rows[np.argsort(look[rows], kind="stable")]  # random order within each direction
    a, b = rows[0::2], rows[1::2]
    keep = (identity[a] != identity[b]) & (look[a] == look[b])
    photo[a[keep]] = photo[b[keep]] = np.arange(int(keep.sum()))
    return photo


# ------------------------------------------------------------------------------------------------------------------
# worker: one size in its own process
def _status_mb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident, the ``ru_maxrss`` figure) of this process, MB."""
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) / 1024 for ln in f if ln.startswith(field + ":"))


def _reset_peak() -> bool:
    """Reset this process's peak resident set to its current one (Linux ``clear_refs`` 5); False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def neighbour_recall(nx: np.ndarray, graph, sample: np.ndarray, threshold: float) -> dict:
    """recall@k of ``graph`` against exact search for the ``sample`` nodes, and of the exact neighbours
    at or above ``threshold``."""
    import faiss

    k = graph.indices.shape[1]
    sims, ids = faiss.knn(nx[sample], nx, min(k + 1, nx.shape[0]), metric=faiss.METRIC_INNER_PRODUCT)
    found = total = found_edges = total_edges = 0
    for row, q in enumerate(sample.tolist()):
        keep = (ids[row] != q) & (ids[row] >= 0)
        exact, exact_s = ids[row][keep][:k], sims[row][keep][:k]
        approx = set(graph.indices[q].tolist())
        hits = np.array([i in approx for i in exact.tolist()], dtype=bool)
        found, total = found + int(hits.sum()), total + exact.shape[0]
        strong = exact_s >= threshold
        found_edges, total_edges = found_edges + int(hits[strong].sum()), total_edges + int(strong.sum())
    return {
        f"recall@{k}": found / total if total else None,
        "recall_edges": found_edges / total_edges if total_edges else None,
        "exact_edges_in_sample": total_edges,
    }


def worker(n: int, args: argparse.Namespace) -> dict:
    from animal_reid.season.discovery import cluster_quality, discover, group_means

    t = time.perf_counter()
    x, identity, encounter, photo = synthetic(n, args.dim, args.seed)
    gen_s, rss_data = time.perf_counter() - t, _status_mb("VmRSS")
    peak_gen = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_reset = _reset_peak()
    constraints = {}
    if not args.no_constraints:
        constraints = {"must_link_groups": encounter, "cannot_link": np.where(photo >= 0, photo, None)}
    load0 = os.getloadavg()[0]
    stats: dict = {}
    labels = discover(
        x, args.threshold, k=args.k, index=args.index, seed=args.seed, stats=stats, **constraints
    )
    peak = _status_mb("VmHWM") if peak_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    graph, node_of_row = stats.pop("graph"), stats.pop("node_of_row")
    nx = group_means(x, node_of_row, stats["nodes"])
    sample = np.random.default_rng(args.seed + 1).choice(
        nx.shape[0], min(args.sample, nx.shape[0]), replace=False
    )
    t = time.perf_counter()
    recall = neighbour_recall(nx, graph, np.sort(sample), args.threshold)
    quality = cluster_quality(identity, labels)
    return {
        "size": n,
        **{key: stats[key] for key in ("rows", "nodes", "index", "params", "edges", "clusters")},
        **{key: stats[key] for key in ("conflicting_components", "refused_merges")},
        "seconds": {key: round(v, 3) for key, v in stats["seconds"].items()},
        "generate_s": round(gen_s, 2),
        "peak_rss_mb": round(peak),
        "peak_measured_from": "after the data" if peak_reset else "process start (generation included)",
        "rss_after_data_mb": round(rss_data),
        "peak_rss_generation_mb": round(peak_gen),
        **recall,
        **quality,
        "check_s": round(time.perf_counter() - t, 2),
        "loadavg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "truth": {"identities": int(identity.max()) + 1, "encounters": int(encounter.max()) + 1},
    }


def run_worker(n: int, args: argparse.Namespace, argv: list[str]) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_discovery", *argv, "--worker", str(n)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"size": n, "error": f"timed out after {args.timeout:.0f} s"}
    if proc.returncode != 0:
        return {"size": n, "error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--k", type=int, default=10)
    p.add_argument(
        "--threshold", type=float, default=0.5, help="similarity at or above which nodes are joined"
    )
    p.add_argument("--index", default="auto", choices=("auto", "exact", "hnsw", "ivf"))
    p.add_argument(
        "--sample", type=int, default=1000, help="nodes whose neighbours are checked against exact"
    )
    p.add_argument(
        "--no-constraints", action="store_true", help="no encounters (must-link) nor shared photos"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=3600, help="seconds per size")
    p.add_argument("--json-out", type=Path, default=Path("benchmarks/results/bench_discovery.json"))
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def table_row(r: dict, k: int) -> list:
    if "error" in r:
        return [f"{r['size']:,}", r["error"]] + [""] * 10
    s = r["seconds"]
    rec = r[f"recall@{k}"]
    return [
        f"{r['size']:,}", f"{r['nodes']:,}", f"{r['index']} {r['params']}", f"{s['build']:.1f}",
        f"{s['search']:.1f}", f"{s['groups'] + s['cluster']:.1f}", f"{s['total']:.1f}",
        f"{r['peak_rss_mb']:,} ({r['rss_after_data_mb']:,})", f"{rec:.4f} / {r['recall_edges']:.4f}",
        f"{r['ari']:.4f} / {r['ami']:.4f}", f"{r['pairwise_precision']:.4f} / {r['pairwise_recall']:.4f}",
        f"{r['loadavg_1min'][0]:.1f}-{r['loadavg_1min'][1]:.1f}",
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return {}
    report.require_extra("search")
    res = {
        "command": "python -m benchmarks.bench_discovery " + " ".join(argv),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": report.cpu_description(),
        "loadavg_at_start": [round(v, 2) for v in os.getloadavg()],
        "settings": {key: getattr(args, key) for key in ("dim", "k", "threshold", "index", "sample", "seed")},
        "data": __doc__.split("\n\n")[1].replace("\n", " "),
        "memory": "peak resident set (VmHWM, the ru_maxrss figure; faiss' C++ allocations counted, unlike "
        "tracemalloc) of the size's own process during discover, reset after the data was generated: the data "
        "held plus all discover allocates; 'data alone' is the resident set before discover",
        "rows": [],
    }
    res["settings"]["constraints"] = not args.no_constraints
    for n in args.sizes:
        res["rows"].append(run_worker(n, args, argv))
        print(json.dumps(res["rows"][-1]), flush=True)
    res["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    columns = ["n", "nodes", "index", "build s", "search s", "nodes+cluster s", "total s",
               "peak RSS MB (data alone)", f"recall@{args.k} / edges", "ARI / AMI", "pair P / R", "load"]  # fmt: skip
    title = (
        f"discovery, dim {args.dim}, k {args.k}, threshold {args.threshold}; {res['machine']}; {res['date']}"
    )
    return report.finish(
        res,
        args.json_out,
        title,
        report.markdown_table(columns, map(table_row, res["rows"], [args.k] * len(res["rows"]))),
    )


if __name__ == "__main__":
    main()
