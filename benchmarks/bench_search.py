"""Benchmark: top-k cosine search for 1,000 queries over galleries of 1e4, 1e5, 1e6 synthetic embeddings.

Compares ``animal_reid.search.GalleryIndex`` (exact chunked torch search, float32 and float16 storage; faiss
IVF) with the baseline users have today, scikit-learn ``NearestNeighbors(metric="cosine", algorithm="brute")``.
Search time is the best of ``--repeats`` runs (fewer once a method has spent 60 s searching), so a busy shared
machine distorts it less; build time is measured once. Every method runs in its own subprocess, so peak memory (``ru_maxrss``) is measured per method and never mixed;
all of them load the same gallery ``.npy`` fully into memory first (that load is part of each peak and is also
printed on its own). Recall@k is measured against the exact top-k (our exact search, itself checked against
sklearn's indices where sklearn ran).

Synthetic data, so recall is meaningful: unit 512-d embeddings clustered like a re-ID gallery, 50 "species"
centres, ~10 images per "individual" around an individual centre drawn near its species centre; queries are
fresh images of random gallery individuals. Files are generated once (seeded) into ``--data-dir``.

    python benchmarks/bench_search.py                          # 1e4, 1e5, 1e6; sklearn up to --sklearn-max
    python benchmarks/bench_search.py --sizes 10000 --methods sklearn exact ivf
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

ALL_METHODS = ("sklearn", "exact", "exact_fp16", "ivf", "ivf_fp16")


# ------------------------------------------------------------------------------------------------------------------
# data
def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_data(data_dir: Path, n: int, n_queries: int, dim: int, seed: int = 0) -> tuple[Path, Path]:
    """Write ``gallery_{n}.npy`` and ``queries_{n}.npy`` (clustered unit embeddings) unless present."""
    data_dir.mkdir(parents=True, exist_ok=True)
    gpath = data_dir / f"gallery_{n}_{dim}_{seed}.npy"
    qpath = data_dir / f"queries_{n}_{n_queries}_{dim}_{seed}.npy"
    if gpath.is_file() and qpath.is_file():
        return gpath, qpath
    rng = np.random.default_rng(seed)
    n_species, per_id = 50, 10
    n_ids = max(1, n // per_id)
    species_c = _unit(rng.normal(size=(n_species, dim)))
    id_species = rng.integers(0, n_species, size=n_ids)
    id_c = np.empty((n_ids, dim), dtype=np.float32)
    step = 100_000
    for s in range(0, n_ids, step):
        e = min(n_ids, s + step)
        id_c[s:e] = _unit(
            species_c[id_species[s:e]] + 0.08 * rng.normal(size=(e - s, dim)).astype(np.float32)
        )
    gallery = np.lib.format.open_memmap(
        gpath.with_suffix(".tmp.npy"), mode="w+", dtype=np.float32, shape=(n, dim)
    )
    ids = rng.integers(0, n_ids, size=n)
    for s in range(0, n, step):
        e = min(n, s + step)
        gallery[s:e] = _unit(id_c[ids[s:e]] + 0.04 * rng.normal(size=(e - s, dim)).astype(np.float32))
    gallery.flush()
    del gallery
    os.replace(gpath.with_suffix(".tmp.npy"), gpath)
    qids = rng.integers(0, n_ids, size=n_queries)
    np.save(qpath, _unit(id_c[qids] + 0.04 * rng.normal(size=(n_queries, dim)).astype(np.float32)))
    return gpath, qpath


# ------------------------------------------------------------------------------------------------------------------
# worker: one method, one size, in its own process
def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _timed(fn, repeats: int):
    """Best wall time of up to ``repeats`` calls (stopping once 60 s have been spent), and the last result."""
    best, spent, result = float("inf"), 0.0, None
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        result = fn()
        dt = time.perf_counter() - t
        best, spent = min(best, dt), spent + dt
        if spent > 60:
            break
    return best, result


def worker(
    method: str, gpath: Path, qpath: Path, k: int, nprobe: int, out_idx: Path, repeats: int = 3
) -> dict:
    if method == "sklearn":
        from sklearn.neighbors import NearestNeighbors  # the baseline process never imports torch
    else:
        from animal_reid.search import GalleryIndex  # imports torch only for the exact methods

        if method.startswith("exact"):
            import torch

            torch.set_num_threads(os.cpu_count() or 1)
    gallery = np.load(gpath)
    queries = np.load(qpath)
    rss_loaded = _rss_mb()
    t0 = time.perf_counter()
    if method == "sklearn":
        nn = NearestNeighbors(metric="cosine", algorithm="brute").fit(gallery)
        t1 = time.perf_counter()
        search_s, (dist, idx) = _timed(lambda: nn.kneighbors(queries, n_neighbors=k), repeats)
        scores = 1.0 - dist
    else:
        if method in ("exact", "exact_fp16"):
            index = GalleryIndex.build(
                gallery, method="exact", dtype="float16" if method == "exact_fp16" else "float32", copy=False
            )
        else:
            index = GalleryIndex.build(
                gallery, method="ivf", dtype="float16" if method == "ivf_fp16" else "float32", nprobe=nprobe
            )
            del gallery  # the faiss index holds its own copy; the load still counts in the peak
        t1 = time.perf_counter()
        search_s, (scores, idx) = _timed(lambda: index.search(queries, k), repeats)
    np.save(out_idx, np.asarray(idx, dtype=np.int64))
    return {
        "method": method,
        "build_s": t1 - t0,
        "search_s": search_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_load_mb": rss_loaded,
        "mean_top1_score": float(np.mean(np.asarray(scores)[:, 0])),
    }


def run_worker(
    method: str, gpath: Path, qpath: Path, k: int, nprobe: int, out_idx: Path, timeout: float, repeats: int
) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--gallery", str(gpath), "--queries", str(qpath)]
    cmd += ["--k", str(k), "--nprobe", str(nprobe), "--out-idx", str(out_idx), "--repeats", str(repeats)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"method": method, "error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"method": method, "error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(approx, exact, strict=True)]))


# ------------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (with the hidden options of worker mode)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--n-queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--nprobe", type=int, default=16, help="IVF cells visited per query")
    p.add_argument("--methods", nargs="+", default=list(ALL_METHODS), choices=ALL_METHODS)
    p.add_argument("--sklearn-max", type=int, default=1_000_000, help="skip sklearn above this gallery size")
    p.add_argument(
        "--repeats", type=int, default=3, help="searches timed per method (best kept; fewer past 60 s)"
    )
    p.add_argument("--timeout", type=float, default=1800, help="seconds per method run")
    p.add_argument("--data-dir", type=Path, default=Path(".cache/bench_search"))
    p.add_argument("--json-out", type=Path, default=None, help="also write all rows as JSON here")
    # worker mode (internal)
    p.add_argument("--worker", choices=ALL_METHODS, help=argparse.SUPPRESS)
    p.add_argument("--gallery", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--queries", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out-idx", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def print_header(args: argparse.Namespace) -> None:
    """The run's description (date, machine, settings, load) and the table's header."""
    print(
        f"# search benchmark, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {report.cpu_description()}"
    )
    print(f"# {args.n_queries} queries, top-{args.k}, dim {args.dim}, IVF nprobe {args.nprobe}")
    print(f"# load average at start (1/5/15 min): {' / '.join(f'{v:.1f}' for v in os.getloadavg())}")
    header = (
        f"| gallery | method | build s | search s | total s | speed-up vs sklearn (search / total) "
        f"| peak RSS MB | RSS after load MB | recall@{args.k} |"
    )
    print(header)
    print("|" + "---|" * 9)


def run_methods(n: int, gpath: Path, qpath: Path, order: list[str], args) -> tuple[dict, dict]:
    """Each method on one gallery size, in its own process: ``(results by method, top-k indices by method)``."""
    results: dict[str, dict] = {}
    idx: dict[str, np.ndarray] = {}
    for m in order:
        if m == "sklearn" and n > args.sklearn_max:
            results[m] = {"method": m, "error": f"skipped (gallery > --sklearn-max {args.sklearn_max})"}
            continue
        out_idx = args.data_dir / f"idx_{m}_{n}.npy"
        res = run_worker(m, gpath, qpath, args.k, args.nprobe, out_idx, args.timeout, args.repeats)
        if "error" not in res:
            idx[m] = np.load(out_idx)
            out_idx.unlink()
        results[m] = res
    return results, idx


def table_row(r: dict, n: int, idx: dict, base: dict, k: int) -> str:
    """Complete one method's result (total, recall, speed-ups against sklearn) and return its table line."""
    m = r["method"]
    r["total_s"] = r["build_s"] + r["search_s"]
    r[f"recall@{k}"] = recall_at_k(idx[m], idx["exact"]) if "exact" in idx else None
    if "error" not in base and "search_s" in base:
        r["speedup_search"] = base["search_s"] / r["search_s"]
        r["speedup_total"] = (base["build_s"] + base["search_s"]) / r["total_s"]
        sp = f"{r['speedup_search']:.1f}x / {r['speedup_total']:.1f}x"
    else:
        sp = "n/a"
    rec = r[f"recall@{k}"]
    return (
        f"| {n:,} | {m} | {r['build_s']:.2f} | {r['search_s']:.2f} | {r['total_s']:.2f} | {sp} "
        f"| {r['peak_rss_mb']:,.0f} | {r['rss_after_load_mb']:,.0f} | {'n/a' if rec is None else f'{rec:.4f}'} |"
    )


def bench_size(n: int, methods: list[str], args: argparse.Namespace) -> list[dict]:
    """One gallery size: generate the data, run every method, print their table rows; the rows."""
    t = time.perf_counter()
    gpath, qpath = make_data(args.data_dir, n, args.n_queries, args.dim)
    gen_s = time.perf_counter() - t
    if gen_s > 1:
        print(f"# generated {n} x {args.dim} gallery in {gen_s:.1f} s", flush=True)
    order = ["exact"] + [m for m in methods if m != "exact"]  # exact first: ground truth for recall
    results, idx = run_methods(n, gpath, qpath, order, args)
    base = results.get("sklearn", {})
    rows = []
    for m in order:
        if m not in methods:
            continue
        r = results[m]
        r["gallery"] = n
        if "error" in r:
            print(f"| {n:,} | {m} | {r['error']} |||||||")
        else:
            print(table_row(r, n, idx, base, args.k), flush=True)
        rows.append(r)
    print(f"# load average after {n:,}: {os.getloadavg()[0]:.1f}", flush=True)
    if "sklearn" in idx and "exact" in idx:
        agree = recall_at_k(idx["sklearn"], idx["exact"])
        print(f"# {n:,}: sklearn top-{args.k} vs our exact top-{args.k} overlap {agree:.4f}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.worker:
        print(
            json.dumps(
                worker(
                    args.worker, args.gallery, args.queries, args.k, args.nprobe, args.out_idx, args.repeats
                )
            )
        )
        return []
    print_header(args)
    methods = [m for m in ALL_METHODS if m in args.methods]
    rows: list[dict] = [r for n in args.sizes for r in bench_size(n, methods, args)]
    if args.json_out:
        report.write_json(args.json_out, rows)
    return rows


if __name__ == "__main__":
    main()
