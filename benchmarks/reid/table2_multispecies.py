"""Table 2 of the real-photo benchmarks: one multispecies model against one model per species on the
identity-disjoint split, same epochs (so the same total steps), leave-one-out on test identities."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from benchmarks.reid.harness import Bench, OutOfTime
from benchmarks.reid.runs import only_spec, pick, run_summary, train_counts

logger = logging.getLogger("reid_real")  # the whole benchmark logs under the script's name


def table2(bench: Bench) -> dict[str, Any]:
    """One multispecies model vs one model per species, same epochs (so the same total steps)."""
    c, corpus = bench.cfg, bench.corpora["open"]
    counts = train_counts(bench, corpus)
    multi = bench.train("t2_multi", corpus)
    multi_eval = bench.leave_one_out(multi["export_dir"], corpus)
    floor = bench.leave_one_out("imagenet", corpus)
    rows: dict[str, Any] = {}
    specific_runs = {}
    for sp in sorted(counts):
        spec = only_spec(c, counts, sp)
        b = spec["batches_per_epoch"]
        try:
            res = bench.train(f"t2_only_{sp}", corpus, **spec)
        except OutOfTime as err:
            logger.warning("table 2: %s", err)
            res = None
        specific_runs[sp] = res
        spec = pick(res["test"], sp) if res else {"top1": None, "mAP": None}
        rows[sp] = {
            "train_images": counts[sp],
            "specific_batches_per_epoch": b,
            "multispecies": pick(multi_eval, sp),
            "species_specific": spec,
            "imagenet": pick(floor, sp),
        }
    gains = {
        m: [
            r["multispecies"][m] - r["species_specific"][m]
            for r in rows.values()
            if r["multispecies"][m] is not None and r["species_specific"][m] is not None
        ]
        for m in ("top1", "mAP")
    }
    return {
        "protocol": "leave-one-out within species on test identities (never trained on), same-encounter excluded",
        "budget": f"same epochs: multispecies {c.epochs} x {c.batches_per_epoch} batches; species-specific "
        f"{c.epochs} x round({c.batches_per_epoch} x species share of train images)",
        "rows": rows,
        "mean_gain": {m: (float(np.mean(v)) if v else None) for m, v in gains.items()},
        "n_species_compared": len(gains["top1"]),
        "runs": {"multispecies": run_summary(multi)}
        | {f"only_{k}": run_summary(v) for k, v in specific_runs.items() if v},
        "_multi_eval": multi_eval,
    }
