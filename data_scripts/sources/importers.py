"""Generic importers for the formats most re-ID data comes in: Wildbook / LILA COCO JSON and MiewID CSV.

A declaration of a COCO or MiewID source is then only metadata: subclass :class:`CocoSource` or
:class:`MiewIDCsvSource`, set ``info``, and the reading is shared.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections.abc import Iterator
from pathlib import Path

from ..schema import Record, normalize_species
from ..validate import DUPLICATE_IMAGE_ENTRY, MALFORMED_ROW, OUTSIDE_SOURCE
from .base import Source, SourceError, SourceInfo, is_inside, outside_detail

logger = logging.getLogger(__name__)


class RowError(ValueError):
    """One row (annotation) cannot be read: the reader reports it as skipped with ``reason`` and goes on."""

    def __init__(self, message: str, reason: str = MALFORMED_ROW):
        super().__init__(message)
        self.reason = reason


def _show(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number(value, what: str) -> float:
    """A float from a number or a number's text (``nan`` and ``inf`` included: validation judges values)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RowError(f"{what}: expected a number, got {_show(value)}")
    try:
        return float(value)
    except (ValueError, OverflowError):
        raise RowError(f"{what}: expected a number, got {_show(value)}") from None


def _bbox(value) -> tuple[float, float, float, float] | None:
    """``[x, y, w, h]`` from a list of 4 numbers or its text (``"[1, 2, 3, 4]"``, ``"1 2 3 4"``); None if empty."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in ("[", "(") and text[-1:] in ("]", ")"):
            text = text[1:-1]
        value = [part for part in re.split(r"[,\s]+", text) if part]
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise RowError(f"bbox: expected 4 numbers [x, y, w, h], got {_show(value)}")
    x, y, w, h = (_number(v, "bbox") for v in value)
    return x, y, w, h


def _theta(value) -> float:
    """Radians; missing, empty or NaN (how pandas writes a missing value) is 0."""
    if value is None or value == "":
        return 0.0
    theta = _number(value, "theta")
    return 0.0 if math.isnan(theta) else theta


def _unicode(value) -> bool:
    """Whether a string can be written (JSON's ``"\\ud800"`` escape gives a lone surrogate, which cannot)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(value, what: str) -> str | None:
    """A text field: a string or an integer (ids often are); None when missing or empty."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        if not _unicode(value):
            raise RowError(f"{what}: not valid Unicode text ({_show(value)})")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise RowError(f"{what}: expected text or an integer, got {_show(value)}")


def _key(value):
    """``value`` if it can be a COCO id (text or a number), else None."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return value
    return None


def _row_id(row, names: tuple[str, ...], index: int) -> str:
    """The row's own id (the first of ``names`` that is text or an integer), else its position ``#index``."""
    if isinstance(row, dict):
        for name in names:
            value = row.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                return str(value)
            if isinstance(value, str) and value and _unicode(value):
                return value
    return f"#{index}"


def _exists(path: Path) -> bool:
    """Whether there is a file (or a symbolic link, even a dangling one) at ``path``."""
    try:
        return path.exists() or path.is_symlink()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def _images_by_id(entries: list, json_name: str) -> tuple[dict, dict]:
    """The COCO ``images`` by id, and for each id listed more than once with different file names, the one-line
    description of its entries ("images[2] 'a.jpg' and images[5] 'b.jpg'"). Entries that agree on the file are
    one photo (kept); entries that do not leave the photo of an annotation on that id unknown."""
    listed: dict = {}
    for index, img in enumerate(entries):
        if isinstance(img, dict) and _key(img.get("id")) is not None:
            listed.setdefault(_key(img["id"]), []).append((index, img))
    images, ambiguous = {}, {}
    for key, group in listed.items():
        images[key] = group[0][1]
        if len({repr(img.get("file_name")) for _, img in group}) > 1:
            ambiguous[key] = " and ".join(f"images[{i}] {_show(img.get('file_name'))}" for i, img in group)
            logger.warning(
                "%s: image id %s is listed %d times: %s", json_name, _show(key), len(group), ambiguous[key]
            )
    return images, ambiguous


class CocoSource(Source):
    """Wildbook / LILA COCO export: ``<folder>/annotations/*.json`` and ``<folder>/images/<subset>/``.

    One row per annotation: ``bbox`` ``[x, y, w, h]``, ``theta``, ``viewpoint``, the individual in ``name``
    (or ``individual_id`` / ``identity``), the species in ``species`` or the category's name. The encounter is
    the annotation's ``encounter`` / ``occurrence`` when present, else the photo (annotations of one image
    share it). Annotations with no individual are reported by validation and skipped.

    An annotation that cannot be read (not an object, unknown ``image_id``, an image without ``file_name``,
    a field of the wrong type, a ``bbox`` that is not 4 numbers), whose image resolves outside the source
    folder (an absolute ``file_name``, ``../``, a symbolic link pointing out) or whose ``image_id`` is listed
    twice in ``images`` with different files is reported as skipped with its annotation id and the reason
    (both ``images`` entries named);
    a file that is not JSON or not a COCO object (``images`` and ``annotations`` lists) raises
    :class:`~data_scripts.sources.base.SourceError` naming it.
    """

    annotation_glob = "annotations/*.json"

    def image_dirs(self, base: Path, json_path: Path) -> list[Path]:
        subset = json_path.stem.removeprefix("instances_")
        return [base / "images" / subset, base / "images", base]

    def scan(self, root: Path) -> Iterator[Record]:
        base = self.location(root)
        files = sorted(base.glob(self.annotation_glob))
        if not files:
            raise FileNotFoundError(f"{self.info.name}: no COCO JSON matching {base / self.annotation_glob}")
        for json_path in files:
            yield from self.read_coco(json_path, base)

    def load_coco(self, json_path: Path) -> dict:
        """The parsed file, checked to be a COCO object; :class:`SourceError` otherwise."""
        where = f"source {self.info.name!r}: {json_path}"
        try:
            with open(json_path, encoding="utf-8") as fh:
                coco = json.load(fh)
        except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise SourceError(f"{where} is not valid JSON ({err})") from err
        if not isinstance(coco, dict):
            raise SourceError(f"{where}: expected a COCO JSON object, got a {type(coco).__name__}")
        for key in ("images", "annotations"):
            if key not in coco:
                raise SourceError(
                    f"{where}: expected a COCO JSON with {key!r}, got keys {sorted(map(str, coco))}"
                )
        for key in ("images", "annotations", "categories"):
            if key in coco and not isinstance(coco[key], list):
                raise SourceError(f"{where}: {key!r} must be a list, got a {type(coco[key]).__name__}")
        return coco

    def read_coco(self, json_path: Path, base: Path) -> Iterator[Record]:
        coco = self.load_coco(json_path)
        categories = {
            _key(c.get("id")): str(c.get("name") or c.get("id"))
            for c in coco.get("categories", [])
            if isinstance(c, dict) and _key(c.get("id")) is not None
        }
        # an image without a usable id is left out: annotations pointing at it are reported
        images, ambiguous = _images_by_id(coco["images"], json_path.name)
        dirs = self.image_dirs(base, json_path)
        for index, ann in enumerate(coco["annotations"]):
            ann_id = _row_id(ann, ("uuid", "id"), index)
            image_id = f"{json_path.stem}/{ann_id}"
            row = f"{json_path.name} annotations[{index}]" + (
                f" (id {ann_id})" if ann_id != f"#{index}" else ""
            )
            try:
                ref = _key(ann.get("image_id")) if isinstance(ann, dict) else None
                if ref in ambiguous:
                    raise RowError(
                        f"image_id {_show(ref)} is listed more than once among the file's images, with different "
                        f"files ({ambiguous[ref]}): which photo the annotation is on is unknown",
                        DUPLICATE_IMAGE_ENTRY,
                    )
                rec = self.read_annotation(ann, image_id, images, categories, dirs, base)
            except RowError as err:
                yield self.skipped(image_id, err.reason, f"{json_path.name} annotation {ann_id}: {err}")
                continue
            rec.extra["row"] = row
            yield rec

    def locate(self, file_name: str, dirs: list[Path], base: Path) -> Path:
        """The image file: the first of ``dirs / file_name`` that exists (a missing one: the first inside
        ``base``, reported missing by validation). One that exists but resolves outside ``base`` (a symbolic
        link pointing out, ``../``) is refused, never read."""
        candidates = [d / file_name for d in dirs]
        for path in candidates:
            if _exists(path):
                if is_inside(path, base):
                    return path
                raise RowError(f"file_name {_show(file_name)} {outside_detail(path, base)}", OUTSIDE_SOURCE)
        inside = [p for p in candidates if is_inside(p, base)]
        if not inside:
            raise RowError(f"file_name {_show(file_name)} resolves outside the source folder", OUTSIDE_SOURCE)
        return inside[0]

    def read_annotation(
        self, ann, image_id: str, images: dict, categories: dict, dirs: list[Path], base: Path
    ) -> Record:
        """One annotation as a record; :class:`RowError` says why it cannot be."""
        if not isinstance(ann, dict):
            raise RowError(f"expected an object, got {_show(ann)}")
        img = images.get(_key(ann.get("image_id")))
        if img is None:
            raise RowError(f"image_id {_show(ann.get('image_id'))} is not among the file's images")
        file_name = img.get("file_name")
        if not isinstance(file_name, str) or not file_name or not _unicode(file_name):
            raise RowError(f"image {_show(img['id'])}: file_name missing or not text ({_show(file_name)})")
        path = self.locate(file_name, dirs, base)
        default_species = self.info.species[0] if len(self.info.species) == 1 else None
        species = (
            _text(ann.get("species"), "species")
            or categories.get(_key(ann.get("category_id")))
            or default_species
            or ""
        )
        identity = next(
            (v for v in (_text(ann.get(k), k) for k in ("name", "individual_id", "identity")) if v), None
        )
        encounter = (
            _text(ann.get("encounter"), "encounter")
            or _text(ann.get("occurrence"), "occurrence")
            or f"image:{img['id']}"
        )
        return Record(
            source=self.info.name,
            species=normalize_species(species),
            identity=identity if identity != "____" else None,
            image_id=image_id,
            path=path,
            viewpoint=_text(ann.get("viewpoint"), "viewpoint"),
            encounter=encounter,
            bbox=_bbox(ann.get("bbox")),
            theta=_theta(ann.get("theta")),
        )


_PATH_COLUMNS = ("file_path", "file_name", "path")
_IDENTITY_COLUMNS = ("name", "individual_id", "identity")
_ID_COLUMNS = ("annot_uuid", "uuid", "annotation_id")


class MiewIDCsvSource(Source):
    """The MiewID training CSV layout: one row per annotation.

    Columns read (aliases in brackets): ``file_path`` [``file_name``, ``path``] relative to the CSV's folder
    (or absolute, inside that folder), ``name`` [``individual_id``, ``identity``], ``species``, ``viewpoint``,
    ``bbox`` (``"[x, y, w, h]"``) or ``x``/``y``/``w``/``h``, ``theta``, ``encounter`` [``occurrence``, ``date``]
    and ``annot_uuid`` [``uuid``, ``annotation_id``] as the image id (else the row number).

    A row that cannot be read (no path, a ``bbox`` or ``theta`` that is not numbers, part of ``x/y/w/h``) or
    whose path resolves outside the CSV's folder is reported as skipped with its line and the reason; a file
    with no header, without a path or identity column, or that is not CSV text raises
    :class:`~data_scripts.sources.base.SourceError` naming it.
    """

    csv_glob = "*.csv"

    def scan(self, root: Path) -> Iterator[Record]:
        base = self.location(root)
        files = sorted(base.glob(self.csv_glob)) if base.is_dir() else [base]
        if not files:
            raise FileNotFoundError(f"{self.info.name}: no MiewID CSV matching {base / self.csv_glob}")
        for csv_path in files:
            yield from self.read_csv(csv_path, csv_path.parent)

    def read_csv(self, csv_path: Path, folder: Path) -> Iterator[Record]:
        """Every row of one CSV: a record, or a reported skip for a row that cannot be read."""
        where = f"source {self.info.name!r}: {csv_path}"
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            try:
                self._check_header(reader.fieldnames, where)
                for index, row in enumerate(reader):
                    image_id = f"{csv_path.stem}/{self._first(row, *_ID_COLUMNS) or index}"
                    try:
                        rec = self.read_row(row, index, csv_path, folder)
                    except RowError as err:
                        yield self.skipped(
                            image_id, err.reason, f"{csv_path.name} line {reader.line_num}: {err}"
                        )
                        continue
                    rec.extra["row"] = f"{csv_path.name} line {reader.line_num}"
                    yield rec
            except UnicodeDecodeError as err:
                raise SourceError(f"{where} is not UTF-8 text ({err})") from err
            except csv.Error as err:
                raise SourceError(f"{where} line {reader.line_num} is not readable CSV ({err})") from err

    @staticmethod
    def _check_header(fields, where: str) -> None:
        if not fields:
            raise SourceError(f"{where} is empty: expected a header row")
        for names in (_PATH_COLUMNS, _IDENTITY_COLUMNS):
            if not set(names) & set(fields):
                raise SourceError(
                    f"{where}: expected a column {names[0]!r} (or {', '.join(map(repr, names[1:]))}), "
                    f"got columns {list(fields)[:20]}"
                )

    @staticmethod
    def _first(row: dict, *names: str):
        for name in names:
            if row.get(name) not in (None, ""):
                return row[name]
        return None

    def read_row(self, row: dict, index: int, csv_path: Path, folder: Path) -> Record:
        """One row as a record; :class:`RowError` says why it cannot be."""
        file_path = self._first(row, *_PATH_COLUMNS)
        if file_path is None:
            raise RowError(f"no image path (columns {', '.join(_PATH_COLUMNS)} empty)")
        path = Path(file_path)
        if not path.is_absolute():
            path = folder / path
        if not is_inside(path, folder):
            raise RowError(f"path {_show(file_path)} {outside_detail(path, folder)}", OUTSIDE_SOURCE)
        corners = [row.get(k) not in (None, "") for k in "xywh"]
        if row.get("bbox"):
            bbox = _bbox(row["bbox"])
        elif all(corners):
            bbox = _bbox([row["x"], row["y"], row["w"], row["h"]])
        elif any(corners):
            raise RowError(f"x/y/w/h: expected all four, got {[row.get(k) for k in 'xywh']}")
        else:
            bbox = None
        default_species = self.info.species[0] if len(self.info.species) == 1 else ""
        return Record(
            source=self.info.name,
            species=normalize_species(self._first(row, "species") or default_species),
            identity=self._first(row, *_IDENTITY_COLUMNS),
            image_id=f"{csv_path.stem}/{self._first(row, *_ID_COLUMNS) or index}",
            path=path,
            viewpoint=self._first(row, "viewpoint"),
            encounter=self._first(row, "encounter", "occurrence", "date"),
            bbox=bbox,
            theta=_theta(self._first(row, "theta")),
        )


def _adhoc(cls, name: str, folder, license: str, citation: str, species) -> Source:
    src = cls()
    src.info = SourceInfo(
        name=name,
        species=tuple(species),
        license=license,
        citation=citation,
        url="",
        version="local",
        folder=str(folder),
    )
    return src


def coco_source(
    name: str, folder: str | Path, *, license: str = "unknown", citation: str = "", species=()
) -> Source:
    """An ad-hoc COCO source (not registered): ``folder`` holds ``annotations/`` and ``images/``."""
    return _adhoc(CocoSource, name, folder, license, citation, species)


def miewid_source(
    name: str, csv_path: str | Path, *, license: str = "unknown", citation: str = "", species=()
) -> Source:
    """An ad-hoc MiewID CSV source (not registered): ``csv_path`` is the CSV or a folder of CSVs."""
    return _adhoc(MiewIDCsvSource, name, csv_path, license, citation, species)
