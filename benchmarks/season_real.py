"""A season from the real photos, scored: known animals recognised by encounter, new animals grouped (issue 32).

    python -m benchmarks.season_real --model ../shared/models/real6-lite0-224 [--corpus corpus/real]

Per model (the trained export, and ImageNet Lite0 features in the same run), two seasons are built the same way
(:mod:`benchmarks.season.construct`): one from the open split's **validation** identities, on which the fusion rule,
the calibration target and the clustering threshold are chosen (grid below, :func:`benchmarks.season.evaluate.
objective`), and one from the **test** identities, run once with those choices and reported: per species and
pooled, known animals right per encounter and per image (each image matched alone), unsure and called-new shares,
with and without viewpoint-aware matching; new animals called new, ARI / AMI / pairwise precision and recall;
the calibration's promised known-called-new rate against the one observed. The season's photos are EXIF-stamped
copies in a scratch folder under ``runs/`` (git-ignored), deleted at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from benchmarks.common import DEFAULT_DATA, REPO, imagenet_lite0
from benchmarks.report import finish
from benchmarks.season.construct import build_season
from benchmarks.season.evaluate import objective, score

RULES = ("max", "mean", "top2mean")
TARGETS = (0.05, 0.10, 0.20)
OFFSETS = (-0.10, -0.05, 0.0, 0.05)
logger = logging.getLogger("season_real")


def load_model(spec: str):
    """``(model, processor, name)``: an export folder, or ``imagenet`` for ImageNet Lite0 features at 224 px."""
    if spec == "imagenet":
        return imagenet_lite0(224)
    from modeling import AnimalReIDImageProcessor, AnimalReIDModel

    return AnimalReIDModel.from_pretrained(spec).eval(), AnimalReIDImageProcessor.from_pretrained(spec), spec


def embedded_season(identifier, season, species: list[str]) -> dict:
    """Ingest the season's MegaDetector JSON, embed its annotations and the catalogue."""
    from animal_reid.identify import ImageItem
    from animal_reid.season.ingest_megadetector import ingest_megadetector
    from animal_reid.season.pipeline import embed_annotations

    anns, skips = ingest_megadetector(
        season.megadetector_json, season.scratch, species_map={s: s for s in species}
    )
    kept, emb = embed_annotations(identifier, anns)
    anns = [anns[i] for i in kept]
    truth = {a.annotation_id: season.truth[Path(a.photo).resolve().relative_to(season.scratch.resolve()).as_posix()]
             for a in anns}  # fmt: skip
    items = [ImageItem(str(p.path), p.image_id, p.identity, species=p.species, encounter=p.encounter)
             for p in season.catalogue]  # fmt: skip
    cat_kept, cat_emb = identifier.embed_usable(items, None, "gallery")
    cat = [season.catalogue[i] for i in cat_kept]
    return {"annotations": anns, "embeddings": emb, "truth": truth, "skips": len(skips), "catalogue": cat,
            "catalogue_embeddings": cat_emb, "known": season.known}  # fmt: skip


def calibrated(run: dict, rule: str, target: float, viewpoint_aware: bool = True):
    from animal_reid.season.calibration import calibrate

    cat = run["catalogue"]
    return calibrate(run["catalogue_embeddings"], [p.identity for p in cat], [p.species for p in cat],
                     [p.encounter for p in cat], [p.viewpoint for p in cat] if viewpoint_aware else None,
                     max_known_called_new=target, max_wrong_known=target, rule=rule)  # fmt: skip


def season_result(run: dict, bands, settings, alone: bool = False, species=None) -> dict:
    """Decide and discover with ``settings``; scored (``alone``: every image its own encounter)."""
    from animal_reid.season.matching import MatchCatalogue
    from animal_reid.season.pipeline import season_assignments

    cat = run["catalogue"]
    catalogue = MatchCatalogue(run["catalogue_embeddings"], [p.identity for p in cat], [p.species for p in cat],
                               [p.viewpoint for p in cat] if settings.viewpoint_aware else None)  # fmt: skip
    anns = run["annotations"]
    if alone:
        anns = [dataclasses.replace(a, encounter=f"alone:{a.annotation_id}") for a in anns]
    anns = [dataclasses.replace(a, viewpoint=run["truth"][a.annotation_id].viewpoint) for a in anns]
    decided, assignments = season_assignments(anns, run["embeddings"], catalogue, bands, settings)
    truth = {k: p.identity for k, p in run["truth"].items()}
    return score(decided, assignments, truth, run["known"], species)


def choose(run: dict) -> tuple[dict, list[dict]]:
    """The grid on the validation season: the best (rule, target, offset) by :func:`objective`."""
    from animal_reid.season.pipeline import SeasonSettings

    rows = []
    for rule, target in itertools.product(RULES, TARGETS):
        bands = calibrated(run, rule, target)
        for offset in OFFSETS:
            settings = SeasonSettings(fusion=rule, cluster_offset=offset)
            res = season_result(run, bands, settings)
            rows.append(
                {"rule": rule, "target": target, "offset": offset, "objective": objective(res), **res}
            )
    best = max(rows, key=lambda r: r["objective"])
    return {k: best[k] for k in ("rule", "target", "offset")}, rows


def report_test(run: dict, choice: dict) -> dict:
    """The test season with the validation's choices: pooled and per species, the variants, the calibration."""
    from animal_reid.season.pipeline import SeasonSettings

    settings = SeasonSettings(fusion=choice["rule"], cluster_offset=choice["offset"])
    bands = calibrated(run, choice["rule"], choice["target"])
    blind = dataclasses.replace(settings, viewpoint_aware=False)
    blind_bands = calibrated(run, choice["rule"], choice["target"], viewpoint_aware=False)
    species = sorted({a.species for a in run["annotations"]})
    out = {"pooled": season_result(run, bands, settings), "per_species": {}}
    out["pooled_per_image"] = season_result(run, bands, settings, alone=True)["known"]
    out["pooled_viewpoint_blind"] = season_result(run, blind_bands, blind)
    for sp in species:
        res = season_result(run, bands, settings, species=sp)
        res["known_per_image"] = season_result(run, bands, settings, alone=True, species=sp)["known"]
        if sp in ("lion", "nyala"):
            res["viewpoint_blind"] = season_result(run, blind_bands, blind, species=sp)
        res["promised_known_called_new"] = bands.band_for(sp).expected.get("known_called_new")
        out["per_species"][sp] = res
    out["promised_known_called_new"] = bands.default.expected.get("known_called_new")
    return out


def run_model(spec: str, args) -> dict:
    from animal_reid.identify import Identifier

    model, proc, name = load_model(spec)
    identifier = Identifier(model, proc, batch_size=32)
    out = {"model": name}
    for split in ("validation", "test"):
        scratch = REPO / "runs" / "season_scratch" / split
        shutil.rmtree(scratch, ignore_errors=True)
        t0 = time.time()
        season = build_season(
            Path(args.corpus), split, Path(args.data_root), scratch, args.known_share, args.seed
        )
        species = sorted({p.species for p in season.season})
        run = embedded_season(identifier, season, species)
        out[f"{split}_sizes"] = {"season_annotations": len(run["annotations"]), "catalogue": len(run["catalogue"]),
                                 "known_identities": len(season.known), "seconds_to_embed": time.time() - t0}  # fmt: skip
        if split == "validation":
            out["choice"], out["validation_grid"] = choose(run)
        else:
            out["test"] = report_test(run, out["choice"])
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(REPO.parent / "shared" / "models" / "real6-lite0-224"))
    p.add_argument("--corpus", default=str(REPO / "corpus" / "real"))
    p.add_argument("--data-root", default=str(DEFAULT_DATA))
    p.add_argument("--known-share", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "season_real.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    np.seterr(all="ignore")
    results = {"models": [run_model(spec, args) for spec in (args.model, "imagenet")]}
    finish(results, Path(args.out), "Season from the real photos (issue 32)", "\n".join(tables(results)))


def tables(results: dict) -> list[str]:
    """Markdown rows: per model and species, the test season's headline figures."""
    lines = ["| model | species | known: right / encounter | right / image | unsure | new: called new | ARI | AMI "
             "| pair P | pair R | promised / observed known called new |", "|" + "---|" * 11]  # fmt: skip
    for m in results["models"]:
        t = m["test"]
        for sp, r in [("pooled", t["pooled"]), *t["per_species"].items()]:
            k, n = r["known"], r["new"]
            img = t["pooled_per_image"] if sp == "pooled" else r["known_per_image"]
            promised = (
                t["promised_known_called_new"] if sp == "pooled" else r["promised_known_called_new"]
            ) or {}
            lines.append(
                f"| {Path(m['model']).name[:28]} | {sp} | {k['right_per_encounter']:.3f} ({k['encounters']}) | "
                f"{img['right_per_image']:.3f} ({img['images']}) | {k['unsure']:.3f} | {n['called_new']:.3f} "
                f"({n['images']}) | {n.get('ari', float('nan')):.3f} | {n.get('ami', float('nan')):.3f} | "
                f"{n.get('pairwise_precision', float('nan')):.3f} | {n.get('pairwise_recall', float('nan')):.3f} | "
                f"{(promised.get('rate') or 0):.3f} / {k['called_new']:.3f} |"
            )
    return lines


if __name__ == "__main__":
    main()
