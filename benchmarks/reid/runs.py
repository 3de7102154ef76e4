"""What the tables share about training runs: the open-corpus runs and their overrides (species trained on, share
of the batches), the counts those shares come from, and the figures and summary a table reads from a run."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.reid.config import BenchConfig
from benchmarks.reid.harness import Bench


def pick(res: dict[str, Any], species: str) -> dict[str, float | None]:
    """One species' ``{top1, mAP, n_queries}`` from an evaluation's per-species figures (None where absent)."""
    ps = res.get("per_species", {}).get(species, {})
    return {"top1": ps.get("top1"), "mAP": ps.get("mAP"), "n_queries": ps.get("n_queries")}


def train_counts(bench: Bench, corpus: Path) -> Counter:
    """Training images per species of a corpus (as loaded for training: filtered and capped)."""
    return Counter(bench.split(corpus, "train")["species"])


def run_summary(res: dict[str, Any]) -> dict[str, Any]:
    """What the results report of one run: schedule, speed, wall time, images, validation, export, command."""
    return {
        "best_epoch": res.get("best_epoch"),
        "epochs": res.get("epochs"),
        "train_images_per_s": res.get("train_images_per_s"),
        "wall_time_s": res.get("bench_wall_s") or res.get("wall_time_s") or res.get("wall_s"),
        "train_images_seen": res.get("train_images_seen"),
        "val_best": {
            sp: m.get("top1") for sp, m in ((res.get("val_best") or {}).get("per_species") or {}).items()
        },
        "export_dir": res.get("export_dir"),
        "argv": " ".join(res.get("argv", [])),
    }


def _scaled_batches(total: int, part: int, whole: int) -> int:
    """``total`` batches scaled by the share ``part / whole`` (at least one)."""
    return max(1, round(total * part / whole))


def only_spec(c: BenchConfig, counts: Counter, sp: str) -> dict[str, Any]:
    """Training overrides of the species-specific run of table 2: same epochs, its share of the batches."""
    return {
        "species": [sp],
        "batches_per_epoch": _scaled_batches(c.batches_per_epoch, counts[sp], sum(counts.values())),
    }


def without_spec(c: BenchConfig, counts: Counter, *left_out: str) -> dict[str, Any]:
    """Training overrides of the run without ``left_out`` (tables 3 and 4; table 1's multispecies start): the
    other species, their share of batches."""
    whole = sum(counts.values())
    return {
        "species": sorted(set(counts) - set(left_out)),
        "batches_per_epoch": _scaled_batches(
            c.batches_per_epoch, whole - sum(counts[s] for s in left_out), whole
        ),
    }


def open_run_specs(bench: Bench) -> dict[str, dict[str, Any]]:
    """Every open-corpus run tables 2-4 read, with its overrides, longest first (what `parallel_runs` trains)."""
    c = bench.cfg
    counts = train_counts(bench, bench.corpora["open"])
    specs: dict[str, dict[str, Any]] = {}
    if {2, 5} & set(c.tables):
        specs["t2_multi"] = {}
    left_out = (c.zero_shot_species if 3 in c.tables else []) + (
        [c.finetune_species] if 4 in c.tables else []
    )
    for sp in dict.fromkeys(left_out):
        if sp not in counts:
            raise ValueError(f"species {sp!r} not in the open corpus; it has {sorted(counts)}")
        specs[f"t3_without_{sp}"] = without_spec(c, counts, sp)
    if 2 in c.tables:
        for sp in sorted(counts, key=lambda k: -counts[k]):
            specs[f"t2_only_{sp}"] = only_spec(c, counts, sp)
    return specs
