#!/usr/bin/env python
"""The paper's claims measured on real photos (issue 6, tables 1-5), CPU or GPU, under one budget config.

    python benchmarks/reid_real.py --config benchmarks/configs/bench_cpu.yaml                 # 2 CPU cores, reduced
    python benchmarks/reid_real.py --config benchmarks/configs/bench_gpu.yaml --corpora .gpu/corpora   # packed subset
    python benchmarks/reid_real.py --config benchmarks/configs/bench_smoke.yaml --out /tmp/smoke     # synthetic, seconds

Tables (each a set of ``train_accelerate.main`` runs plus evaluations of their exported feature extractors):

1. MegaDescriptor's closed-set LionData / NyalaData splits: test images query train + validation (= the
   benchmark's training set), 1-NN cosine top-1, same-encounter matches *kept* as MegaDescriptor does
   (a stricter figure with them excluded is reported too). Ours (sub-center ArcFace k=3, dynamic margins) vs
   MegaDescriptor's loss (plain ArcFace, k=1, m=0.5 rad, s=64) with the same backbone, data and budget, vs
   ImageNet features alone, vs the published MegaDescriptor table.
2. Multispecies vs species-specific on the identity-disjoint ("open") split: one model on all species against
   one model per species; same epochs (each species-specific model gets ``batches_per_epoch`` scaled by its
   share of the training images, so the total number of steps equals the multispecies model's); per-species
   top-1 and mAP with the paper's leave-one-out protocol on test identities.
3. Zero-shot: a model trained without species X, evaluated on X's test identities; against ImageNet features,
   the species-specific and the multispecies model of table 2.
4. Fine-tuning on a new species with few training identities: from the table-3 model that never saw it vs
   from ImageNet weights, same recipe and budget.
5. Open set: the multispecies model on test identities (never trained on): per species, a fraction of the
   identities is unknown (all their images are queries) and each known identity gives one query; the
   new-individual threshold is calibrated on the validation identities the same way, BAKS / BAUS / AUROC on test.

Every run directory and result lands under ``--out``; ``results.json`` and ``results.md`` are rewritten after
each table, so a run stopped by its time budget keeps what it finished. Runs whose ``results.json`` exists are
reused (delete the run directory to redo one). See docs/benchmarks_real.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from benchmarks.reid.config import (
    PUBLISHED_MEGADESCRIPTOR,
    REPO,
    TABLE_ORDER,
    BenchConfig,
    floor_label,
    load_bench_config,
)
from benchmarks.reid.corpora import build_source_corpus, compact_corpus, prepare_corpora
from benchmarks.reid.harness import Bench, Deadline, OutOfTime
from benchmarks.reid.report import render_markdown
from benchmarks.reid.runner import machine, restore_datasets_cache, run_benchmarks, use_private_datasets_cache
from benchmarks.reid.runs import open_run_specs
from benchmarks.reid.table1_closed import flip_export, table1
from benchmarks.reid.table2_multispecies import table2
from benchmarks.reid.table3_zeroshot import table3
from benchmarks.reid.table4_finetune import table4
from benchmarks.reid.table5_openset import open_set_queries, table5

# the benchmark's names, importable from this script as before it became the benchmarks.reid package
__all__ = [
    "PUBLISHED_MEGADESCRIPTOR",
    "REPO",
    "TABLE_ORDER",
    "Bench",
    "BenchConfig",
    "Deadline",
    "OutOfTime",
    "build_source_corpus",
    "compact_corpus",
    "flip_export",
    "floor_label",
    "load_bench_config",
    "machine",
    "main",
    "open_run_specs",
    "open_set_queries",
    "prepare_corpora",
    "render_markdown",
    "restore_datasets_cache",
    "run_benchmarks",
    "table1",
    "table2",
    "table3",
    "table4",
    "table5",
    "use_private_datasets_cache",
]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmarks the command line asks for, print the results page, return the results."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config", default=str(REPO / "benchmarks" / "configs" / "bench_cpu.yaml"), help="BenchConfig YAML"
    )
    p.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config fields (YAML values)"
    )
    p.add_argument("--out", default="runs/bench_real", help="work directory (corpora, runs)")
    p.add_argument(
        "--corpora", default=None, help="already compacted corpora (open/, closed/), e.g. a GPU pack"
    )
    p.add_argument(
        "--results", default=None, help="results file stem (.json/.md written; default <out>/results)"
    )
    p.add_argument("--plots", default=None, help="folder for the plots (default: beside --results)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads of the main process (1 is several times faster on a shared 2-core box)",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    cfg = load_bench_config(args.config, args.set)
    out = Path(args.out)
    results_path = Path(args.results) if args.results else out / "results"
    command = "python benchmarks/reid_real.py " + " ".join(argv if argv is not None else sys.argv[1:])
    res = run_benchmarks(
        cfg,
        out,
        Path(args.corpora) if args.corpora else None,
        results_path,
        command,
        Path(args.config).stem,
        Path(args.plots) if args.plots else None,
    )
    print(render_markdown(res))
    return res


if __name__ == "__main__":
    from animal_reid.fastmalloc import reexec_with_fast_malloc

    # runs trained in this process (closed_parallel_runs / parallel_runs 1) get the allocator that
    # train_accelerate.py and the parallel runs get: jemalloc, else glibc huge pages (BENCHMARKS.md §2c)
    reexec_with_fast_malloc()
    main()
