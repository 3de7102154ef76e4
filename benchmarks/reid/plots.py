"""The plots of the real-photo benchmarks: table 1's closed-set top-1 and CMC, table 2's CMC and per-species
top-1, table 5's score histograms of known and new individuals."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from animal_reid import plots

logger = logging.getLogger("reid_real")  # the whole benchmark logs under the script's name


def make_plots(tables: dict[str, Any], plot_dir: Path, tag: str) -> list[str]:
    """Every plot the finished tables support, as ``<plot_dir>/<tag>_table<N>_*.png``; the paths written.

    A failing plot is logged and ends the plotting (the figures are already saved); the plots made before it stay.
    """
    made: list[str] = []
    try:
        for plot_table in (_table1_plots, _table2_plots, _table5_plots):
            plot_table(tables, plot_dir, tag, made)
    except Exception as err:  # a plot must not lose the figures
        logger.warning("plotting failed: %s", err)
    return made


def _table1_plots(tables: dict[str, Any], plot_dir: Path, tag: str, made: list[str]) -> None:
    """Table 1's closed-set top-1 per species and model, and its CMC curves (appended to ``made``)."""
    if "1" in tables and "_curves" in tables["1"]:
        per = {
            label: {"per_species": {s: v for s, v in rows["megadescriptor"].items()}}
            for label, rows in tables["1"]["rows"].items()
        }
        made.append(
            str(
                plots.plot_per_species(
                    per,
                    plot_dir / f"{tag}_table1_closed_top1.png",
                    metrics=("top1",),
                    title="Closed set top-1 (MegaDescriptor splits)",
                )
            )
        )
    if "1" in tables and tables["1"].get("_curves"):
        made.append(
            str(
                plots.plot_cmc(
                    tables["1"]["_curves"],
                    plot_dir / f"{tag}_table1_cmc.png",
                    title="CMC, closed set (test queries train+val), species averaged",
                )
            )
        )


def _table2_plots(tables: dict[str, Any], plot_dir: Path, tag: str, made: list[str]) -> None:
    """Table 2's CMC of the multispecies model and its per-species top-1 against the species-specific models."""
    if "2" not in tables or "_multi_eval" not in tables["2"]:
        return
    made.append(
        str(
            plots.plot_cmc(
                tables["2"]["_multi_eval"],
                plot_dir / f"{tag}_table2_cmc_multispecies.png",
                title="CMC, multispecies model, test identities",
            )
        )
    )
    per = {
        "multispecies": {"per_species": {s: r["multispecies"] for s, r in tables["2"]["rows"].items()}},
        "species-specific": {
            "per_species": {s: r["species_specific"] for s, r in tables["2"]["rows"].items()}
        },
    }
    made.append(
        str(
            plots.plot_per_species(
                per,
                plot_dir / f"{tag}_table2_per_species.png",
                metrics=("top1",),
                title="Multispecies vs species-specific top-1",
            )
        )
    )


def _table5_plots(tables: dict[str, Any], plot_dir: Path, tag: str, made: list[str]) -> None:
    """Table 5's best-match scores of known and new individuals (test), with the multispecies model's threshold."""
    if "5" not in tables or "_scores" not in tables["5"]:
        return
    test, thr = tables["5"]["_scores"]["multispecies"]
    u = test["unknown"].astype(bool)
    made.append(
        str(
            plots.plot_score_histograms(
                test["best_score"][~u].astype(float),
                test["best_score"][u].astype(float),
                plot_dir / f"{tag}_table5_openset_scores.png",
                threshold=thr,
                title="Best-match cosine: known vs new individuals (test)",
                labels=("known individual", "new individual"),
            )
        )
    )
