"""Table 4 of the real-photo benchmarks: fine-tuning on a new species with few training identities, from table 3's
model that never saw it against from the backbone's starting weights, same recipe and budget (optionally one run
per learning rate, validation choosing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.reid.config import floor_label
from benchmarks.reid.corpora import compact_corpus
from benchmarks.reid.harness import Bench
from benchmarks.reid.runs import pick, run_summary, train_counts, without_spec


def table4(bench: Bench) -> dict[str, Any]:
    """Fine-tune on a new species with few identities: from a model that never saw it vs from ImageNet."""
    c, src = bench.cfg, bench.corpora["open"]
    sp = c.finetune_species
    few = bench.work / "corpora" / f"few_{sp}_{c.finetune_identities}"
    if not (few / "README.md").is_file():
        compact_corpus(
            src,
            few,
            c.pack_size,
            c.pack_quality,
            species=[sp],
            max_train_identities=c.finetune_identities,
            seed=c.seed,
        )
    base = bench.train(f"t3_without_{sp}", src, **without_spec(c, train_counts(bench, src), sp))
    common = {
        "epochs": c.finetune_epochs,
        "batches_per_epoch": c.finetune_batches_per_epoch,
        "freeze_backbone_epochs": c.finetune_freeze_backbone_epochs,
        "lr_backbone": c.finetune_lr_backbone,
        "warmup_epochs": 0.0,
    }
    runs, grid = {}, {}
    n = c.finetune_identities  # in the run names: one work directory holds the runs of several sizes
    for label, name, start in (
        ("from multispecies (never saw it)", f"t4_{sp}_{n}_from_multi", {"init_from": base["export_dir"]}),
        ("from ImageNet", f"t4_{sp}_{n}_from_imagenet", {}),
    ):
        runs[label], grid[label] = finetune(bench, name, few, sp, **start, **common)
    rows = {k: pick(v["test"], sp) for k, v in runs.items()}
    rows["zero-shot multispecies (no fine-tuning)"] = pick(bench.leave_one_out(base["export_dir"], few), sp)
    rows[floor_label(c)] = pick(bench.leave_one_out("imagenet", few), sp)
    tr = bench.split(few, "train")
    return {
        "species": sp,
        "train_identities": len(set(tr["identity"])),
        "train_images": len(tr),
        "budget": f"{c.finetune_epochs} epochs x {c.finetune_batches_per_epoch} batches, first "
        f"{c.finetune_freeze_backbone_epochs} head-only (backbone frozen, BatchNorm kept), "
        + (
            f"lr (backbone and head) chosen per start on validation among {c.finetune_lr_grid}"
            if c.finetune_lr_grid
            else f"lr_backbone {c.finetune_lr_backbone}"
        ),
        "rows": rows,
        "runs": {k: run_summary(v) for k, v in runs.items()},
        "lr_grid": grid,
    }


def finetune(bench: Bench, name: str, corpus: Path, sp: str, **over: Any) -> tuple[dict[str, Any], dict]:
    """One fine-tuning run, or (``finetune_lr_grid``) one per learning rate with the best on validation (top-1,
    then mAP, of ``sp``) returned; the grid's validation and test figures are returned beside it."""
    lrs = bench.cfg.finetune_lr_grid
    if not lrs:
        return bench.train(name, corpus, **over), {}
    tried = {
        lr: bench.train(f"{name}_lr{lr:g}", corpus, **{**over, "lr_backbone": lr, "lr_head": lr})
        for lr in lrs
    }

    def val(res: dict[str, Any]) -> tuple[float, float]:
        m = ((res.get("val_best") or {}).get("per_species") or {}).get(sp) or {}
        return (m.get("top1") or 0.0, m.get("mAP") or 0.0)

    best = max(lrs, key=lambda lr: val(tried[lr]))  # the first of equals: the grid's order breaks ties
    table = {
        f"{lr:g}": {
            "validation": dict(zip(("top1", "mAP"), val(r), strict=True)),
            "test": pick(r["test"], sp),
        }
        | {"chosen": lr == best}
        for lr, r in tried.items()
    }
    return tried[best], table
