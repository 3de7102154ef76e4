"""The season's tables: the export checks and errors, the CSV table, COCO, and coarsened sensitive species.

* :func:`index_assignments`: the one check of the annotations and assignments every export runs first (unique
  annotation ids; each assignment naming a known annotation once, with a decision and, for known and new, an
  individual); :class:`ExportError` is one line naming the row (``assignments row 2 (annotation 'a7')``).
* :func:`export_csv`: one row per annotation (photo, box, species, decision, individual or proposed new id,
  score, date-time, place, ...).
* :func:`export_coco`: COCO (images with their DISPLAYED size read from the photo header, boxes in displayed
  pixels, one category per species) with each annotation's ``individual_id`` and ``name`` (the Wildbook / WBIA
  spelling), decision, score, viewpoint and encounter. Loads with ``pycocotools.coco.COCO``. Photos outside
  the photo root are never read. COCO carries no coordinates.
* :func:`coarsen`: sensitive species' coordinates snapped to a grid: each point moved to the CENTRE of the
  ``precision``-degree cell holding it (floor, then half a cell), so every point of a cell gets one value and
  nothing finer than the cell is left. :func:`animal_reid.season.exports.export_all` applies it before writing
  anything; the HTML report must call it too.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any

from ..manifest import describe_os_error
from .annotations import DECISIONS, Annotation, Assignment

logger = logging.getLogger(__name__)

__all__ = [
    "CSV_COLUMNS",
    "ExportError",
    "check_precision",
    "coarsen",
    "export_coco",
    "export_csv",
    "index_assignments",
    "row_label",
]


class ExportError(ValueError):
    """An export input or option that cannot be used; the message is one line naming the row or option."""


# ------------------------------------------------------------------------------------------------------------
# checking the inputs
def row_label(kind: str, index: int, source: str | None = None) -> str:
    """How messages name a row: ``annotations row 3 (md.json images[2] detections[0])`` (``index`` from 0)."""
    return f"{kind} row {index + 1}" + (f" ({source})" if source else "")


def index_assignments(
    annotations: Sequence[Annotation], assignments: Sequence[Assignment]
) -> dict[str, Assignment]:
    """Assignments by annotation id, after checking both tables: unique annotation ids, each assignment naming
    a known annotation once, a decision of :data:`DECISIONS` and, for known and new, an individual."""
    rows: dict[str, int] = {}
    for i, ann in enumerate(annotations):
        if not ann.annotation_id:
            raise ExportError(f"{row_label('annotations', i, ann.source)}: no annotation_id")
        if ann.annotation_id in rows:
            j = rows[ann.annotation_id]
            first, second = (row_label("annotations", k, annotations[k].source) for k in (j, i))
            raise ExportError(f"{first} and {second} share annotation_id {ann.annotation_id!r}")
        rows[ann.annotation_id] = i
    out: dict[str, Assignment] = {}
    seen: dict[str, int] = {}
    for i, asg in enumerate(assignments):
        where = f"assignments row {i + 1} (annotation {asg.annotation_id!r})"
        if asg.annotation_id not in rows:
            raise ExportError(f"{where}: annotation_id {asg.annotation_id!r} is not in the annotations")
        if asg.annotation_id in seen:
            raise ExportError(
                f"assignments rows {seen[asg.annotation_id] + 1} and {i + 1} both assign annotation "
                f"{asg.annotation_id!r}"
            )
        if asg.decision not in DECISIONS:
            raise ExportError(f"{where}: decision {asg.decision!r} is not one of {', '.join(DECISIONS)}")
        if asg.decision in ("known", "new") and not asg.individual:
            raise ExportError(f"{where}: decision {asg.decision!r} names no individual")
        seen[asg.annotation_id] = i
        out[asg.annotation_id] = asg
    return out


CSV_COLUMNS = [
    "annotation_id", "photo", "box_x", "box_y", "box_w", "box_h", "theta", "species", "viewpoint", "decision",
    "individual", "score", "candidate", "encounter", "datetime", "latitude", "longitude", "site", "camera",
    "observer", "notes",
]  # fmt: skip
NO_SPECIES = "animal"  # the COCO category of annotations without a species (MegaDetector's word)


def _num(value: float | None, digits: int) -> str:
    """A number for a table: rounded, integers without ``.0``, empty for None and non-finite values."""
    if value is None or not math.isfinite(float(value)):
        return ""
    r = round(float(value), digits)
    return str(int(r)) if r.is_integer() else repr(r)


def _finite(value: float | None, digits: int) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else round(float(value), digits)


# ------------------------------------------------------------------------------------------------------------
# sensitive species
def check_precision(species_precision: Mapping[str, Any] | None) -> dict[str, float]:
    """``{species (case-folded): degrees}`` after checking each precision is a number in (0, 90]; ``"*"`` is
    every species (an annotation without one included)."""
    out: dict[str, float] = {}
    for name, value in (species_precision or {}).items():
        key = str(name).strip().casefold()
        try:
            degrees = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            degrees = math.nan
        if not key:
            raise ExportError(f"sensitive species {name!r}: no species name")
        if not (math.isfinite(degrees) and 0 < degrees <= 90):
            raise ExportError(
                f"sensitive species {name!r}: precision {value!r} is not a number of degrees in (0, 90]"
            )
        if key in out:
            raise ExportError(f"sensitive species {name!r} is given twice (names are compared ignoring case)")
        out[key] = degrees
    return out


def cell_centre(value: float, degrees: float, limit: float) -> float:
    """The centre of the ``degrees`` cell holding ``value`` (decimal arithmetic: 0.3 is in [0.3, 0.4)),
    kept within +-``limit``."""
    d, q = Decimal(repr(float(value))), Decimal(repr(degrees))
    k = (d / q).to_integral_value(rounding=ROUND_FLOOR)
    centre = k * q + q / 2
    return float(max(Decimal(-limit), min(Decimal(limit), centre)))


def coarsen(
    annotations: Sequence[Annotation], species_precision: Mapping[str, Any] | None
) -> list[Annotation]:
    """Copies of the annotations with the sensitive species' latitude and longitude moved to the centre of
    their grid cell (see the module's notes); the others unchanged. Species match ignoring case."""
    grid = check_precision(species_precision)
    present = {(a.species or "").casefold() for a in annotations}
    for name in sorted(set(grid) - present - {"*"}):
        logger.warning("sensitive species %r is not among the annotations' species", name)
    out = []
    for ann in annotations:
        degrees = grid.get((ann.species or "").casefold(), grid.get("*"))
        if degrees is None:
            out.append(ann)
            continue
        lat = None if ann.latitude is None else cell_centre(ann.latitude, degrees, 90.0)
        lon = None if ann.longitude is None else cell_centre(ann.longitude, degrees, 180.0)
        out.append(replace(ann, latitude=lat, longitude=lon))
    return out


# ------------------------------------------------------------------------------------------------------------
# CSV
def _csv_row(ann: Annotation, asg: Assignment | None) -> list[str]:
    box = ann.box or [None] * 4
    return [
        ann.annotation_id,
        ann.photo,
        *(_num(v, 3) for v in box),
        _num(ann.theta, 6),
        ann.species or "",
        ann.viewpoint or "",
        asg.decision if asg else "",
        (asg.individual if asg else ann.individual) or "",
        _num(asg.score, 6) if asg else "",
        (asg.candidate if asg else None) or "",
        (asg.encounter if asg and asg.encounter else ann.encounter) or "",
        ann.datetime or "",
        _num(ann.latitude, 7),
        _num(ann.longitude, 7),
        ann.site or "",
        ann.camera or "",
        ann.observer or "",
        ann.notes or "",
    ]


def export_csv(annotations: Sequence[Annotation], assignments: Sequence[Assignment]) -> bytes:
    """One row per annotation, columns :data:`CSV_COLUMNS`; the box as four columns (empty: the whole photo),
    ``individual`` the known or proposed new id (an annotation without an assignment: its input label, with an
    empty decision), ``encounter`` the assignment's or else the annotation's."""
    by_id = index_assignments(annotations, assignments)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for ann in annotations:
        writer.writerow(_csv_row(ann, by_id.get(ann.annotation_id)))
    return buf.getvalue().encode("utf-8")


# ------------------------------------------------------------------------------------------------------------
# COCO
def _photo_path(ann: Annotation, index: int, root: Path) -> tuple[str, Path]:
    """The photo's path relative to ``root`` (POSIX) and on disk; a photo outside ``root`` is never read."""
    p = Path(ann.photo)
    full = p if p.is_absolute() else root / p
    rel = os.path.relpath(os.path.abspath(full), os.path.abspath(root))
    try:
        inside = full.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError, ValueError):
        inside = False
    if rel == ".." or rel.startswith(".." + os.sep) or not inside:
        raise ExportError(
            f"{row_label('annotations', index, ann.source)}: photo {ann.photo!r} is outside the photo root "
            f"{root}"
        )
    return Path(rel).as_posix(), full


def _displayed(full: Path, what: str) -> tuple[int, int]:
    """The photo's displayed (EXIF-oriented) size, read from its header."""
    from PIL import Image, UnidentifiedImageError

    from modeling.boxes_animal_reid import displayed_size

    try:
        with Image.open(full) as im:
            return displayed_size(im)
    except UnidentifiedImageError as err:
        raise ExportError(f"{what}: photo {full} is not an image Pillow can read") from err
    except Image.DecompressionBombError as err:
        raise ExportError(f"{what}: photo {full} is too large to open ({err})") from err
    except OSError as err:
        raise ExportError(f"{what}: photo {describe_os_error(err, full)}") from err


def _image(images: dict[str, dict], ann: Annotation, index: int, root: Path) -> dict:
    """The COCO image of the annotation's photo (added on first sight); photo-level fields must agree."""
    key, full = _photo_path(ann, index, root)
    what = row_label("annotations", index, ann.source)
    img = images.get(key)
    if img is None:
        w, h = _displayed(full, what)
        img = {"id": len(images) + 1, "file_name": key, "width": w, "height": h, "date_captured": ""}
        img.update(location=ann.site or "", camera=ann.camera or "", row=index)
        images[key] = img
    if ann.datetime and img["date_captured"] and ann.datetime != img["date_captured"]:
        raise ExportError(
            f"{row_label('annotations', img['row'])} and {what} share photo {key!r} but differ in datetime "
            f"({img['date_captured']!r}, {ann.datetime!r})"
        )
    img["date_captured"] = img["date_captured"] or ann.datetime or ""
    return img


def _coco_annotation(k: int, ann: Annotation, img: dict, category: int, asg: Assignment | None) -> dict:
    box = ann.box or [0, 0, img["width"], img["height"]]
    bbox = [round(float(v), 3) for v in box]
    individual = (asg.individual if asg else ann.individual) or None
    return {
        "id": k,
        "image_id": img["id"],
        "category_id": category,
        "bbox": bbox,
        "area": round(bbox[2] * bbox[3], 3),
        "iscrowd": 0,
        "theta": ann.theta,
        "annotation_id": ann.annotation_id,
        "individual_id": individual,
        "name": individual,
        "decision": asg.decision if asg else None,
        "score": _finite(asg.score, 6) if asg else None,
        "candidate": asg.candidate if asg else None,
        "viewpoint": ann.viewpoint,
        "encounter": (asg.encounter if asg and asg.encounter else ann.encounter),
    }


def export_coco(
    annotations: Sequence[Annotation], assignments: Sequence[Assignment], photo_root: str | os.PathLike
) -> dict:
    """COCO as a dict (see the module's notes); photos are read (headers only) under ``photo_root``, relative
    photo paths taken from it."""
    by_id = index_assignments(annotations, assignments)
    root = Path(photo_root)
    species = sorted({a.species or NO_SPECIES for a in annotations})
    categories = {name: i for i, name in enumerate(species, start=1)}
    images: dict[str, dict] = {}
    out_anns = []
    for i, ann in enumerate(annotations):
        img = _image(images, ann, i, root)
        category = categories[ann.species or NO_SPECIES]
        out_anns.append(_coco_annotation(i + 1, ann, img, category, by_id.get(ann.annotation_id)))
    for img in images.values():
        del img["row"]
    return {
        "info": {"description": "animal-reid season export", "version": "1.0", "contributor": "animal-reid"},
        "licenses": [],
        "images": list(images.values()),
        "annotations": out_anns,
        "categories": [{"id": i, "name": n, "supercategory": "animal"} for n, i in categories.items()],
    }
