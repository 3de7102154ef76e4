"""Ingest annotation tables: COCO JSON (Wildbook, LILA, COCO Camera Traps) and CSV (one row per annotation).

Both give boxes in the displayed photo's pixels (EXIF orientation applied) and may already name the individual
(a catalogue) or the encounter. Each photo is opened once: a missing or unreadable photo, or a box that does not
fit it, is a reported skip, and the photo's EXIF fills the date-time, place and camera the table leaves empty.

* COCO (:func:`ingest_coco`): ``images`` (``id``, ``file_name`` relative to ``image_root``, optional
  ``date_captured`` / ``datetime``, ``latitude`` / ``longitude`` (or Wildbook's ``gps_lat_captured`` /
  ``gps_lon_captured``), ``location`` (the site), ``seq_id``) and ``annotations`` (``id`` or ``uuid``,
  ``image_id``, ``bbox``, ``theta``, ``viewpoint``, the individual in ``individual_id`` / ``name`` /
  ``identity`` (Wildbook's ``____`` is none), the species in ``species`` or the category's name, the
  encounter in ``encounter`` / ``seq_id`` / ``occurrence``, else the image's ``seq_id``).
* CSV (:func:`ingest_csv`): a ``path`` column (or ``photo``, ``file_path``, ``file_name``) relative to the CSV's
  folder, and any of ``identity`` (``individual``, ``individual_id``, ``name``), ``species``, ``encounter``,
  ``viewpoint``, ``datetime`` (``date_captured``), ``latitude``, ``longitude``, ``box`` / ``bbox`` (or ``x, y,
  w, h``), ``theta``, ``site``, ``camera``, ``observer``, ``notes``, ``annotation_id``. Without
  ``annotation_id`` the id is the path (``<path>#<n>`` when a photo has several rows). An annotation table
  written by ``animal-reid ingest`` reads back.

Paths resolving outside the root are skipped, never read; a repeated id is a skip naming both rows.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .annotations import Annotation
from .ingest import (
    BAD_BOX,
    DUPLICATE,
    MALFORMED,
    MISSING,
    OUTSIDE,
    UNREADABLE,
    IngestError,
    Skip,
    is_inside,
    photo_annotation,
    read_text,
    species_for,
)
from .ingest_exif import PhotoInfo, UnreadablePhoto, iso_datetime, read_photo

logger = logging.getLogger(__name__)

__all__ = ["ingest_coco", "ingest_csv", "pixel_box"]

#: how far (pixels, or this share of the side when larger) a box may pass the photo's edge
PIXEL_TOLERANCE = 1.0


class RowError(ValueError):
    """A row that cannot be an annotation: skipped with ``reason``."""

    def __init__(self, message: str, reason: str = MALFORMED):
        super().__init__(message)
        self.reason = reason


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _text(value: Any, what: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise RowError(f"{what} {_shown(value)} is not text")


def _number(value: Any, what: str, low: float = -math.inf, high: float = math.inf) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise RowError(f"{what} {_shown(value)} is not a number") from None
    if not (math.isfinite(number) and low <= number <= high):
        raise RowError(f"{what} {_shown(value)} is not a number in [{low:g}, {high:g}]")
    return number


def _datetime(value: Any, what: str) -> str | None:
    text = _text(value, what)
    if text is None:
        return None
    try:
        return iso_datetime(text)
    except ValueError:
        raise RowError(f"{what} {text!r} is not a date-time (ISO 8601 or EXIF)") from None


def pixel_box(value: Any, size: tuple[int, int] | None) -> list[float] | None:
    """``[x, y, w, h]`` from a list or its text (``"[1, 2, 3, 4]"``, ``"1 2 3 4"``), checked against the displayed
    ``size`` when given; :class:`ValueError` saying what is wrong; None when empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    parts = value.strip().strip("[]()").replace(",", " ").split() if isinstance(value, str) else value
    try:
        if not isinstance(parts, list | tuple) or len(parts) != 4 or any(isinstance(v, bool) for v in parts):
            raise TypeError
        x, y, w, h = (float(v) for v in parts)
    except (TypeError, ValueError):
        raise ValueError(f"box {_shown(value)} is not 4 numbers [x, y, w, h]") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise ValueError(f"box {_shown(value)} is not 4 finite numbers with w, h > 0")
    if size is not None:
        tx, ty = max(PIXEL_TOLERANCE, 0.002 * size[0]), max(PIXEL_TOLERANCE, 0.002 * size[1])
        if x < -tx or y < -ty or x + w > size[0] + tx or y + h > size[1] + ty:
            raise ValueError(f"box {_shown(value)} does not fit the photo ({size[0]} x {size[1]} displayed)")
    return [x, y, w, h]


class _Photos:
    """Photos under a root, each located and opened once (a missing, outside or unreadable one: RowError)."""

    def __init__(self, root: Path):
        self.root = root
        self.cache: dict[str, tuple[Path, PhotoInfo] | RowError] = {}

    def get(self, name: str) -> tuple[str, Path, PhotoInfo]:
        rel_name = name.replace("\\", "/")
        path = Path(rel_name) if Path(rel_name).is_absolute() else self.root / rel_name
        if not is_inside(path, self.root):
            raise RowError(f"photo {name!r} resolves outside {self.root}: not read", OUTSIDE)
        rel = Path(os.path.abspath(path)).relative_to(Path(os.path.abspath(self.root))).as_posix()
        if rel not in self.cache:
            self.cache[rel] = self._open(path)
        found = self.cache[rel]
        if isinstance(found, RowError):
            raise found
        return rel, found[0], found[1]

    @staticmethod
    def _open(path: Path) -> tuple[Path, PhotoInfo] | RowError:
        if not path.is_file():
            return RowError(f"no such photo {path}", MISSING)
        try:
            info = read_photo(path)
        except UnreadablePhoto as err:
            return RowError(f"unreadable photo {path} ({err})", UNREADABLE)
        if info.note:
            logger.warning("%s: %s", path, info.note)
        return path, info


def _first(row: Mapping, names: tuple[str, ...]) -> Any:
    for name in names:
        value = row.get(name)
        if value not in (None, ""):
            return value
    return None


def _make(photos: _Photos, name: str, box_value: Any, fields: dict, suffix: str, source) -> Annotation:
    """The annotation of one row (box checked against the photo), its id the row's own or the photo's relative
    path followed by ``suffix``."""
    rel, path, info = photos.get(name)
    try:
        box = pixel_box(box_value, info.size)
    except ValueError as err:
        raise RowError(str(err), BAD_BOX) from None
    ann_id = fields.pop("annotation_id", None) or f"{rel}{suffix}"
    if fields.get("species") is None:
        fields["species"] = species_for(rel, source["species"], source["species_map"])
    fields["theta"] = fields.get("theta") or 0.0
    return photo_annotation(ann_id, path, info, box=box, **fields)


def _dedupe(rows: list[tuple[str, Annotation]], source: str, skips: list[Skip]) -> list[Annotation]:
    """The annotations whose id is new; a repeated id is a skip naming both rows."""
    out: list[Annotation] = []
    first: dict[str, str] = {}
    for row, ann in rows:
        if ann.annotation_id in first:
            skips.append(
                Skip(
                    source,
                    row,
                    DUPLICATE,
                    f"{source} {row}: annotation id {ann.annotation_id!r} repeats "
                    f"{first[ann.annotation_id]}: skipped, {first[ann.annotation_id]} kept",
                )
            )
            continue
        first[ann.annotation_id] = row
        out.append(ann)
    return out


# ----------------------------------------------------------------------------------------------------------------
# COCO
def _load_coco(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            coco = json.load(fh)
    except OSError as err:
        raise IngestError(f"{path}: {err.strerror or err}") from err
    except (ValueError, RecursionError) as err:
        raise IngestError(f"{path}: not valid JSON ({' '.join(str(err).split())})") from err
    if not isinstance(coco, dict) or not all(
        isinstance(coco.get(k), list) for k in ("images", "annotations")
    ):
        raise IngestError(
            f"{path}: not a COCO file (expected an object with 'images' and 'annotations' lists)"
        )
    return coco


def _coco_images(coco: dict) -> tuple[dict, dict[Any, str]]:
    """Images by id, and for an id listed twice with different files, the two rows."""
    images: dict = {}
    rows: dict = {}
    ambiguous: dict[Any, str] = {}
    for i, img in enumerate(coco["images"]):
        if (
            not isinstance(img, dict)
            or not isinstance(img.get("id"), str | int)
            or isinstance(img.get("id"), bool)
        ):
            continue
        key = img["id"]
        if key in images and images[key].get("file_name") != img.get("file_name"):
            ambiguous[key] = f"images[{rows[key]}] and images[{i}]"
        images.setdefault(key, img)
        rows.setdefault(key, i)
    return images, ambiguous


def _coco_fields(ann: dict, img: dict, categories: dict) -> dict:
    individual = _text(_first(ann, ("individual_id", "name", "identity")), "individual_id")
    lat = _first(img, ("latitude", "gps_lat_captured"))
    lon = _first(img, ("longitude", "gps_lon_captured"))
    return {
        "annotation_id": _text(_first(ann, ("uuid", "id")), "id"),
        "theta": _number(ann.get("theta"), "theta") or 0.0,
        "species": _text(ann.get("species"), "species") or categories.get(ann.get("category_id")),
        "viewpoint": _text(ann.get("viewpoint"), "viewpoint"),
        "individual": individual if individual != "____" else None,
        "encounter": _text(
            _first(ann, ("encounter", "seq_id", "occurrence")) or img.get("seq_id"), "encounter"
        ),
        "datetime": _datetime(_first(img, ("date_captured", "datetime")), "date_captured"),
        "latitude": _number(lat, "latitude", -90, 90),
        "longitude": _number(lon, "longitude", -180, 180),
        "site": _text(img.get("location"), "location"),
    }


def ingest_coco(
    json_path: str | os.PathLike,
    image_root: str | os.PathLike,
    species: str | None = None,
    species_map: Mapping[str, str] | None = None,
) -> tuple[list[Annotation], list[Skip]]:
    """One annotation per COCO annotation (its photo's ``file_name`` relative to ``image_root``)."""
    path, root = Path(json_path), Path(image_root)
    if not root.is_dir():
        raise IngestError(f"{image_root}: no such folder")
    coco = _load_coco(path)
    categories = {
        c.get("id"): str(c.get("name")) for c in coco.get("categories") or [] if isinstance(c, dict)
    }
    images, ambiguous = _coco_images(coco)
    photos, skips, rows = _Photos(root.resolve()), [], []
    options = {"species": species, "species_map": species_map}
    for i, ann in enumerate(coco["annotations"]):
        row = f"annotations[{i}]"
        try:
            if not isinstance(ann, dict):
                raise RowError(f"expected an object, got {_shown(ann)}")
            img = images.get(ann.get("image_id"))
            if ann.get("image_id") in ambiguous:
                raise RowError(
                    f"image_id {ann['image_id']!r} names two photos ({ambiguous[ann['image_id']]})", DUPLICATE
                )
            if img is None or not isinstance(img.get("file_name"), str) or not img["file_name"]:
                raise RowError(f"image_id {_shown(ann.get('image_id'))} is not an image with a file_name")
            fields = _coco_fields(ann, img, categories)
            fields["source"] = f"{path.name} {row}"
            rows.append((row, _make(photos, img["file_name"], ann.get("bbox"), fields, f"#{i}", options)))
        except RowError as err:
            skips.append(Skip(str(path), row, err.reason, f"{path} {row}: {err}"))
    return _dedupe(rows, str(path), skips), skips


# ----------------------------------------------------------------------------------------------------------------
# CSV
_PATH_COLUMNS = ("path", "photo", "file_path", "file_name")
_CSV_COLUMNS = {
    "individual": ("identity", "individual", "individual_id", "name"),
    "datetime": ("datetime", "date_captured"),
    "box": ("box", "bbox"),
}


def _csv_rows(path: Path) -> Iterator[tuple[int, dict]]:
    text = read_text(path)
    reader = csv.DictReader(io.StringIO(text))
    if not set(_PATH_COLUMNS) & set(reader.fieldnames or []):
        raise IngestError(
            f"{path}: no path column (expected one of {', '.join(_PATH_COLUMNS)}; got {reader.fieldnames})"
        )
    try:
        for row in reader:
            yield reader.line_num, row
    except csv.Error as err:
        raise IngestError(f"{path} line {reader.line_num}: not readable CSV ({err})") from err


def _csv_fields(row: dict) -> dict:
    fields = {
        name: _text(row.get(name), name) for name in ("species", "encounter", "viewpoint", "site", "camera")
    }
    fields.update({name: _text(row.get(name), name) for name in ("observer", "notes", "annotation_id")})
    fields["individual"] = _text(_first(row, _CSV_COLUMNS["individual"]), "identity")
    fields["datetime"] = _datetime(_first(row, _CSV_COLUMNS["datetime"]), "datetime")
    fields["latitude"] = _number(row.get("latitude"), "latitude", -90, 90)
    fields["longitude"] = _number(row.get("longitude"), "longitude", -180, 180)
    fields["theta"] = _number(row.get("theta"), "theta") or 0.0
    fields["confidence"] = _number(row.get("confidence"), "confidence", 0, 1)
    return fields


def _csv_box(row: dict) -> Any:
    box = _first(row, _CSV_COLUMNS["box"])
    corners = [row.get(k) not in (None, "") for k in "xywh"]
    if box is None and all(corners):
        return [row[k] for k in "xywh"]
    if box is None and any(corners):
        raise RowError(f"x/y/w/h: expected all four, got {[row.get(k) for k in 'xywh']}", BAD_BOX)
    return box


def ingest_csv(
    csv_path: str | os.PathLike,
    species: str | None = None,
    species_map: Mapping[str, str] | None = None,
) -> tuple[list[Annotation], list[Skip]]:
    """One annotation per CSV row (paths relative to the CSV's folder, and inside it)."""
    path = Path(csv_path)
    root = path.parent.resolve()
    photos, skips, rows = _Photos(root), [], []
    parsed = list(_csv_rows(path))
    counts = Counter(_first(r, _PATH_COLUMNS) for _, r in parsed)
    seen: Counter = Counter()
    options = {"species": species, "species_map": species_map}
    for line, raw in parsed:
        row = f"line {line}"
        try:
            name = _first(raw, _PATH_COLUMNS)
            if name is None:
                raise RowError(f"no photo path (columns {', '.join(_PATH_COLUMNS)} empty)")
            seen[name] += 1
            fields = _csv_fields(raw)
            fields["source"] = f"{path.name} {row}"
            suffix = f"#{seen[name]}" if counts[name] > 1 else ""
            rows.append((row, _make(photos, name, _csv_box(raw), fields, suffix, options)))
        except RowError as err:
            skips.append(Skip(str(path), row, err.reason, f"{path} {row}: {err}"))
    return _dedupe(rows, str(path), skips), skips
