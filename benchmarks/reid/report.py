"""The results of the real-photo benchmarks as a Markdown page (one section per table) and their JSON/Markdown
files, rewritten after each table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import write_results as write_json_and_markdown


def render_markdown(results: dict[str, Any]) -> str:
    """The results page: the run's header, a section per table run (in table order), then what was not run."""
    lines = _header_lines(results["meta"])
    t = results["tables"]
    for num, section in (
        ("1", _table1_lines),
        ("2", _table2_lines),
        ("3", _table3_lines),
        ("4", _table4_lines),
        ("5", _table5_lines),
    ):
        if num in t:
            lines += section(t[num])
    if results.get("skipped"):
        lines += ["## Not run", ""] + [f"- {s}" for s in results["skipped"]] + [""]
    return "\n".join(lines)


def _f(x: float | None, pct: bool = True) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "–"
    return f"{x * 100:.1f}" if pct else f"{x:.3f}"


def _top1_map(m: dict[str, Any] | None) -> str:
    m = m or {}
    return f"{_f(m.get('top1'))} / {_f(m.get('mAP'))}"


def _header_lines(meta: dict[str, Any]) -> list[str]:
    """The page's title and the run's date, machine, wall time, command and budget."""
    return [
        f"# Real-photo benchmarks ({meta['config_name']})",
        "",
        f"- date: {meta['date']}; machine: {meta['machine']}; wall time of this call: {meta['wall_time_s']:.0f} s; "
        f"training runs used: {meta.get('training_runs', '?')}, {meta.get('training_runs_wall_s', 0):.0f} s of training "
        "wall time in all (runs reused from earlier calls included)",
        f"- command: `{meta['command']}`",
        f"- budget: {meta['budget']}",
        "",
    ]


def _table1_lines(r: dict[str, Any]) -> list[str]:
    """Table 1's section: the closed-set grid (ours, baselines, published), then each run's notes."""
    lines = [
        "## 1. Closed set, MegaDescriptor splits (top-1 %, test queries train+val)",
        "",
        r.get("protocol", ""),
        "",
    ]
    if "error" in r:
        return lines + [f"not run: {r['error']}", ""]
    return lines + _table1_grid(r) + _table1_notes(r)


def _table1_grid(r: dict[str, Any]) -> list[str]:
    """Table 1's grid: top-1, mAP and strict top-1 per species and model, the published rows, points per query."""
    sps = r["species"]
    lines = ["| model | " + " | ".join(f"{s} top-1 | {s} mAP | {s} top-1 strict" for s in sps) + " |"]
    lines += ["|---" * (1 + 3 * len(sps)) + "|"]
    for label, per in r["rows"].items():
        cells = []
        for s in sps:
            md = per["megadescriptor"][s]
            cells += [_f(md["top1"]), _f(md["mAP"]), _f(per["strict"][s]["top1"])]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for name, vals in r["published"].items():
        cells = []
        for s in sps:
            cells += [f"{vals[s]:.1f} (published)" if s in vals else "–", "–", "–"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    first = next(iter(r["rows"].values()))["megadescriptor"]
    per_point = ", ".join(
        f"{s}: {first[s]['n_queries']} test queries, 1 query = {100 / first[s]['n_queries']:.2f} points"
        for s in sps
        if first[s].get("n_queries")
    )
    return lines + ["", per_point, ""]


def _table1_notes(r: dict[str, Any]) -> list[str]:
    """Table 1's notes: each run's images, time and validation; test-time flip validation; the multispecies start."""
    lines = []
    for label, run in r.get("runs", {}).items():
        val = ", ".join(f"{sp} {_f(v)}" for sp, v in (run.get("val_best") or {}).items()) or "n/a"
        lines.append(
            f"- {label}: {run.get('train_images_seen')} training images, "
            f"{(run.get('wall_time_s') or 0) / 60:.0f} min; validation top-1 of its chosen epoch: {val}"
        )
    for label, per in (r.get("test_time_flip_validation") or {}).items():
        val = ", ".join(f"{sp} {_f(m['top1'])} / {_f(m['mAP'])}" for sp, m in per.items())
        lines.append(f"- {label}: validation top-1 / mAP (against train): {val}")
    if r.get("multispecies_start"):
        run = r["multispecies_start"]
        val = ", ".join(f"{sp} {_f(v)}" for sp, v in (run.get("val_best") or {}).items())
        lines.append(
            f"- the multispecies start (never saw {', '.join(r['species'])}): {run.get('train_images_seen')} training "
            f"images, {(run.get('wall_time_s') or 0) / 60:.0f} min; validation top-1 (leave-one-out) of "
            f"its chosen epoch: {val}"
        )
    lines.append("")
    return lines


def _table2_lines(r: dict[str, Any]) -> list[str]:
    """Table 2's section: per species, the multispecies, species-specific and ImageNet figures, the mean gain."""
    lines = [
        "## 2. Multispecies vs species-specific (test identities, leave-one-out)",
        "",
        r.get("budget", ""),
        "",
    ]
    if "error" in r:
        return lines + [f"not run: {r['error']}", ""]
    lines += [
        "| species | train images | multi top-1 | specific top-1 | ImageNet top-1 | multi mAP | specific mAP "
        "| ImageNet mAP |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for sp, row in r["rows"].items():
        m, s, f = row["multispecies"], row["species_specific"], row.get("imagenet", {})
        lines.append(
            f"| {sp} | {row['train_images']} | {_f(m['top1'])} | {_f(s['top1'])} | {_f(f.get('top1'))} | "
            f"{_f(m['mAP'])} | {_f(s['mAP'])} | {_f(f.get('mAP'))} |"
        )
    g = r["mean_gain"]
    return lines + [
        "",
        f"Mean gain of the multispecies model: top-1 {_f(g['top1'])} points, mAP {_f(g['mAP'])} points "
        f"over {r['n_species_compared']} species.",
        "",
    ]


def _table3_lines(r: dict[str, Any]) -> list[str]:
    """Table 3's section: per held-out species, the zero-shot model against the other models, the queries and
    whether zero-shot beats the ImageNet features in top-1 and mAP (the win rule; a tie loses)."""
    lines = ["## 3. Zero-shot on a species left out of training (top-1 / mAP %)", ""]
    if "error" in r:
        return lines + [f"not run: {r['error']}", ""]
    lines += [
        "| held-out species | test queries | ImageNet features | zero-shot (trained without it) | species-specific "
        "| multispecies (saw it) | zero-shot above ImageNet in top-1 and mAP |",
        "|---|---|---|---|---|---|---|",
    ]
    for sp, row in r["rows"].items():
        cells = [_top1_map(row.get(k)) for k in ("imagenet", "zero_shot", "species_specific", "multispecies")]
        n = (row.get("zero_shot") or {}).get("n_queries") or (row.get("imagenet") or {}).get("n_queries")
        lines.append(f"| {sp} | {n or '–'} | " + " | ".join(cells) + f" | {_zero_shot_wins(row)} |")
    lines.append("")
    return lines


def _zero_shot_wins(row: dict[str, Any]) -> str:
    """ "yes" / "no" by table 3's rule (top-1 and mAP both above the ImageNet features'), "–" when unmeasured."""
    zs, floor = row.get("zero_shot") or {}, row.get("imagenet") or {}
    values = [zs.get(k) for k in ("top1", "mAP")] + [floor.get(k) for k in ("top1", "mAP")]
    if any(v is None for v in values):
        return "–"
    return "yes" if zs["top1"] > floor["top1"] and zs["mAP"] > floor["mAP"] else "no"


def _table4_lines(r: dict[str, Any]) -> list[str]:
    """Table 4's section: the new species's data and budget, each start's figures, the learning-rate grid."""
    lines = ["## 4. Fine-tuning on a new species with few identities (top-1 / mAP %)", ""]
    if "error" in r:
        return lines + [f"not run: {r['error']}", ""]
    lines += [
        f"species {r['species']}: {r['train_identities']} training identities, {r['train_images']} images; {r['budget']}",
        "",
    ]
    lines += ["| start | top-1 | mAP |", "|---|---|---|"]
    for label, m in r["rows"].items():
        lines.append(f"| {label} | {_f(m['top1'])} | {_f(m['mAP'])} |")
    return lines + ["", *lr_grid_lines(r.get("lr_grid") or {})]


def lr_grid_lines(grid: dict[str, dict]) -> list[str]:
    """Table 4's learning-rate grid: each start's validation and test figures per rate, the chosen one marked."""
    if not any(grid.values()):
        return []
    lines = [
        "Learning rate chosen per start on validation (top-1, then mAP):",
        "",
        "| start | lr | validation top-1 / mAP | test top-1 / mAP |",
        "|---|---|---|---|",
    ]
    for start, rates in grid.items():
        for lr, g in rates.items():
            mark = " (chosen)" if g["chosen"] else ""
            lines.append(f"| {start} | {lr}{mark} | {_top1_map(g['validation'])} | {_top1_map(g['test'])} |")
    return [*lines, ""]


def _table5_lines(r: dict[str, Any]) -> list[str]:
    """Table 5's section: per model, the calibration chosen on validation and its open-set figures on test."""
    lines = [
        "## 5. Open set: new-individual decision on identities held out of training",
        "",
        r.get("protocol", ""),
        "",
    ]
    if "error" in r:
        return lines + [f"not run: {r['error']}", ""]
    lines += [
        "| model | calibration (chosen on validation) | BAKS | BAUS | sqrt(BAKS·BAUS) | AUROC | "
        "test queries (known+unknown) | global threshold |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, rep in r["rows"].items():
        cal = rep.get("calibration", {})
        val = ", ".join(f"{k} {_f(v)}" for k, v in cal.get("validation_geometric_mean", {}).items())
        lines.append(
            f"| {label} | {cal.get('chosen', 'validation queries')}{f' (validation: {val})' if val else ''} | "
            f"{_f(rep.get('BAKS'))} | {_f(rep.get('BAUS'))} | {_f(rep.get('geometric_mean'))} | "
            f"{_f(rep.get('AUROC'), pct=False)} | {rep['n_queries']['test']} | {rep['threshold']['global_threshold']:.3f} |"
        )
    return lines + [""] + _table5_species_lines(r["rows"])


def _table5_species_lines(rows: dict[str, Any]) -> list[str]:
    """Per species and model: sqrt(BAKS·BAUS) (BAKS / BAUS) on test, and the species' known + unknown queries."""
    species = sorted({sp for rep in rows.values() for sp in rep.get("per_species", {})})
    if not species:
        return []
    lines = [
        "Per species on test, sqrt(BAKS·BAUS) (BAKS / BAUS) %, with the same calibration as above:",
        "",
        "| species | known + unknown queries | " + " | ".join(rows) + " |",
        "|---|---|" + "---|" * len(rows),
    ]
    for sp in species:
        reps = [rep.get("per_species", {}).get(sp, {}) for rep in rows.values()]
        first = next((m for m in reps if m), {})
        cells = [f"{_f(m.get('geometric_mean'))} ({_f(m.get('BAKS'))} / {_f(m.get('BAUS'))})" for m in reps]
        lines.append(
            f"| {sp} | {first.get('n_known', 0)} + {first.get('n_unknown', 0)} | " + " | ".join(cells) + " |"
        )
    return lines + [""]


def write_results(results: dict[str, Any], path: Path) -> None:
    """``results`` as ``<path>.json`` and their page as ``<path>.md`` (numpy values and paths made plain)."""
    write_json_and_markdown(
        path.with_suffix(".json"), results, render_markdown(results), newline=True, default=json_default
    )


def json_default(o: Any) -> Any:
    """JSON form of what the results hold beside plain values: numpy scalars and arrays, paths."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
