"""Camtrap DP packages into the season's annotation table (and the package API: validate, read, write).

A Camtrap DP (Camera Trap Data Package, TDWG, version 1.0) is a folder with ``datapackage.json``,
``deployments.csv``, ``media.csv`` and ``observations.csv``. :func:`read_camtrapdp` makes one
:class:`~animal_reid.season.annotations.Annotation` per media-level animal observation:

* the box from ``bboxX/bboxY/bboxWidth/bboxHeight`` (fractions of the photo as displayed) in the displayed photo's
  pixels, its size read from the photo's header with the EXIF orientation applied; an observation without a box
  is the whole photo only when it is the photo's one animal observation, else a skip naming the rows;
* the species from ``scientificName`` (through ``species_map`` {scientificName: species} when given), the
  individual from ``individualID``, the date-time from ``eventStart`` (else the media ``timestamp``), the camera
  from ``deploymentID``, the site from the deployment's ``locationName`` (else ``locationID``), the place from its
  ``latitude``/``longitude``, the encounter from ``eventID``, the observer from ``classifiedBy``, the notes from
  ``observationComments``, the viewpoint from a ``viewpoint:<value>`` tag in ``observationTags``, the confidence
  from ``classificationProbability``; ``annotation_id`` is the ``observationID``.

Rows the table schemas reject (:mod:`animal_reid.season.camtrapdp_schema`), repeated ``observationID``\\ s (both
rows named), rows referring to missing media or deployments, photos outside the package folder (never opened),
missing or unreadable photos and event-level observations (no ``mediaID``) are reported skips, one line each naming
the file and the line; a package that cannot be read at all raises
:class:`~animal_reid.season.ingest.IngestError` naming the file. Observations of other types (blank, human,
vehicle, ...) are not animals and are left out without a skip.

:func:`write_camtrapdp` writes the season back as a package with ``individualID`` filled from the assignments:
built from the annotations (:mod:`animal_reid.season.camtrapdp_write`) or as a copy of the source package with
its observations filled (:mod:`animal_reid.season.camtrapdp_source`). :func:`validate_package`
(:mod:`animal_reid.season.camtrapdp_package`) checks a package against the Camtrap DP 1.0 schemas.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .annotations import Annotation, Assignment
from .camtrapdp_package import Package, open_package, validate_package
from .camtrapdp_schema import TABLES, Row, Table, key_problems, read_table
from .camtrapdp_source import write_from_source
from .camtrapdp_write import MEDIA_MODES, CamtrapDPError, WriteOptions, write_new_package
from .ingest import BAD_BOX, DUPLICATE, MALFORMED, MISSING, OUTSIDE, UNREADABLE, Skip, is_inside
from .ingest_exif import UnreadablePhoto, read_photo

logger = logging.getLogger(__name__)

__all__ = [
    "BBOX_FIELDS",
    "MEDIA_MODES",
    "CamtrapDPError",
    "read_camtrapdp",
    "validate_package",
    "write_camtrapdp",
]

#: the observation columns of a box, fractions of the displayed photo: x, y (top-left corner), width, height
BBOX_FIELDS = ("bboxX", "bboxY", "bboxWidth", "bboxHeight")


@dataclass
class _Context:
    """One package being read: its tables, key problems, first rows by id, photos opened so far."""

    pkg: Package
    tables: dict[str, Table]
    keys: dict[str, dict[int, list[str]]]
    check_pixels: bool
    rows: dict[str, dict[str, Row]] = field(default_factory=dict)
    photos: dict[int, tuple[Path, tuple[int, int]] | tuple[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, key in (("deployments", "deploymentID"), ("media", "mediaID")):
            by_id: dict[str, Row] = {}
            for row in self.tables[name].rows:
                by_id.setdefault(row.raw.get(key, ""), row)
            self.rows[name] = by_id

    def problems(self, name: str, row: Row) -> list[str]:
        return row.problems + self.keys[name].get(row.line, [])


def _where(table: Table, row: Row) -> str:
    return f"{table.path} line {row.line}"


def _reason(problem: str) -> str:
    detail = problem.split(": ", 1)[-1]
    if " share " in problem.split(": ", 1)[0]:
        return DUPLICATE
    if " is not a media.mediaID " in detail:
        return MISSING
    return BAD_BOX if detail.startswith(BBOX_FIELDS) else MALFORMED


def _skip(obs: Table, row: Row, reason: str, message: str) -> Skip:
    return Skip(str(obs.path), f"line {row.line}", reason, message)


def _joined(problems: list[str]) -> str:
    """Problems of one row as one line: the first whole, the others without their repeated "<file> line N: "."""
    first, *rest = problems
    return "; ".join(
        [first, *(p.split(": ", 1)[-1] if p.startswith(first.split(": ", 1)[0]) else p for p in rest)]
    )


def _located(ctx: _Context, media_row: Row) -> tuple[Path, str] | tuple[str, str]:
    """The photo file of a media row (not opened) and how to name it, or ``(reason, problem)`` when it is a URL or
    lies outside the package folder."""
    file_path = media_row.raw.get("filePath", "")
    what = f"photo {file_path!r} (mediaID {media_row.raw.get('mediaID', '')!r}, {ctx.tables['media'].path} line {media_row.line})"
    photo = ctx.pkg.root / file_path
    if "://" in file_path:
        return OUTSIDE, f"{what} is a URL: remote photos are not read"
    if not file_path or os.path.isabs(file_path) or not is_inside(photo, ctx.pkg.root):
        return OUTSIDE, f"{what} resolves outside the package folder {ctx.pkg.root}: not read"
    return photo, what


def _photo(ctx: _Context, media_row: Row, where: str) -> tuple[Path, tuple[int, int]] | tuple[str, str]:
    """The photo of a media row and its displayed size, or ``(reason, message)``; opened once per media row."""
    if media_row.line not in ctx.photos:
        photo, what = _located(ctx, media_row)
        if not isinstance(photo, Path):
            result = (photo, what)
        elif not photo.is_file():
            result = (MISSING, f"{what} does not exist: skipped")
        else:
            try:
                result = (photo, read_photo(photo, check_pixels=ctx.check_pixels).size)
            except UnreadablePhoto as err:
                result = (UNREADABLE, f"{what} is unreadable ({err}): skipped")
        ctx.photos[media_row.line] = result
    cached = ctx.photos[media_row.line]
    return cached if isinstance(cached[0], Path) else (cached[0], f"{where}: {cached[1]}")


def _linked_rows(ctx: _Context, obs: Table, row: Row) -> tuple[Row, Row] | Skip:
    """The observation's media and deployment rows, or the skip saying why they cannot be used."""
    where = _where(obs, row)
    media_row = ctx.rows["media"][row.raw["mediaID"]]
    dep_id = row.raw["deploymentID"]
    if media_row.raw.get("deploymentID") != dep_id:
        message = (
            f"{where}: deploymentID {dep_id!r}, but its media ({ctx.tables['media'].path} line {media_row.line}) "
            f"belongs to deployment {media_row.raw.get('deploymentID')!r}: skipped"
        )
        return _skip(obs, row, MALFORMED, message)
    located = _located(ctx, media_row)
    if not isinstance(located[0], Path):
        return _skip(obs, row, located[0], f"{where}: {located[1]}")
    dep_row = ctx.rows["deployments"][dep_id]
    for name, linked in (("media", media_row), ("deployments", dep_row)):
        problems = ctx.problems(name, linked)
        if problems:
            key = "mediaID" if name == "media" else "deploymentID"
            message = f"{where}: {key} {linked.raw.get(key)!r} is unusable ({_joined(problems)}): skipped"
            return _skip(obs, row, _reason(problems[0]), message)
    return media_row, dep_row


def _box(obs: Table, row: Row, size: tuple[int, int], others: list[int]) -> list[float] | None | Skip:
    """The box in displayed pixels, None for the whole photo, or the skip of a partial or ambiguous box."""
    present = [name for name in BBOX_FIELDS if row.raw.get(name, "") != ""]
    where = _where(obs, row)
    if not present:
        if len(others) > 1:
            lines = ", ".join(map(str, others))
            message = f"{where}: no bbox, and its media has {len(others)} animal observations (lines {lines}): skipped"
            return _skip(obs, row, BAD_BOX, message)
        return None
    if len(present) < len(BBOX_FIELDS):
        absent = [name for name in BBOX_FIELDS if name not in present]
        message = f"{where}: bbox has {', '.join(present)} but no {', '.join(absent)}: skipped"
        return _skip(obs, row, BAD_BOX, message)
    x, y, w, h = (row.values[name] for name in BBOX_FIELDS)
    width, height = size
    return [x * width, y * height, w * width, h * height]


def _tags(text: str) -> dict[str, str]:
    """``key:value`` pairs of a pipe-separated tag list."""
    pairs = (tag.split(":", 1) for tag in text.split("|") if ":" in tag)
    return {key.strip(): value.strip() for key, value in pairs}


def _observation(
    ctx: _Context,
    row: Row,
    per_media: dict[str, list[int]],
    species_map: Mapping[str, str] | None,
    species: str | None,
) -> Annotation | Skip:
    obs = ctx.tables["observations"]
    where = _where(obs, row)
    problems = ctx.problems("observations", row)
    if problems:
        return _skip(obs, row, _reason(problems[0]), f"{_joined(problems)}: skipped")
    if row.values.get("observationLevel") == "event" or not row.raw.get("mediaID"):
        message = f"{where}: event-level observation (no mediaID): not tied to one photo: skipped"
        return _skip(obs, row, MISSING, message)
    linked = _linked_rows(ctx, obs, row)
    if isinstance(linked, Skip):
        return linked
    media_row, dep_row = linked
    photo = _photo(ctx, media_row, where)
    if not isinstance(photo[0], Path):
        return _skip(obs, row, *photo)
    box = _box(obs, row, photo[1], per_media[row.raw["mediaID"]])
    if isinstance(box, Skip):
        return box
    raw, dep = row.raw, dep_row.raw
    sci = raw.get("scientificName") or None
    return Annotation(
        annotation_id=raw["observationID"],
        photo=str(photo[0]),
        box=box,
        species=(species_map or {}).get(sci, sci) if sci else species,
        viewpoint=_tags(raw.get("observationTags", "")).get("viewpoint") or None,
        datetime=raw.get("eventStart") or media_row.raw.get("timestamp") or None,
        latitude=dep_row.values.get("latitude"),
        longitude=dep_row.values.get("longitude"),
        site=dep.get("locationName") or dep.get("locationID") or None,
        camera=raw["deploymentID"],
        encounter=raw.get("eventID") or None,
        observer=raw.get("classifiedBy") or None,
        notes=raw.get("observationComments") or None,
        individual=raw.get("individualID") or None,
        confidence=row.values.get("classificationProbability"),
        source=where,
    )


def _animal_rows_per_media(obs: Table) -> dict[str, list[int]]:
    """The lines of the media-level animal observations of each media file."""
    out: dict[str, list[int]] = defaultdict(list)
    for row in obs.rows:
        if row.raw.get("observationType") == "animal" and row.raw.get("mediaID"):
            out[row.raw["mediaID"]].append(row.line)
    return out


def read_camtrapdp(
    path: str | os.PathLike,
    species_map: Mapping[str, str] | None = None,
    min_conf: float | None = None,
    *,
    species: str | None = None,
    check_pixels: bool = True,
) -> tuple[list[Annotation], list[Skip]]:
    """Annotations of the Camtrap DP at ``path`` (its folder or ``datapackage.json``) and the rows skipped.

    ``species_map`` maps a ``scientificName`` to the species name the season uses (names not in it are kept);
    ``species`` is the species of observations without a ``scientificName``; ``min_conf`` leaves out
    observations whose ``classificationProbability`` is below it (those without one are kept); ``check_pixels``
    decodes each photo (at 1/8 scale for JPEGs) so a corrupt file is a skip here. :class:`IngestError` naming the
    file when the package cannot be read at all.
    """
    pkg = open_package(path)
    tables = {name: read_table(pkg.tables[name], name) for name in TABLES}
    ctx = _Context(pkg, tables, key_problems(tables), check_pixels)
    obs = tables["observations"]
    per_media = _animal_rows_per_media(obs)
    annotations: list[Annotation] = []
    skips: list[Skip] = []
    left_out: Counter[str] = Counter()
    for row in obs.rows:
        kind = row.raw.get("observationType")
        if kind != "animal" and not row.problems:
            left_out[f"{kind} observations"] += 1
            continue
        result = _observation(ctx, row, per_media, species_map, species)
        if isinstance(result, Skip):
            skips.append(result)
        elif min_conf is not None and result.confidence is not None and result.confidence < min_conf:
            left_out[f"below classificationProbability {min_conf}"] += 1
        else:
            annotations.append(result)
    logger.info(
        "%s: %d annotations, %d skipped%s", pkg.file, len(annotations), len(skips),
        "".join(f", {n} {what} left out" for what, n in left_out.items()),
    )  # fmt: skip
    return annotations, skips


def write_camtrapdp(
    out_dir: str | os.PathLike,
    annotations: Sequence[Annotation],
    assignments: Sequence[Assignment],
    source_package: str | os.PathLike | None = None,
    *,
    media: str = "copy",
    photo_root: str | os.PathLike | None = None,
    scientific_names: Mapping[str, str] | None = None,
    sensitive: Mapping[str, float] | None = None,
    utc_offset: str | None = None,
    project: Mapping[str, Any] | None = None,
) -> list[Skip]:
    """Write the annotations and their assignments as a Camtrap DP 1.0 package into ``out_dir`` (created when
    absent; a package file already there raises :class:`CamtrapDPError`, nothing is replaced); returns the
    annotations left out, one :class:`~animal_reid.season.ingest.Skip` each.

    ``source_package``: the package the annotations were read from, copied with its observations filled (else a
    package is built from the annotations). ``media``: the photos ``"copy"``-ed into the package, hard-``"link"``-ed
    (copied where a link fails), or ``"none"`` (rows only). ``photo_root`` resolves relative photo paths (default:
    the current folder); ``scientific_names`` maps a species to its ``scientificName`` (default: the species as
    is); ``sensitive`` maps a species to the grid in degrees (e.g. 0.1) its deployments' coordinates are rounded
    to; ``utc_offset`` (``"+02:00"``) is the offset of date-times without one (default UTC, flagged in
    ``timestampIssues``); ``project`` overrides the ``project`` properties of a new package.
    """
    if media not in MEDIA_MODES:
        raise CamtrapDPError(f"media must be one of {', '.join(MEDIA_MODES)}, got {media!r}")
    if utc_offset is not None and not re.fullmatch(r"Z|[+-]\d{2}:\d{2}", utc_offset):
        raise CamtrapDPError(f"utc_offset must be Z or ±hh:mm (e.g. +02:00), got {utc_offset!r}")
    bad = {k: v for k, v in (sensitive or {}).items() if not (isinstance(v, (int, float)) and 0 < v <= 180)}
    if bad:
        raise CamtrapDPError(f"sensitive: the grid of each species must be degrees in (0, 180], got {bad}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    taken = [name for name in ("datapackage.json", *(f"{t}.csv" for t in TABLES)) if (out / name).exists()]
    if taken:
        raise CamtrapDPError(
            f"{out}: already has {', '.join(taken)}: nothing is replaced (give an empty folder)"
        )
    opts = WriteOptions(
        {a.annotation_id: a for a in assignments}, scientific_names or {}, sensitive or {}, utc_offset
    )
    root = Path(photo_root) if photo_root is not None else Path.cwd()
    if source_package is None:
        return write_new_package(out, annotations, opts, root, media, project)
    return write_from_source(out, Path(source_package), annotations, opts, root, media)
