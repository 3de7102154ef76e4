#!/usr/bin/env python
"""Recipe ablation on validation data (issue 12): one base recipe, one change per arm, scored on validation only.

    python benchmarks/ablate_recipe.py --corpus runs/bench224/corpora/closed --out runs/ablate \\
        --base benchmarks/configs/ablate_closed224.yaml --arms base head_init=normal pooling=gem ... --parallel 2

Every arm is ``train_accelerate.main`` with the base YAML plus that arm's ``key=value`` overrides (several
separated by ``,``). The table reports, per species, the starting model's validation top-1 / mAP (the run's own
baseline, measured before its first step) and the chosen epoch's, never test figures: the defaults are picked
from it. Arms whose ``results.json`` exists are reused. ``--parallel N`` runs N arms at once, each with
``cpu_threads = cores // N`` (on 2 cores, two single-threaded runs use the machine better than one on both).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks import report

REPO = Path(__file__).resolve().parents[1]


def arm_argv(base: str, corpus: str, out: Path, arm: str, threads: int) -> list[str]:
    argv = [base, "--corpus", corpus, "--output_dir", str(out / arm_name(arm)), "--cpu_threads", str(threads)]
    for item in filter(None, arm.split(",")):
        if item == "base":
            continue
        key, _, value = item.partition("=")
        if not value:
            raise ValueError(f"arm {arm!r}: expected key=value items separated by ',', got {item!r}")
        argv += [f"--{key}", value]
    return argv


def arm_name(arm: str) -> str:
    return arm.replace("=", "-").replace(",", "+").replace("/", "_")


def run_arm(base: str, corpus: str, out: Path, arm: str, threads: int) -> dict:
    run_dir = out / arm_name(arm)
    done = run_dir / "results.json"
    if not done.is_file():
        argv = arm_argv(base, corpus, out, arm, threads)
        log = out / f"{arm_name(arm)}.log"
        t0 = time.time()
        with open(log, "w", encoding="utf-8") as fh:
            rc = subprocess.call(
                [sys.executable, str(REPO / "train_accelerate.py"), *argv], stdout=fh, stderr=fh
            )
        if rc != 0 or not done.is_file():
            raise RuntimeError(f"arm {arm!r} failed (exit {rc}); see {log}")
        res = json.loads(done.read_text(encoding="utf-8"))
        res["ablation_wall_s"] = time.time() - t0
        report.write_json(done, res, newline=True)
    return json.loads(done.read_text(encoding="utf-8"))


def _cell(m: dict | None, key: str) -> str:
    v = (m or {}).get(key)
    return "n/a" if v is None else f"{100 * v:.1f}"


def render(results: dict[str, dict], command: str) -> str:
    species = sorted(
        {sp for r in results.values() for sp in ((r.get("val_best") or {}).get("per_species") or {})}
    )
    head = "| arm | " + " | ".join(f"{sp} val top-1 (start → trained) | {sp} val mAP" for sp in species)
    head += " | mean val top-1 | best epoch | wall (min) |"
    lines = [head, "|" + "---|" * (2 * len(species) + 4)]
    for arm, r in results.items():
        base = ((r.get("baseline") or {}).get("val") or {}).get("per_species") or {}
        best = (r.get("val_best") or {}).get("per_species") or {}
        cells = []
        for sp in species:
            cells.append(f"{_cell(base.get(sp), 'top1')} → **{_cell(best.get(sp), 'top1')}**")
            cells.append(f"{_cell(base.get(sp), 'mAP')} → {_cell(best.get(sp), 'mAP')}")
        wall = r.get("ablation_wall_s") or r.get("wall_time_s") or 0
        lines.append(
            f"| `{arm}` | "
            + " | ".join(cells)
            + f" | {_cell(r.get('val_best'), 'top1')} | {r.get('best_epoch')}/{r.get('epochs')} | {wall / 60:.1f} |"
        )
    queries = {
        sp: ((next(iter(results.values())).get("val_best") or {}).get("per_species") or {})
        .get(sp, {})
        .get("n_queries")
        for sp in species
    }
    note = ", ".join(
        f"{sp}: {n} validation queries (1 query = {100 / n:.2f} points)" for sp, n in queries.items() if n
    )
    return f"Command: `{command}`\n\n{note}\n\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="base training YAML")
    p.add_argument("--corpus", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--arms", nargs="+", required=True, help="'base' or key=value[,key=value...] per arm")
    p.add_argument("--parallel", type=int, default=1)
    args = p.parse_args(argv)
    report.require_extra("train")  # every arm is a train_accelerate.py run
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    with ThreadPoolExecutor(args.parallel) as pool:
        futures = {a: pool.submit(run_arm, args.base, args.corpus, out, a, threads) for a in args.arms}
        results = {}
        for arm, fut in futures.items():
            try:
                results[arm] = fut.result()
            except RuntimeError as err:
                print(f"error: {err}", file=sys.stderr)
    md = render(results, "python benchmarks/ablate_recipe.py " + " ".join(argv or sys.argv[1:]))
    report.write_text(out / "ablation.md", md)
    report.write_json(out / "ablation.json", results, newline=True)
    print(md)
    return 0 if len(results) == len(args.arms) else 1


if __name__ == "__main__":
    raise SystemExit(main())
