"""One call of the real-photo benchmarks: the corpora, the harness, the tables in `TABLE_ORDER` (a table out of
time or failing is noted and the others go on), the results rewritten after each table, then the plots."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.reid.config import TABLE_ORDER, BenchConfig
from benchmarks.reid.corpora import prepare_corpora
from benchmarks.reid.harness import Bench, Deadline, OutOfTime
from benchmarks.reid.plots import make_plots
from benchmarks.reid.report import write_results
from benchmarks.reid.runs import open_run_specs
from benchmarks.reid.table1_closed import table1
from benchmarks.reid.table2_multispecies import table2
from benchmarks.reid.table3_zeroshot import table3
from benchmarks.reid.table4_finetune import table4
from benchmarks.reid.table5_openset import table5

logger = logging.getLogger("reid_real")  # the whole benchmark logs under the script's name


def machine() -> str:
    import torch

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    desc = f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}; load average {load} at start)"
    if torch.cuda.is_available():
        desc += f", GPU {torch.cuda.get_device_name(0)}"
    return desc + f", torch {torch.__version__}"


def use_private_datasets_cache(work: Path) -> tuple:
    """Point `datasets` at a fresh cache under ``work``; returns what `restore_datasets_cache` puts back.

    `datasets.load_dataset(dir, config)` names its Arrow cache after the directory's base name, the config and
    the data-file patterns, not the files' contents: a corpus rebuilt at the same path (or another corpus
    folder with the same name, e.g. two ``open/``) is read back stale from ``~/.cache``. Each benchmark call
    therefore starts from an empty cache of its own: a new folder under ``work/hf_datasets_cache/``, so two
    calls on one work directory at once (tables split between two jobs) never delete each other's files.
    """
    import tempfile

    root = work / "hf_datasets_cache"
    root.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix=f"call-{os.getpid()}-", dir=root))
    import datasets

    previous = (os.environ.get("HF_DATASETS_CACHE"), datasets.config.HF_DATASETS_CACHE, cache)
    os.environ["HF_DATASETS_CACHE"] = str(cache)
    datasets.config.HF_DATASETS_CACHE = cache
    return previous


def restore_datasets_cache(previous: tuple) -> None:
    """Put back the cache `use_private_datasets_cache` replaced and delete the call's own."""
    import datasets

    env, conf, cache = previous
    if env is None:
        os.environ.pop("HF_DATASETS_CACHE", None)
    else:
        os.environ["HF_DATASETS_CACHE"] = env
    datasets.config.HF_DATASETS_CACHE = conf
    shutil.rmtree(cache, ignore_errors=True)


def run_benchmarks(
    cfg: BenchConfig,
    work: Path,
    corpora_dir: Path | None,
    results_path: Path,
    command: str,
    config_name: str,
    plot_dir: Path | None = None,
) -> dict[str, Any]:
    """Every table of ``cfg`` under ``work`` (a datasets cache of its own), results at ``results_path``."""
    t0 = time.time()
    work.mkdir(parents=True, exist_ok=True)
    previous_cache = use_private_datasets_cache(work)
    try:
        return _run_benchmarks(cfg, work, corpora_dir, results_path, command, config_name, plot_dir, t0)
    finally:
        restore_datasets_cache(previous_cache)


def _run_benchmarks(
    cfg: BenchConfig,
    work: Path,
    corpora_dir: Path | None,
    results_path: Path,
    command: str,
    config_name: str,
    plot_dir: Path | None,
    t0: float,
) -> dict[str, Any]:
    """The tables in `TABLE_ORDER`, the results written after each, then the plots (``t0``: the call's start)."""
    deadline = Deadline(cfg.time_budget_s, cfg.min_run_s)
    corpora = _corpora(cfg, work, corpora_dir)
    bench = Bench(cfg=cfg, work=work, corpora=corpora, deadline=deadline)
    results = _new_results(cfg, command, config_name)
    full: dict[str, Any] = {}
    plot_dir = plot_dir or results_path.parent
    plot_dir.mkdir(parents=True, exist_ok=True)
    tag = results_path.stem
    if cfg.parallel_runs > 1 and set(cfg.tables) - {1}:
        _train_open_runs_at_once(bench)
    for num in [n for n in TABLE_ORDER if n in cfg.tables]:
        t_table = time.time()
        try:
            r = _run_table(num, bench, full)
        except OutOfTime as err:
            logger.warning("table %d not run: %s", num, err)
            results["skipped"].append(f"table {num}: {err}")
            continue
        except (ValueError, RuntimeError, FileNotFoundError) as err:
            # One table's failure (say, too few validation identities to calibrate) must not lose the others.
            logger.exception("table %d failed", num)
            results["skipped"].append(f"table {num}: failed: {type(err).__name__}: {err}")
            continue
        r["wall_time_s"] = time.time() - t_table
        full[str(num)] = r
        _record_table(results, num, r, bench, t0)
        write_results(results, results_path)
        logger.info("table %d done in %.0f s", num, r["wall_time_s"])
    results["plots"] = make_plots(full, plot_dir, tag)
    results["meta"]["wall_time_s"] = time.time() - t0
    write_results(results, results_path)
    return results


def _corpora(cfg: BenchConfig, work: Path, corpora_dir: Path | None) -> dict[str, Path]:
    """The open and closed corpora the tables need: ``corpora_dir``'s (already compacted), else built under
    ``work``."""
    needed = ({"closed"} if 1 in cfg.tables else set()) | (
        {"open"} if set(cfg.tables) - {1} or (1 in cfg.tables and cfg.closed_pretrain) else set()
    )
    if corpora_dir is not None:
        corpora = {k: corpora_dir / k for k in sorted(needed)}
        for p in corpora.values():
            if not (p / "README.md").is_file():
                raise FileNotFoundError(
                    f"--corpora {corpora_dir}: expected a compacted corpus at {p} (README.md + data/)"
                )
        return corpora
    return prepare_corpora(cfg, work, only=needed)


def _new_results(cfg: BenchConfig, command: str, config_name: str) -> dict[str, Any]:
    """The results before any table: the run's meta (date, machine, command, config, budget), no tables yet."""
    return {
        "meta": {
            "config_name": config_name,
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "command": command,
            "config": dataclasses.asdict(cfg),
            "budget": f"{cfg.backbone} ({cfg.init_weights}) at {cfg.image_size} px from {cfg.pack_size} px JPEGs; "
            f"P×K {cfg.identities_per_batch}×{cfg.images_per_identity}; open corpus capped at {cfg.cap_per_identity} "
            f"images/identity at build, {cfg.max_images_per_identity} train / {cfg.max_eval_images_per_identity} eval "
            f"per identity at load; identities kept {cfg.max_identities or 'all'}; precision {cfg.mixed_precision}",
            "wall_time_s": 0.0,
        },
        "tables": {},
        "skipped": [],
    }


def _train_open_runs_at_once(bench: Bench) -> None:
    """Train every open-corpus run of tables 2-4, ``parallel_runs`` at a time, before the tables read them."""
    cfg = bench.cfg
    specs = open_run_specs(bench)
    try:
        bench.train_parallel(bench.corpora["open"], specs, at_once=cfg.parallel_runs)
        logger.info("open-corpus runs trained, %d at a time: %s", cfg.parallel_runs, sorted(specs))
    except OutOfTime as err:  # the tables then train what time allows, one after another
        logger.warning("open-corpus runs not trained in parallel: %s", err)


def _run_table(num: int, bench: Bench, full: dict[str, Any]) -> dict[str, Any]:
    """Table ``num``'s results (table 3 reads table 2's, in ``full``, when it ran)."""
    if num == 1:
        return table1(bench)
    if num == 2:
        return table2(bench)
    if num == 3:
        return table3(bench, full.get("2"))
    if num == 4:
        return table4(bench)
    return table5(bench)


def _record_table(results: dict[str, Any], num: int, r: dict[str, Any], bench: Bench, t0: float) -> None:
    """Put a finished table (its ``_``-keys left out) and the call's wall and training times into ``results``."""
    results["tables"][str(num)] = {k: v for k, v in r.items() if not k.startswith("_")}
    results["meta"]["wall_time_s"] = time.time() - t0
    results["run_times_s"] = bench.run_times
    results["meta"]["training_runs_wall_s"] = sum(v or 0.0 for v in bench.used_runs.values())
    results["meta"]["training_runs"] = len(bench.used_runs)
