"""Table 3 of the real-photo benchmarks: zero-shot, a model trained without species X evaluated on X's test
identities, against the backbone's features and table 2's species-specific and multispecies models."""

from __future__ import annotations

import logging
from typing import Any

from benchmarks.reid.harness import Bench, OutOfTime
from benchmarks.reid.runs import pick, run_summary, train_counts, without_spec

logger = logging.getLogger("reid_real")  # the whole benchmark logs under the script's name


def table3(bench: Bench, t2: dict[str, Any] | None) -> dict[str, Any]:
    """Zero-shot: train without species X, evaluate on X."""
    c, corpus = bench.cfg, bench.corpora["open"]
    counts = train_counts(bench, corpus)
    floor = bench.leave_one_out("imagenet", corpus)
    rows = {}
    runs = {}
    for sp in c.zero_shot_species:
        if sp not in counts:
            raise ValueError(f"zero_shot_species {sp!r} not in the open corpus; it has {sorted(counts)}")
        row: dict[str, Any] = {"imagenet": pick(floor, sp)}
        try:
            res = bench.train(f"t3_without_{sp}", corpus, **without_spec(c, counts, sp))
            runs[sp] = res
            row["zero_shot"] = pick(bench.leave_one_out(res["export_dir"], corpus, [sp]), sp)
        except OutOfTime as err:
            logger.warning("table 3: %s", err)
            row["zero_shot"] = {"top1": None, "mAP": None}
        if t2 is not None:
            row["species_specific"] = t2["rows"][sp]["species_specific"]
            row["multispecies"] = t2["rows"][sp]["multispecies"]
        rows[sp] = row
    return {
        "protocol": "leave-one-out within species on the held-out species' test identities",
        "rows": rows,
        "runs": {f"without_{k}": run_summary(v) for k, v in runs.items()},
    }
