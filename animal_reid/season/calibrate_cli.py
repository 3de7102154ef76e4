"""``animal-reid calibrate``: decision bands (known / unsure / new) per species, fitted on a labelled catalogue.

    animal-reid calibrate --model M --catalogue GALLERY --out bands.json
                          [--max-known-called-new 0.05] [--max-wrong-known 0.05] [--fusion max] [--overwrite]

``--catalogue`` is what ``identify --gallery`` reads (a folder per individual, a CSV ``path,identity[,species,
encounter,viewpoint]``, a built corpus); it is embedded with the identify machinery (:class:`Identifier` and its
embedding cache, so a second run embeds nothing), its encounters are matched against the rest of it as known and
as new animals, and the bands are fitted at the targets (:mod:`animal_reid.season.calibration`). The bands JSON
(:class:`animal_reid.season.decisions.Bands`) is what ``animal-reid season``, ``identify --threshold bands.json``
and the service read. The per-species table of bands and expected rates is printed.

Every option and path is checked before the model is loaded; an existing ``--out`` is replaced only with
``--overwrite``, atomically (:func:`animal_reid.manifest.replace_file`). Unusable catalogue images are skipped and
counted (``--on-error raise`` stops at the first). Errors are one line ``error: <message>`` on stderr: exit 2 for bad
arguments, a catalogue that cannot be calibrated on, or an output that must not be replaced; 1 for failures.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import re
import sys
import traceback
from pathlib import Path

from ..cli import UsageError, UsageParser
from ..manifest import OutputError

logger = logging.getLogger(__name__)

TOOL = "animal-reid calibrate"
RULES = (
    "max",
    "mean",
    "top2mean",
    "vote",
)  # animal_reid.season.matching.RULES (not imported: --help stays light)
_HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*(/[A-Za-z0-9_][\w.-]*)?")


def add_catalogue_arguments(p: argparse.ArgumentParser) -> None:
    """The model, the catalogue and the calibration options (shared by ``calibrate`` and ``season``)."""
    p.add_argument("--model", required=True, help="model directory or Hub repo id")
    p.add_argument("--revision", default=None, help="Hub revision of --model")
    p.add_argument("--catalogue", required=True, help="folder per individual, CSV (path,identity[,species,"
                   "encounter,viewpoint]) or corpus directory, as identify --gallery reads")  # fmt: skip
    p.add_argument(
        "--catalogue-config", default=None, help="corpus config (default: 'all' if present, else all)"
    )
    p.add_argument("--catalogue-split", action="append", default=None, help="corpus split(s) (default: all)")
    p.add_argument("--max-known-called-new", type=float, default=0.05, metavar="SHARE",
                   help="the largest share of known animals called new (sets new_below; default 0.05)")  # fmt: skip
    p.add_argument("--max-wrong-known", type=float, default=0.05, metavar="SHARE",
                   help="the largest share of animals whose best candidate is wrong (new animals, and known ones "
                   "closest to another individual) called known (sets known_above; default 0.05)")  # fmt: skip
    p.add_argument("--fusion", choices=RULES, default="max", help="how an encounter's image scores are fused "
                   "(use the rule the season will use; default max)")  # fmt: skip
    p.add_argument("--viewpoints", default="left:right", metavar="PAIRS",
                   help="viewpoints never compared, a:b pairs (default left:right; '' compares all)")  # fmt: skip
    p.add_argument("--viewpoint-blind", action="store_true", help="ignore the catalogue's viewpoints")
    p.add_argument("--min-queries", type=int, default=20,
                   help="known and new calibration queries a species needs for its own band (default 20)")  # fmt: skip
    p.add_argument("--max-queries-per-species", type=int, default=2000, help="encounters sampled per species")
    p.add_argument(
        "--on-error", choices=("skip", "raise"), default="skip", help="unusable image: skip or stop"
    )
    p.add_argument("--cache-dir", default=None, help="embedding cache (default: identify's)")
    p.add_argument("--no-cache", action="store_true", help="embed everything, read and write no cache")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")


def _parser() -> argparse.ArgumentParser:
    p = UsageParser(
        prog="animal-reid calibrate",
        description="Fit per-species decision bands (known / unsure / new) on a labelled catalogue at the error "
        "rates you state, print the expected rates, and write the bands JSON that `animal-reid season`, "
        "`identify --threshold` and the service read. Nothing is overwritten without --overwrite.",
    )
    add_catalogue_arguments(p)
    p.add_argument("--out", required=True, help="the bands JSON to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary line")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging; tracebacks with errors")
    return p


def _check_args(args: argparse.Namespace) -> None:
    """Every option and path, before anything is read or loaded; :class:`UsageError` naming the culprit."""
    check_catalogue_args(args)
    out = Path(args.out).expanduser()
    if out.is_dir():
        raise UsageError(f"--out {args.out} is a folder; expected the bands JSON file to write")
    if out.exists() and not args.overwrite:
        raise UsageError(
            f"--out {args.out} exists: pass --overwrite to replace it, or choose another file name"
        )


def check_catalogue_args(args: argparse.Namespace) -> None:
    """The options of :func:`add_catalogue_arguments`; :class:`UsageError` naming the culprit."""
    for flag, v in (
        ("--max-known-called-new", args.max_known_called_new),
        ("--max-wrong-known", args.max_wrong_known),
    ):
        if not (math.isfinite(v) and 0.0 <= v <= 1.0):
            raise UsageError(f"{flag} must be a share in [0, 1], got {v:g}")
    for flag, v in (("--min-queries", args.min_queries), ("--max-queries-per-species", args.max_queries_per_species),
                    ("--batch-size", args.batch_size)):  # fmt: skip
        if v < 1:
            raise UsageError(f"{flag} must be >= 1, got {v}")
    pairs = [p.strip() for p in args.viewpoints.split(",") if p.strip()]
    for pair in pairs:
        names = [n.strip() for n in pair.split(":")]
        if len(names) != 2 or not all(names):
            raise UsageError(f"--viewpoints: {pair!r} is not a pair a:b (e.g. left:right)")
    model = Path(args.model).expanduser()
    if model.is_dir() and not (model / "config.json").is_file():
        raise UsageError(
            f"--model {args.model}: the folder holds no config.json, so it is not a model directory"
        )
    if model.exists() and not model.is_dir():
        raise UsageError(f"--model {args.model} is a file; expected a model directory or a Hub repo id")
    if not model.exists() and not _HUB_ID.fullmatch(args.model):
        raise UsageError(f"--model {args.model}: no such model directory, and not a Hub repo id (owner/name)")
    if not Path(args.catalogue).exists():
        raise UsageError(f"--catalogue {args.catalogue}: no such file or folder")
    if args.cache_dir is not None and not args.no_cache and Path(args.cache_dir).expanduser().is_file():
        raise UsageError(f"--cache-dir {args.cache_dir} exists and is not a folder")


def catalogue_viewpoints(source: str | Path, items) -> list[str | None] | None:
    """The viewpoint of each catalogue item where the catalogue says (a CSV's ``viewpoint`` column, a corpus's
    ``viewpoint``); None when it says nothing (a folder per individual, or no such column)."""
    root = Path(source)
    found: dict[str, str] = {}
    if root.is_file():
        with open(root, newline="", encoding="utf-8-sig") as f:
            for row in csv.DictReader(f):
                if row.get("viewpoint") and row.get("path"):
                    p = Path(row["path"])
                    found[str(p if p.is_absolute() else root.parent / p)] = row["viewpoint"].strip()
        key = "image"
    elif (root / "data").is_dir():
        import pyarrow.parquet as pq

        for shard in sorted((root / "data").glob("*/*.parquet")):
            if {"image_id", "viewpoint"} <= set(pq.read_schema(shard).names):
                for row in pq.read_table(shard, columns=["image_id", "viewpoint"]).to_pylist():
                    if row["viewpoint"]:
                        found[str(row["image_id"])] = str(row["viewpoint"])
        key = "name"
    if not found:
        return None
    return [found.get(str(getattr(it, key))) for it in items]


def read_catalogue(args: argparse.Namespace, bad):
    """The catalogue's items (checked for calibration before anything is embedded)."""
    from ..identify import BadImageError, read_gallery
    from .calibration import CalibrationError, check_catalogue

    try:
        items = read_gallery(args.catalogue, args.catalogue_config, args.catalogue_split, bad_images=bad)
    except BadImageError:
        raise
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(f"--catalogue: {err}") from err
    try:
        check_catalogue([g.identity for g in items], [g.species for g in items], [g.encounter for g in items],
                        where=f"catalogue {args.catalogue}")  # fmt: skip
    except CalibrationError as err:
        raise UsageError(str(err)) from err
    return items


def embed_catalogue(args: argparse.Namespace, items, bad):
    """``(usable items, their embeddings, the Identifier)`` through identify's model loading and cache."""
    from ..identify import Identifier, default_cache_dir

    ident = Identifier.from_pretrained(
        args.model,
        revision=args.revision,
        cache_dir=None if args.no_cache else (args.cache_dir or default_cache_dir()),
        device=args.device,
        precision=args.precision,
        batch_size=args.batch_size,
    )
    kept, emb = ident.embed_usable(items, bad, "gallery")
    return [items[i] for i in kept], emb, ident


def calibrate_bands(args: argparse.Namespace, items, emb):
    from .calibration import calibrate
    from .matching import ViewpointTable

    table = None if args.viewpoint_blind else ViewpointTable.parse(args.viewpoints)
    views = None if args.viewpoint_blind else catalogue_viewpoints(args.catalogue, items)
    species = [g.species for g in items] if any(g.species for g in items) else None
    return calibrate(
        emb, [g.identity for g in items], species, [g.encounter for g in items], views,
        args.max_known_called_new, args.max_wrong_known, args.fusion, table, args.min_queries,
        args.max_queries_per_species,
    )  # fmt: skip


def _run(args: argparse.Namespace) -> str:
    from ..identify import BadImages

    _check_args(args)
    bad = BadImages(args.on_error)
    items = read_catalogue(args, bad)
    items, emb, ident = embed_catalogue(args, items, bad)
    bands = calibrate_bands(args, items, emb)
    bands.calibration.update(
        {"model": str(args.model), "catalogue": str(args.catalogue), "skipped_images": len(bad)}
    )
    out = bands.save(Path(args.out).expanduser(), overwrite=args.overwrite, tool=TOOL, what="--out")
    if not args.quiet:
        from .calibration import bands_table

        print(bands_table(bands))
    if bad.skipped:
        print(bad.summary(), file=sys.stderr)
    n_ids = len({g.identity for g in items})
    cache = "no cache" if ident.cache is None else f"cache {ident.cache.dir}"
    return (
        f"bands for {len(bands.species) or 'no'} species and a default written to {out} ({args.fusion} fusion; "
        f"{len(items)} images of {n_ids} individuals; embedded {ident.n_embedded} images, {cache})"
    )


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if text else type(err).__name__


def main(argv: list[str] | None = None) -> int:
    """``animal-reid calibrate``: 0 on success, 2 for bad arguments, catalogue or output, 1 for failures."""
    args = None
    try:
        args = _parser().parse_args(argv)
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO,
            format="%(levelname)s %(message)s",
        )
        print(_run(args))
        return 0
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (UsageError, OutputError) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - the console gets one line, not a traceback
        if getattr(args, "verbose", False):
            traceback.print_exc()
        hint = "" if getattr(args, "verbose", False) else " (-v shows the traceback)"
        print(f"error: {_one_line(err)}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
