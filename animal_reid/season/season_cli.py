"""``animal-reid season``: a season's photos and a catalogue in; decisions, new individuals, exports and a report out.

    animal-reid season --megadetector md.json --images photos/ --species-map species.csv \\
        --model runs/export --catalogue catalogue.csv --out season_2026/

Steps: every option and path checked (before any embedding); ``--out`` locked and checked under the output policy;
the input ingested (:mod:`animal_reid.season.ingest_cli`'s options); the catalogue embedded and, without
``--bands``, calibrated at the stated targets (:mod:`animal_reid.season.calibrate_cli`'s options); the season
embedded (identify's cache: a rerun embeds only new photos), grouped into encounters, matched, decided and the new
animals clustered (:mod:`animal_reid.season.pipeline`); then written, all at once: ``annotations.csv`` and the
other exports (:mod:`animal_reid.season.exports`), ``bands.json``, ``skipped.csv`` and ``report.html``.
Errors: one ``error:`` line, exit 2 for bad arguments or a refused ``--out``, 1 for failures.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import sys
from pathlib import Path

from ..cli import UsageError
from ..manifest import OutputError, OutputFolder

TOOL = "animal-reid season"
logger = logging.getLogger(__name__)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    from .calibrate_cli import add_catalogue_arguments
    from .ingest_cli import add_input_arguments

    p = _Parser(prog="animal-reid season", description=__doc__.splitlines()[0])
    add_input_arguments(p)
    add_catalogue_arguments(p)
    p.add_argument(
        "--bands", default=None, help="decision bands JSON (animal-reid calibrate) instead of calibrating"
    )
    p.add_argument(
        "--gap", type=float, default=600.0, help="encounters: largest gap in seconds (default 600)"
    )
    p.add_argument("--cluster-offset", type=float, default=0.0,
                   help="discovery similarity: each species' known_above band plus this (default 0)")  # fmt: skip
    p.add_argument("--occasion", default="7D", help="capture-history occasion: nD, nW or nH (default 7D)")
    p.add_argument("--sensitive", action="append", default=[], metavar="SPECIES=DEGREES",
                   help="coarsen this species' coordinates to a grid in every export (e.g. lion=0.1)")  # fmt: skip
    p.add_argument("--out", required=True, help="the folder to write (new, empty, or an earlier season run)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the files of an earlier season run there"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary line")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging; tracebacks with errors")
    return p


def _sensitive(values: list[str]) -> dict[str, float]:
    grid = {}
    for v in values:
        species, _, degrees = v.partition("=")
        try:
            grid[species.strip()] = float(degrees)
        except ValueError:
            raise UsageError(f"--sensitive {v!r}: expected SPECIES=DEGREES, e.g. lion=0.1") from None
        if not species.strip() or not (math.isfinite(grid[species.strip()]) and grid[species.strip()] > 0):
            raise UsageError(f"--sensitive {v!r}: expected SPECIES=DEGREES with DEGREES > 0")
    return grid


def check_args(args: argparse.Namespace) -> dict:
    """Every option before anything is read; returns the species map and the sensitive grid."""
    from .calibrate_cli import check_catalogue_args
    from .exports_capture import parse_occasion
    from .ingest_cli import check_inputs

    species_map = check_inputs(args)
    check_catalogue_args(args)
    if not (math.isfinite(args.gap) and args.gap >= 0):
        raise UsageError(f"--gap must be a number of seconds >= 0, got {args.gap:g}")
    if args.bands is not None and not Path(args.bands).is_file():
        raise UsageError(f"--bands {args.bands}: no such file")
    try:
        parse_occasion(args.occasion)
    except ValueError as err:
        raise UsageError(f"--occasion {args.occasion!r}: {err}") from err
    return {"species_map": species_map, "sensitive": _sensitive(args.sensitive)}


def _inputs(args: argparse.Namespace) -> list[str]:
    values = [
        args.folder,
        args.images,
        args.megadetector,
        args.coco,
        args.csv,
        args.camtrapdp,
        args.catalogue,
    ]
    return [v for v in values if v]


def photo_root(args: argparse.Namespace) -> Path:
    """The folder the season's photos lie in (exports name photos relative to it)."""
    if args.folder or args.images:
        return Path(args.folder or args.images)
    source = Path(args.csv or args.camtrapdp)
    return source if source.is_dir() else source.parent


def _bands(args, items, emb):
    from .calibrate_cli import calibrate_bands
    from .decisions import Bands

    if args.bands is not None:
        return Bands.load(args.bands)
    return calibrate_bands(args, items, emb)


def _catalogue(args, items, emb):
    from .calibrate_cli import catalogue_viewpoints
    from .matching import MatchCatalogue

    views = None if args.viewpoint_blind else catalogue_viewpoints(args.catalogue, items)
    return MatchCatalogue(emb, [g.identity for g in items], [g.species for g in items], views)


def _skipped_csv(ingest_skips, bad) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["step", "where", "reason"])
    writer.writerows(["ingest", f"{s.source} {s.row}", s.message] for s in ingest_skips)
    writer.writerows(["embed", s.path, s.reason] for s in bad.skipped)
    return buf.getvalue().encode("utf-8")


def _run(args: argparse.Namespace) -> str:
    from ..identify import BadImages
    from .calibrate_cli import embed_catalogue, read_catalogue
    from .ingest_cli import ingest
    from .pipeline import SeasonSettings, embed_annotations, season_assignments

    checked = check_args(args)
    with OutputFolder(args.out, tool=TOOL, overwrite=args.overwrite, what="--out", keep=_inputs(args)) as out:
        annotations, skips = ingest(args, checked["species_map"])
        bad = BadImages(args.on_error)
        items, cat_emb, ident = embed_catalogue(args, read_catalogue(args, bad), bad)
        bands = _bands(args, items, cat_emb)
        kept, emb = embed_annotations(ident, annotations, bad)
        usable = [annotations[i] for i in kept]
        settings = SeasonSettings(fusion=args.fusion, viewpoint_aware=not args.viewpoint_blind, gap_s=args.gap,
                                  cluster_offset=args.cluster_offset)  # fmt: skip
        anns, assignments = season_assignments(usable, emb, _catalogue(args, items, cat_emb), bands, settings)
        files = _write(out, args, checked, anns, assignments, bands, items, skips, bad)
    return summary(anns, assignments, args.out, files)


def _write(out, args, checked, anns, assignments, bands, items, skips, bad) -> list[str]:
    """Every file into a staging folder of ``out``, committed at once."""
    import json

    from .exports import write_exports
    from .exports_tables import coarsen
    from .report import render_report

    stage = out.staging()
    write_exports(stage, anns, assignments, photo_root(args), occasion=args.occasion,
                  sensitive=checked["sensitive"] or None, camtrap_source=args.camtrapdp)  # fmt: skip
    (stage / "bands.json").write_text(json.dumps(bands.to_dict(), indent=1) + "\n", encoding="utf-8")
    (stage / "skipped.csv").write_bytes(_skipped_csv(skips, bad))
    photos: dict[str, list] = {}
    for g in items:
        photos.setdefault(g.identity, []).append((g.image, g.bbox))
    notes = [f"model {args.model}; catalogue {args.catalogue} ({len(items)} photos)",
             f"fusion {args.fusion}; encounters within {args.gap:g} s; bands: {args.bands or 'calibrated here'}"]  # fmt: skip
    report = render_report(
        coarsen(anns, checked["sensitive"] or None), assignments, photos, "Season report", notes
    )
    (stage / "report.html").write_bytes(report)
    return out.commit(stage)


def summary(anns, assignments, out, files) -> str:
    from collections import Counter

    c = Counter(a.decision for a in assignments)
    proposed = len({a.individual for a in assignments if a.decision == "new"})
    encounters = len({a.encounter for a in assignments})
    return (f"{len(anns)} annotations in {encounters} encounters: {c['known']} known, {c['unsure']} unsure, "
            f"{c['new']} new in {proposed} proposed individuals; wrote {len(files)} files to {out}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``animal-reid season``: 0 on success, 2 for bad arguments or a refused ``--out``, 1 for failures."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        print(_run(args))
        return 0
    except (UsageError, OutputError) as err:
        if args.verbose:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as err:
        if args.verbose:
            raise
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
