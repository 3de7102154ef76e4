"""The catalogue as the files ecologists use, through the season library's exporters.

Every sighting becomes one :class:`~animal_reid.season.annotations.Annotation` (its photo under the catalogue's
photo folder, box, species, viewpoint, date-time, place, encounter, observer, notes; what the sighting leaves
empty taken from its encounter) with a ``known`` :class:`~animal_reid.season.annotations.Assignment` to its
individual, named by its name (``Asha (#12)`` where two individuals of a species share one). Then:

* ``csv``: :func:`~animal_reid.season.exports_tables.export_csv`, one row per sighting;
* ``coco``: :func:`~animal_reid.season.exports_tables.export_coco`, one annotation per sighting with
  ``individual_id`` and ``name``;
* ``camtrapdp``: :func:`~animal_reid.season.camtrapdp.write_camtrapdp`, a Camtrap DP 1.0 package (zip; the photos
  in ``media/`` only when asked for), sightings it cannot hold (no date-time, no place) listed in
  ``camtrap_dp_skipped.csv``;
* ``capture``: :func:`~animal_reid.season.exports_capture.capture_history` per species, as CSV and Program MARK
  ``.inp`` (zip), with what was left out (sightings without a date) in ``capture_history_excluded.csv``.
"""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from animal_reid.season.annotations import Annotation, Assignment
from animal_reid.season.exports_capture import capture_history, capture_history_csv, mark_inp
from animal_reid.season.exports_tables import ExportError, export_coco, export_csv
from animal_reid.serve.schema import Encounter, Individual, Photo, Sighting

FORMATS = ("csv", "coco", "camtrapdp", "capture")

__all__ = ["FORMATS", "ExportError", "ExportFile", "catalogue_annotations", "export"]


@dataclass(frozen=True)
class ExportFile:
    """A download: its file name, media type and bytes."""

    filename: str
    media_type: str
    data: bytes


def _labels(individuals: list[tuple[int, str, str]]) -> dict[int, str]:
    """Each individual's name, with ``(#id)`` added where two of one species share a name."""
    seen = Counter((species, name.casefold()) for _, name, species in individuals)
    return {
        i: name if seen[(species, name.casefold())] == 1 else f"{name} (#{i})"
        for i, name, species in individuals
    }


def _first(*values):
    return next((v for v in values if v not in (None, "")), None)


def _annotation(
    catalogue, s: Sighting, fmt: str, species: str, label: str, enc: Encounter | None
) -> Annotation:
    photo = catalogue.photo_path(s.photo_sha256, fmt).relative_to(catalogue.photo_dir).as_posix()
    e = enc or Encounter()  # a sighting without an encounter: every field from the sighting
    return Annotation(
        annotation_id=str(s.id), photo=photo, box=s.box, theta=float(s.theta or 0.0), species=species,
        viewpoint=_first(s.viewpoint), datetime=_first(s.taken_at, e.started_at), latitude=_first(s.lat, e.lat),
        longitude=_first(s.lon, e.lon), site=_first(s.site, e.site),
        encounter=None if s.encounter_id is None else f"e{s.encounter_id}", observer=_first(s.observer, e.observer),
        notes=_first(s.notes), individual=label, source=f"sighting {s.id}",
    )  # fmt: skip


def catalogue_annotations(catalogue, species: str | None = None) -> tuple[list[Annotation], list[Assignment]]:
    """Every sighting (of ``species``) as an annotation with its ``known`` assignment, in sighting id order."""
    q = (sa.select(Sighting, Photo.format, Individual.species, Encounter)
         .join(Individual, Individual.id == Sighting.individual_id)
         .join(Photo, Photo.sha256 == Sighting.photo_sha256)
         .outerjoin(Encounter, Encounter.id == Sighting.encounter_id).order_by(Sighting.id))  # fmt: skip
    who = sa.select(Individual.id, Individual.name, Individual.species)
    if species is not None:
        q, who = q.where(Individual.species == species), who.where(Individual.species == species)
    with Session(catalogue.engine) as s:
        labels = _labels([tuple(r) for r in s.execute(who)])
        rows = s.execute(q).all()
        annotations = [
            _annotation(catalogue, r[0], r[1], r[2], labels[r[0].individual_id], r[3]) for r in rows
        ]
    assignments = [
        Assignment(a.annotation_id, "known", a.individual, None, None, a.encounter) for a in annotations
    ]
    return annotations, assignments


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.casefold()).strip("-") or "all"


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in sorted(files.items()):
            z.writestr(name, data)
    return buf.getvalue()


def _capture_files(
    annotations: list[Annotation], assignments: list[Assignment], occasion: str
) -> dict[str, bytes]:
    """Per species ``capture_history_<species>.csv`` and ``.inp``; what they left out in one more table."""
    excluded = io.StringIO()
    writer = csv.writer(excluded, lineterminator="\n")
    writer.writerow(["sighting_id", "species", "reason"])
    files = {}
    for species in sorted({a.species for a in annotations}):
        mine = [a for a in annotations if a.species == species]
        ids = {a.annotation_id for a in mine}
        history = capture_history(mine, [a for a in assignments if a.annotation_id in ids], occasion=occasion)
        files[f"capture_history_{_slug(species)}.csv"] = capture_history_csv(history)
        files[f"capture_history_{_slug(species)}.inp"] = mark_inp(history).encode("utf-8")
        writer.writerows([i, species, reason] for reason, left in history.excluded.items() for i in left)
    files["capture_history_excluded.csv"] = excluded.getvalue().encode("utf-8")
    return files


def _camtrap_files(catalogue, annotations, assignments, photos: bool) -> dict[str, bytes]:
    from animal_reid.season.camtrapdp import write_camtrapdp

    with tempfile.TemporaryDirectory(prefix="animal-reid-export-") as tmp:
        out = Path(tmp) / "package"
        skips = write_camtrapdp(out, annotations, assignments, media="copy" if photos else "none",
                                photo_root=catalogue.photo_dir,
                                project={"title": "Catalogue exported by animal-reid"})  # fmt: skip
        files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    if skips:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["sighting_id", "reason", "message"])
        writer.writerows([s.row, s.reason, s.message] for s in skips)
        files["camtrap_dp_skipped.csv"] = buf.getvalue().encode("utf-8")
    return files


def export(
    catalogue, fmt: str, species: str | None = None, occasion: str = "7D", photos: bool = False
) -> ExportFile:
    """The catalogue (or one species of it) as a download in format ``fmt`` (one of :data:`FORMATS`);
    :class:`ExportError` (one line) for a bad option or a sighting the format cannot take."""
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    annotations, assignments = catalogue_annotations(catalogue, species)
    base = f"catalogue-{_slug(species or 'all')}"
    if fmt == "csv":
        return ExportFile(f"{base}.csv", "text/csv", export_csv(annotations, assignments))
    if fmt == "coco":
        coco = export_coco(annotations, assignments, catalogue.photo_dir)
        return ExportFile(
            f"{base}-coco.json", "application/json", (json.dumps(coco, indent=1) + "\n").encode()
        )
    if fmt == "capture":
        files = _capture_files(annotations, assignments, occasion)
    else:
        files = _camtrap_files(catalogue, annotations, assignments, photos)
    return ExportFile(f"{base}-{fmt}.zip", "application/zip", _zip(files))
