"""``animal-reid ingest``: a season's photos (a folder, MegaDetector output, COCO, CSV or a Camtrap DP package)
into one annotation table.

    animal-reid ingest (--folder DIR | --megadetector MD.json --images DIR | --coco FILE --images DIR | --csv FILE
                        | --camtrapdp DIR) [--species S | --species-map FILE] [--min-conf 0.2]
                       --out annotations.csv [--overwrite]

``--species-map`` maps folders (relative to the photos' folder) to species, or, with ``--camtrapdp``, Camtrap DP
``scientificName`` values to the species names the season uses. ``--min-conf`` is MegaDetector's detection confidence
(default 0.2) or Camtrap DP's ``classificationProbability`` (default: all kept).

Writes the annotation CSV (:func:`animal_reid.season.annotations.annotations_csv`) and, beside it,
``<out stem>.skipped.csv`` listing every photo or row left out (source, row, reason, message); prints one summary
line. Every path and option is checked before any input is read; an existing ``--out`` (or its skipped file) is
replaced only with ``--overwrite``, atomically (:func:`animal_reid.manifest.replace_file`). Errors are one line
``error: <message>`` on stderr: exit 2 for bad arguments or an output that must not be replaced, 1 for an input
that cannot be read.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections import Counter
from pathlib import Path

from ..cli import UsageError, UsageParser
from ..manifest import OutputError, describe_os_error, replace_file
from .annotations import Annotation, annotations_csv
from .ingest import IngestError, Skip, read_species_map, skips_csv

logger = logging.getLogger(__name__)

TOOL = "animal-reid ingest"


def add_input_arguments(p: argparse.ArgumentParser) -> None:
    """The options naming a season's input (shared by ``animal-reid ingest`` and ``animal-reid season``)."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--folder", help="a folder of photos: one whole-photo annotation each, EXIF read")
    src.add_argument("--megadetector", metavar="MD.json", help="MegaDetector batch output (with --images)")
    src.add_argument("--coco", metavar="FILE", help="COCO JSON, boxes in pixels (with --images)")
    src.add_argument(
        "--csv", metavar="FILE", help="CSV: path[,identity,species,encounter,viewpoint,datetime,...]"
    )
    src.add_argument(
        "--camtrapdp", metavar="DIR", help="a Camtrap DP package (its folder or datapackage.json)"
    )
    p.add_argument("--images", metavar="DIR", help="the folder the --megadetector / --coco file paths are in")
    sp = p.add_mutually_exclusive_group()
    sp.add_argument("--species", help="the species of every annotation the input does not name one for")
    sp.add_argument(
        "--species-map",
        metavar="FILE",
        help="species per folder: CSV folder,species or JSON {folder: species}",
    )
    p.add_argument(
        "--min-conf", type=float, default=None, help="MegaDetector: least confidence kept (default 0.2)"
    )
    p.add_argument("--no-recursive", action="store_true", help="--folder: only the photos directly in it")


def _parser() -> argparse.ArgumentParser:
    p = UsageParser(
        prog="animal-reid ingest",
        description="Read a season's photos into one annotation table (photo, box, species, date-time, place, "
        "camera, encounter, ...). Rows that cannot be used are listed in <out stem>.skipped.csv; nothing is "
        "overwritten without --overwrite.",
    )
    add_input_arguments(p)
    p.add_argument("--out", required=True, help="the annotation CSV to write")
    p.add_argument(
        "--overwrite", action="store_true", help="replace --out and its skipped file if they exist"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log each photo with an EXIF problem")
    return p


def skipped_path(out: Path) -> Path:
    """Where the skipped rows of ``out`` go: ``annotations.csv`` -> ``annotations.skipped.csv``."""
    stem = out.stem if out.suffix.lower() == ".csv" else out.name
    return out.with_name(f"{stem}.skipped.csv")


def _check_input(option: str, value: str, kind: str) -> None:
    path = Path(value).expanduser()
    if not path.exists():
        raise UsageError(f"{option} {value}: no such {kind}")
    if kind == "folder" and not path.is_dir():
        raise UsageError(f"{option} {value}: not a folder")
    if kind == "file" and not path.is_file():
        raise UsageError(f"{option} {value}: not a file")


def _check_out(args: argparse.Namespace) -> None:
    out = Path(args.out).expanduser()
    for path in (out, skipped_path(out)):
        if path.is_dir():
            raise UsageError(f"--out {path} is a folder, not a file")
        if path.exists() and not args.overwrite:
            raise UsageError(
                f"--out {path} exists: pass --overwrite to replace it, or choose another file name"
            )
    inputs = [args.folder, args.megadetector, args.coco, args.csv, args.camtrapdp, args.species_map]
    for value in filter(None, inputs):
        if Path(value).expanduser().resolve() in (out.resolve(), skipped_path(out).resolve()):
            raise UsageError(f"--out {args.out} is an input: refusing to write over it")


def check_args(args: argparse.Namespace) -> dict[str, str] | None:
    """Every option and path before any input is read; returns the species map (None without one)."""
    species_map = check_inputs(args)
    _check_out(args)
    return species_map


def check_inputs(args: argparse.Namespace) -> dict[str, str] | None:
    """The input options of :func:`add_input_arguments`; returns the species map (None without one)."""
    needs_images = bool(args.megadetector or args.coco)
    if needs_images and not args.images:
        raise UsageError(f"{'--megadetector' if args.megadetector else '--coco'} needs --images DIR")
    if args.images and not needs_images:
        raise UsageError("--images goes with --megadetector or --coco")
    if args.min_conf is not None and not (args.megadetector or args.camtrapdp):
        raise UsageError("--min-conf goes with --megadetector or --camtrapdp")
    if args.min_conf is not None and not (math.isfinite(args.min_conf) and 0.0 <= args.min_conf <= 1.0):
        raise UsageError(f"--min-conf must be in [0, 1], got {args.min_conf}")
    if args.no_recursive and not args.folder:
        raise UsageError("--no-recursive goes with --folder")
    if args.species is not None and not args.species.strip():
        raise UsageError("--species is empty")
    for option in ("folder", "images"):
        if getattr(args, option):
            _check_input(f"--{option}", getattr(args, option), "folder")
    for option in ("megadetector", "coco", "csv", "species_map"):
        if getattr(args, option):
            _check_input(f"--{option.replace('_', '-')}", getattr(args, option), "file")
    if args.camtrapdp:
        _check_input("--camtrapdp", args.camtrapdp, "file or folder")
    if args.species_map is None:
        return None
    try:
        return read_species_map(args.species_map, "scientificName" if args.camtrapdp else "folder")
    except IngestError as err:
        raise UsageError(f"--species-map {err}") from err


def ingest(
    args: argparse.Namespace, species_map: dict[str, str] | None
) -> tuple[list[Annotation], list[Skip]]:
    """Run the reader the options name."""
    species = args.species.strip() if args.species else None
    if args.folder:
        from .ingest import ingest_folder

        return ingest_folder(args.folder, species, recursive=not args.no_recursive, species_map=species_map)
    if args.megadetector:
        from .ingest_megadetector import ingest_megadetector

        min_conf = 0.2 if args.min_conf is None else args.min_conf
        return ingest_megadetector(args.megadetector, args.images, species, species_map, min_conf)
    if args.camtrapdp:
        from .camtrapdp import read_camtrapdp

        return read_camtrapdp(args.camtrapdp, species_map, args.min_conf, species=species)
    from .ingest_tables import ingest_coco, ingest_csv

    if args.coco:
        return ingest_coco(args.coco, args.images, species, species_map)
    return ingest_csv(args.csv, species, species_map)


def summary(annotations: list[Annotation], skips: list[Skip]) -> str:
    """``N annotations from M photos, K skipped (reasons counted)``, and the photos with an EXIF note."""
    photos = len({a.photo for a in annotations})
    text = f"{len(annotations)} annotations from {photos} photos, {len(skips)} skipped"
    if skips:
        counts = Counter(s.reason for s in skips)
        text += " (" + ", ".join(f"{n} {reason}" for reason, n in counts.most_common()) + ")"
    noted = len({a.photo for a in annotations if a.notes and "EXIF" in a.notes})
    if noted:
        text += f"; {noted} photos with an EXIF problem (see the notes column)"
    return text


def _run(args: argparse.Namespace) -> str:
    species_map = check_args(args)
    annotations, skips = ingest(args, species_map)
    out = Path(args.out).expanduser()
    table, skipped = annotations_csv(annotations), skips_csv(skips)
    replace_file(out, lambda f: f.write(table), overwrite=args.overwrite, tool=TOOL, what="--out")
    replace_file(
        skipped_path(out), lambda f: f.write(skipped), overwrite=args.overwrite, tool=TOOL, what="--out"
    )
    return f"{summary(annotations, skips)}; wrote {out} and {skipped_path(out).name}"


def main(argv: list[str] | None = None) -> int:
    """``animal-reid ingest``: 0 on success, 2 for bad arguments or a refused output, 1 for unreadable input."""
    try:
        args = _parser().parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(message)s")
        print(_run(args))
        return 0
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (UsageError, OutputError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except IngestError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"error: {describe_os_error(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
