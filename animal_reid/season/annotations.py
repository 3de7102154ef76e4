"""The annotation table every season input becomes, and the assignment each annotation gets back.

An :class:`Annotation` is one animal in one photo: the photo, its box (``[x, y, w, h]`` in the displayed photo's
pixels, EXIF orientation applied; None for the whole photo), the species, viewpoint, date-time, place, camera or
deployment, encounter, observer, notes, and the individual when the input already knows it (a catalogue row, a
Camtrap DP ``individualID``). Ingest (:mod:`animal_reid.season.ingest`) writes it, encounters, matching, discovery
and the exports read it, and the catalogue service stores the same fields.

An :class:`Assignment` is what the season decides for one annotation: ``known`` (with the individual), ``unsure``
(the best candidate shown, for review) or ``new`` (with a proposed new individual from discovery).

Tables are CSV files (UTF-8, a BOM accepted on read), one row per annotation, columns :data:`FIELDS` in order;
:func:`read_annotations` checks every row and names the file and line of the first bad one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

__all__ = [
    "ASSIGNMENT_FIELDS",
    "DECISIONS",
    "FIELDS",
    "Annotation",
    "AnnotationError",
    "Assignment",
    "annotations_csv",
    "assignments_rows",
    "read_annotations",
]

#: the three decisions, in the order of confidence that the animal is known
DECISIONS = ("known", "unsure", "new")


class AnnotationError(ValueError):
    """A table or row that cannot be an annotation; the message names the file and line."""


@dataclass
class Annotation:
    """One animal in one photo, with what is known about the sighting."""

    annotation_id: str  # unique within a table
    photo: str  # path of the photo (absolute, or relative to the table's folder)
    box: list[float] | None = None  # [x, y, w, h], displayed pixels; None: the whole photo
    theta: float = 0.0  # box rotation, radians
    species: str | None = None
    viewpoint: str | None = None  # e.g. "left", "right", "front"
    datetime: str | None = None  # ISO 8601 as recorded ("2026-05-01T06:12:30"; with an offset when known)
    latitude: float | None = None
    longitude: float | None = None
    site: str | None = None
    camera: str | None = None  # camera or deployment id
    encounter: str | None = None  # given by the input, or formed by animal_reid.season.encounters
    observer: str | None = None
    notes: str | None = None
    individual: str | None = None  # the individual, when the input labels it
    confidence: float | None = None  # detector confidence (MegaDetector), when there is one
    source: str | None = None  # where the row came from ("md.json images[3] detections[1]")


@dataclass
class Assignment:
    """The season's decision for one annotation."""

    annotation_id: str
    decision: str  # one of DECISIONS
    individual: (
        str | None
    )  # the known individual, or a proposed new id ("new:<species>:<n>"); None when unsure
    score: float | None = None  # fused similarity to the best known candidate
    candidate: str | None = None  # the best known candidate (shown for unsure and new too)
    encounter: str | None = None


FIELDS = [f.name for f in fields(Annotation)]
ASSIGNMENT_FIELDS = [f.name for f in fields(Assignment)]
_FLOATS = {"theta", "latitude", "longitude", "confidence"}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return json.dumps([round(float(v), 3) for v in value])
    return str(value)


def annotations_csv(annotations: Iterable[Annotation]) -> bytes:
    """The table as CSV bytes (columns :data:`FIELDS`; boxes as JSON lists, empty cells for None)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(FIELDS)
    for a in annotations:
        writer.writerow([_cell(getattr(a, name)) for name in FIELDS])
    return buf.getvalue().encode("utf-8")


def _parse_box(text: str, where: str) -> list[float] | None:
    if not text.strip():
        return None
    try:
        box = json.loads(text) if text.strip().startswith("[") else [float(v) for v in text.split(",")]
        box = [float(v) for v in box]
    except (ValueError, TypeError) as err:
        raise AnnotationError(f"{where}: box {text!r} is not 4 numbers [x, y, w, h]") from err
    if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[2] <= 0 or box[3] <= 0:
        raise AnnotationError(f"{where}: box {text!r} is not 4 finite numbers [x, y, w, h] with w, h > 0")
    return box


def _row(raw: dict[str, str], where: str) -> Annotation:
    values: dict[str, Any] = {}
    for name in FIELDS:
        text = (raw.get(name) or "").strip()
        if name == "box":
            values[name] = _parse_box(text, where)
        elif name in _FLOATS:
            try:
                values[name] = float(text) if text else (0.0 if name == "theta" else None)
            except ValueError as err:
                raise AnnotationError(f"{where}: {name} {text!r} is not a number") from err
        else:
            values[name] = text or None
    if not values["annotation_id"] or not values["photo"]:
        raise AnnotationError(f"{where}: annotation_id and photo are required")
    return Annotation(**values)


def read_annotations(path: str | os.PathLike) -> list[Annotation]:
    """Rows of an annotation CSV; :class:`AnnotationError` naming the file and line of a bad row or a repeated id."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    reader = csv.DictReader(io.StringIO(text))
    missing = {"annotation_id", "photo"} - set(reader.fieldnames or [])
    if missing:
        raise AnnotationError(f"{path}: no {', '.join(sorted(missing))} column (has {reader.fieldnames})")
    out: list[Annotation] = []
    seen: dict[str, int] = {}
    for line, raw in enumerate(reader, start=2):
        ann = _row(raw, f"{path} line {line}")
        if ann.annotation_id in seen:
            raise AnnotationError(
                f"{path} lines {seen[ann.annotation_id]} and {line} share annotation_id {ann.annotation_id!r}"
            )
        seen[ann.annotation_id] = line
        out.append(ann)
    return out


def assignments_rows(assignments: Sequence[Assignment]) -> list[dict[str, Any]]:
    """Assignments as plain dicts (for JSON and tables)."""
    return [asdict(a) for a in assignments]
