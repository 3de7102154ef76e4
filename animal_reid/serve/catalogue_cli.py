"""``animal-reid catalogue``: back up, restore and calibrate a service's catalogue from the command line.

    animal-reid catalogue backup --catalogue URL [--photos DIR] ARCHIVE
    animal-reid catalogue restore ARCHIVE --catalogue URL [--photos DIR]
    animal-reid catalogue calibrate --catalogue URL [--photos DIR] [--species S]

``backup`` writes every table's rows and every photo to a new archive (never replacing a file);
``restore`` puts one into an EMPTY catalogue (SQLite or PostgreSQL; :mod:`animal_reid.serve.backup`);
``calibrate`` fits the decision bands on the catalogue's own sightings, records them in its change log (so running
services use them at once) and prints the bands table (:mod:`animal_reid.serve.calibration`). The URL is a
SQLAlchemy URL (``sqlite:///catalogue.db``, ``postgresql+psycopg://user@host/db``); ``--photos`` defaults to
``<sqlite file>.photos``. Errors are one ``error:`` line on stderr: exit 2 for bad arguments, 1 for failures.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from animal_reid.cli import UsageError, UsageParser

TOOL = "animal-reid catalogue"


def _parser() -> argparse.ArgumentParser:
    p = UsageParser(prog=TOOL, description="Back up, restore or calibrate a catalogue of the re-ID service.")
    sub = p.add_subparsers(dest="action", required=True, parser_class=UsageParser)

    def where(s: argparse.ArgumentParser) -> None:
        s.add_argument("--catalogue", required=True,
                       help="SQLAlchemy URL: sqlite:///file.db or postgresql+psycopg://user@host/db")  # fmt: skip
        s.add_argument("--photos", default=None, help="photo folder (default: <sqlite file>.photos)")
        s.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    b = sub.add_parser("backup", help="write the catalogue (rows and photos) to a new archive (.tar.gz)")
    where(b)
    b.add_argument("archive", help="the archive to write (an existing file is never replaced)")
    r = sub.add_parser("restore", help="restore an archive into an EMPTY catalogue (SQLite or PostgreSQL)")
    r.add_argument("archive", help="an archive written by `animal-reid catalogue backup`")
    where(r)
    c = sub.add_parser("calibrate", help="fit the known / unsure / new bands on the catalogue; print them")
    where(c)
    c.add_argument("--species", default=None, help="one species (default: every species that can be)")
    return p


def _check(args: argparse.Namespace) -> None:
    import sqlalchemy as sa

    try:
        url = sa.make_url(args.catalogue)
    except sa.exc.ArgumentError as err:
        raise UsageError(
            f"--catalogue {args.catalogue!r} is not a database URL (e.g. sqlite:///catalogue.db)"
        ) from err
    is_file = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
    if args.action != "restore" and is_file and not Path(url.database).is_file():
        raise UsageError(f"--catalogue {args.catalogue}: no such database file")
    archive = Path(getattr(args, "archive", "") or "").expanduser()
    if args.action == "backup" and archive.exists():
        raise UsageError(f"{archive} exists: choose another file name (a backup never replaces a file)")
    if args.action == "restore" and not archive.is_file():
        raise UsageError(f"archive {archive}: no such file")


def _calibrate(catalogue, species: str | None) -> str:
    """Fit, record and print the bands table (one row per species fitted; what the others lack below it)."""
    from animal_reid.season.calibration import bands_table
    from animal_reid.season.decisions import Bands
    from animal_reid.serve.calibration import CatalogueCalibration
    from animal_reid.serve.settings import species_key

    actor = f"operator ({TOOL} calibrate)"
    calibration = CatalogueCalibration(catalogue)
    if species is not None:
        try:
            fitted = [species_key(species)]
        except ValueError as err:
            raise UsageError(f"--species: {err}") from err
        calibration.fit(fitted[0], actor)
    else:
        fitted = calibration.fit_all(actor)
    bands = {sp: calibration.fit_of(sp).band for sp in fitted}
    table = bands_table(Bands(default=bands[fitted[0]], species=bands)).splitlines()
    table = table[:-1]  # its last row is the default band: the service has none
    status = calibration.status()["species"]
    table += [f"no bands: {st['reason']}" for sp, st in status.items() if sp not in bands]
    print("\n".join(table))
    return f"bands fitted for {', '.join(fitted)} and recorded in the catalogue's change log"


def _run(args: argparse.Namespace) -> str:
    from animal_reid.serve.backup import backup, restore
    from animal_reid.serve.store import Catalogue

    _check(args)
    try:
        catalogue = Catalogue(args.catalogue, args.photos)
    except ValueError as err:
        raise UsageError(str(err)) from err
    try:
        if args.action == "backup":
            return backup(catalogue, args.archive).line(
                "backed up", f"{catalogue.shown_url} to {args.archive}"
            )
        if args.action == "restore":
            return restore(args.archive, catalogue).line(
                "restored", f"{args.archive} into {catalogue.shown_url}"
            )
        catalogue.migrate()
        return _calibrate(catalogue, args.species)
    finally:
        catalogue.close()


def main(argv: list[str] | None = None) -> int:
    """``animal-reid catalogue``: 0 on success, 2 for bad arguments, 1 for failures."""
    from animal_reid.extras import MissingExtraError, require_extra

    verbose = False
    try:
        args = _parser().parse_args(argv)
        verbose = args.verbose
        logging.basicConfig(
            level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(message)s"
        )
        require_extra(TOOL, "serve")
        print(_run(args))
        return 0
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except MissingExtraError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - one line, not a traceback
        if verbose:
            raise
        print(f"error: {' '.join(str(err).split()) or type(err).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
