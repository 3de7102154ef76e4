"""Central validation of the unified table, before anything is written.

Every record is checked once: rows a reader could not parse (``extra["invalid"]``, see
:meth:`~data_scripts.sources.base.Source.skipped`), required fields and their types, known species, unique
image id, one identity per image region, file exists, full decode (catches truncated files), finite box inside
the image with a positive width and height and sides of at least :data:`MIN_SIDE_PX`, and enough images per
identity. A row that fails is skipped and reported with its reason; the build never stops halfway because of
one file or one row.

Ambiguity is never settled by a silent choice: rows sharing one image id are all skipped, each naming the
others (an exact repeat is kept once and the repeat reported); the same file and box under two identities of one
source skips every such row, each naming the others. Rows name themselves by ``extra["row"]`` (the reader's
"file line N" / "file annotations[i]"), else by their path.

Boxes are in the photo's displayed coordinates (EXIF orientation applied, the convention of COCO tools and
MegaDetector, and of the image processor: :func:`modeling.image_processing_animal_reid.displayed_size`); a box
refused on a photo with an EXIF orientation says the displayed size and the orientation.
Decoding runs in a process pool and each file is decoded exactly once per build (the bytes read for the
check are the bytes embedded in the Parquet shards).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import numbers
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageFile
from tqdm.auto import tqdm

from .schema import SPECIES, Record

logger = logging.getLogger(__name__)

# Reasons a row is skipped (keys of the build report's "skipped" table).
MISSING_FIELD = "missing required field"
UNKNOWN_SPECIES = "unknown species"
DUPLICATE_ID = "duplicate image_id"
DUPLICATE_IMAGE_ENTRY = "COCO image id listed twice"
TWO_IDENTITIES = "one image under two identities"
MISSING_FILE = "missing file"
CORRUPT_IMAGE = "image does not decode"
BOX_ZERO_AREA = "box of zero or negative size"
BOX_PAST_BORDER = "box extends past the image border"
BOX_COVERS_IMAGE = "box larger than the image"
BOX_OUTSIDE = "box outside image"
BOX_NOT_FINITE = "box or theta not finite"
BOX_TOO_SMALL = "box side below the minimum"
IMAGE_TOO_SMALL = "image side below the minimum"
TOO_FEW_IMAGES = "identity with too few images"
EXCLUDED = "excluded by the source declaration"
MALFORMED_ROW = "malformed row"
OUTSIDE_SOURCE = "path outside the source folder"

BOX_TOLERANCE_PX = 1.0
# The smallest image or box side the image processor accepts (its default ``min_side``, in
# modeling/image_processing_animal_reid.py): a smaller crop would pass here and fail at training or identify.
MIN_SIDE_PX = 8
_FORMAT_EXT = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif", "GIF": ".gif"}


@dataclass
class Problem:
    image_id: str
    source: str
    reason: str
    detail: str = ""


@dataclass
class ValidatedRow:
    """A record that passed validation, with the bytes to embed and the displayed size (EXIF orientation
    applied)."""

    record: Record
    data: bytes
    width: int
    height: int
    file_name: str
    digest: str


@dataclass
class ValidationResult:
    rows: list[ValidatedRow]
    problems: list[Problem]
    warnings: dict[str, int] = field(default_factory=dict)
    duplicates_across_identities: list[list[str]] = field(default_factory=list)

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(Counter(p.reason for p in self.problems).most_common())

    def skipped_by_source(self) -> dict[str, dict[str, int]]:
        table: dict[str, Counter] = defaultdict(Counter)
        for p in self.problems:
            table[p.source][p.reason] += 1
        return {src: dict(c) for src, c in sorted(table.items())}


class Decoded(NamedTuple):
    """What :func:`decode` learnt of one file: its bytes, displayed size (EXIF orientation applied), format,
    error (None when it decodes), EXIF orientation (None when it has none) and stored size."""

    data: bytes | None
    width: int
    height: int
    format: str
    error: str | None
    orientation: int | None = None
    stored: tuple[int, int] = (0, 0)


def load_orientation_rule() -> Callable[[Image.Image], tuple[int, int]]:
    """The package's one orientation rule, ``displayed_size`` of the image processor (imported on first use:
    it brings torch; :func:`validate` calls this before starting decode processes, which then inherit it)."""
    from modeling.boxes_animal_reid import displayed_size

    return displayed_size


def exif_orientation(image: Image.Image) -> int | None:
    """The EXIF orientation tag (1-8), None when the file has none or its EXIF cannot be read."""
    try:
        value = image.getexif().get(0x0112)
    except Exception:  # a broken EXIF block: the processor ignores it as well
        return None
    return value if isinstance(value, int) else None


def decode(item: tuple[str | None, bytes | None]) -> Decoded:
    """Read (if a path) and fully decode one image; its size is the displayed one (EXIF orientation applied)."""
    path, data = item
    lenient = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail, whatever the caller set
    try:
        if data is None:
            data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # full decode: a truncated file fails here, not only in the header
            width, height = load_orientation_rule()(im)
            return Decoded(data, width, height, im.format or "", None, exif_orientation(im), im.size)
    except FileNotFoundError:
        return Decoded(None, 0, 0, "", MISSING_FILE)
    except Exception as err:  # any decoder failure is a property of the file, reported per row
        return Decoded(None, 0, 0, "", f"{type(err).__name__}: {err}")
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _field_problem(rec: Record) -> str | None:
    """What is wrong with the types of a record's fields (a source that is not one of the readers here)."""
    for name in ("source", "species", "image_id", "identity", "viewpoint", "encounter", "license"):
        value = getattr(rec, name)
        if value is None:
            continue
        if not isinstance(value, str):
            return f"{name}: expected text, got {type(value).__name__}"
        if not value.isascii() and not _encodable(value):  # a lone surrogate (JSON's "\ud800")
            return f"{name}: not valid Unicode text ({value!r:.80})"
    bbox = rec.bbox
    if bbox is not None and not (
        isinstance(bbox, tuple | list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)
    ):
        return f"bbox: expected 4 numbers [x, y, w, h], got {bbox!r:.80}"
    if not _is_number(rec.theta):
        return f"theta: expected a number, got {rec.theta!r:.80}"
    return None


def _num(v: float) -> str:
    """A coordinate as written in messages: ``5`` for 5.0, ``2.5`` otherwise."""
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _box_text(bbox) -> str:
    return "[" + ", ".join(_num(v) for v in bbox) + "]"


def _size_problem(bbox) -> str | None:
    """What is wrong with a box's width and height ("zero width", "negative height (-3)"), or None."""
    parts = []
    for name, v in (("width", bbox[2]), ("height", bbox[3])):
        if v == 0:
            parts.append(f"zero {name}")
        elif v < 0:
            parts.append(f"negative {name} ({_num(v)})")
    return " and ".join(parts) or None


def _placement_problem(bbox, width: int, height: int) -> tuple[str, str] | None:
    """Why a box of positive size does not fit a ``width`` x ``height`` image (beyond the tolerance), or None:
    entirely outside it, larger than it on every side, or past some of its borders (each named)."""
    x, y, w, h = bbox
    tol, box, size = BOX_TOLERANCE_PX, _box_text(bbox), f"{width}x{height}"
    past = [
        (side, text)
        for side, beyond, text in (
            ("left", x < -tol, f"x = {_num(x)} < 0"),
            ("top", y < -tol, f"y = {_num(y)} < 0"),
            ("right", x + w > width + tol, f"x + w = {_num(x + w)} > {width}"),
            ("bottom", y + h > height + tol, f"y + h = {_num(y + h)} > {height}"),
        )
        if beyond
    ]
    if not past:
        return None
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        return BOX_OUTSIDE, f"bbox {box} lies outside the {size} image: no pixel of it is in the image"
    if len(past) == 4:
        return BOX_COVERS_IMAGE, (
            f"bbox {box} covers the whole {size} image and extends past all four of its borders"
        )
    sides = " and ".join(side for side, _ in past)
    return BOX_PAST_BORDER, (
        f"bbox {box} extends past the {sides} border{'s' if len(past) > 1 else ''} of the {size} image "
        f"({', '.join(text for _, text in past)})"
    )


def _box_problem(bbox, theta: float, width: int, height: int) -> tuple[str, str] | None:
    """Why a box (and its rotation) cannot be cropped from a ``width`` x ``height`` image (the displayed size),
    or None: the reason (a key of the report) and one line saying exactly what is wrong."""
    if not math.isfinite(theta):
        return BOX_NOT_FINITE, f"theta {theta}"
    if bbox is None:
        return None
    x, y, w, h = bbox
    if not all(math.isfinite(v) for v in bbox):
        return BOX_NOT_FINITE, f"bbox {list(bbox)}"
    size = _size_problem(bbox)
    if size is not None:
        return BOX_ZERO_AREA, f"bbox {_box_text(bbox)} has {size}"
    placement = _placement_problem(bbox, width, height)
    if placement is not None:
        return placement
    # an upright box is cropped to its part inside the image; a rotated one keeps its own size
    sides = (min(x + w, width) - max(x, 0.0), min(y + h, height) - max(y, 0.0)) if theta == 0 else (w, h)
    if min(sides) < MIN_SIDE_PX:
        return BOX_TOO_SMALL, (
            f"bbox {list(bbox)} is {sides[0]:.1f}x{sides[1]:.1f} px in the {width}x{height} image; "
            f"at least {MIN_SIDE_PX} per side is required"
        )
    return None


def _record_problem(rec: Record) -> Problem | None:
    """Why a record is skipped before its file is read (unparsed, malformed, incomplete, excluded, unknown
    species), or None."""
    rid = rec.image_id or "<no image_id>"
    invalid = rec.extra.get("invalid")  # a row the reader could not parse: (reason, detail)
    if invalid:
        return Problem(str(rid), str(rec.source or ""), invalid[0], invalid[1])
    bad = _field_problem(rec)
    if bad is not None:
        return Problem(str(rid), str(rec.source or ""), MALFORMED_ROW, bad)
    missing = [name for name in ("source", "species", "identity", "image_id") if not getattr(rec, name)]
    if rec.path is None and rec.data is None:
        missing.append("path or data")
    if missing:
        return Problem(rid, rec.source or "", MISSING_FIELD, ", ".join(missing))
    if rec.extra.get("excluded"):
        return Problem(rid, rec.source, EXCLUDED, str(rec.extra["excluded"]))
    if rec.species not in SPECIES:
        return Problem(rid, rec.source, UNKNOWN_SPECIES, f"{rec.species!r} is not in the vocabulary")
    return None


def row_of(rec: Record) -> str:
    """How messages name a record's row: the reader's ``extra["row"]`` ("t.csv line 7"), else its file."""
    row = rec.extra.get("row")
    if row:
        return str(row)
    return str(rec.path) if rec.path is not None else rec.image_id


_COMPARED = ("identity", "species", "path", "data", "bbox", "theta", "viewpoint", "encounter")


def _difference(a: Record, b: Record) -> str | None:
    """The first field in which two records differ, as "identity 'x' vs 'y'"; None when they are the same."""
    for name in _COMPARED:
        va, vb = getattr(a, name), getattr(b, name)
        if va != vb and not (isinstance(va, float | tuple) and repr(va) == repr(vb)):  # a NaN equals itself
            if name == "data":
                return "image bytes"
            return f"{name} {_short(va)} vs {_short(vb)}"
    return None


def _short(value) -> str:
    text = repr(str(value) if isinstance(value, Path) else value)
    return text if len(text) <= 80 else text[:77] + "..."


def drop_duplicate_ids(records: Sequence[Record], problems: list[Problem]) -> list[Record]:
    """Records whose image id is theirs alone. Rows sharing an id that differ are all skipped, each naming the
    others (which one is meant is unknown); an exact repeat of a row is kept once and the repeat reported."""
    groups: dict[str, list[Record]] = defaultdict(list)
    for rec in records:
        groups[rec.image_id].append(rec)
    kept: list[Record] = []
    for rec in records:
        group = groups[rec.image_id]
        first = group[0]
        if len(group) == 1 or (rec is first and all(_difference(first, r) is None for r in group)):
            kept.append(rec)
            continue
        others = ", ".join(row_of(r) for r in group if r is not rec)
        if all(_difference(first, r) is None for r in group):
            detail = f"{row_of(rec)} repeats {row_of(first)} (same file, identity and box): kept once"
        else:
            diff = _difference(rec, next(r for r in group if _difference(rec, r) is not None))
            detail = f"{row_of(rec)} and {others} have the same id but differ ({diff}): all skipped"
        problems.append(Problem(rec.image_id, rec.source, DUPLICATE_ID, detail))
    return kept


def _region_key(rec: Record) -> tuple:
    return rec.source, os.path.realpath(rec.path), tuple(rec.bbox) if rec.bbox is not None else None


def drop_two_identities(records: Sequence[Record], problems: list[Problem]) -> list[Record]:
    """Records whose file and box (none: the whole photo) no other row of their source gives another identity.
    Where rows disagree, which identity is right is unknown: every row of that file and box is skipped, each
    naming the others. (One photo with several boxed animals is fine: their boxes differ.)"""
    groups: dict[tuple, list[Record]] = defaultdict(list)
    for rec in records:
        if rec.path is not None:
            groups[_region_key(rec)].append(rec)
    kept: list[Record] = []
    for rec in records:
        group = groups.get(_region_key(rec)) if rec.path is not None else None
        if group is None or len({r.identity for r in group}) == 1:
            kept.append(rec)
            continue
        region = "the whole photo" if rec.bbox is None else f"box {_box_text(rec.bbox)}"
        others = "; ".join(f"{row_of(r)} says {r.identity!r}" for r in group if r is not rec)
        detail = f"{row_of(rec)} labels {rec.path} ({region}) as {rec.identity!r}, but {others}: all skipped"
        problems.append(Problem(rec.image_id, rec.source, TWO_IDENTITIES, detail))
    return kept


def screen_records(records: Iterable[Record], problems: list[Problem]) -> list[Record]:
    """The records worth decoding, in order; each other record adds its :class:`Problem` to ``problems``."""
    candidates: list[Record] = []
    for rec in records:
        problem = _record_problem(rec)
        if problem is not None:
            problems.append(problem)
        else:
            candidates.append(rec)
    return drop_two_identities(drop_duplicate_ids(candidates, problems), problems)


def decode_distinct(
    candidates: list[Record], workers: int, progress: bool
) -> tuple[list[Decoded], list[int]]:
    """Decode each distinct file once (several COCO annotations may share one photo): the :func:`decode`
    results, and for each candidate the index of its result."""
    keys: dict[object, int] = {}
    items: list[tuple[str | None, bytes | None]] = []
    rec_key: list[int] = []
    for rec in candidates:
        key = str(rec.path) if rec.path is not None else ("data", id(rec.data))
        if key not in keys:
            keys[key] = len(items)
            items.append((str(rec.path) if rec.path is not None else None, rec.data))
        rec_key.append(keys[key])
    bar = tqdm(total=len(items), desc="decode + validate", unit="img", disable=not progress)
    decoded: list[Decoded] = []
    if workers > 1 and len(items) > 64:
        load_orientation_rule()  # imported once here: the forked decode processes inherit it
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for out in pool.map(decode, items, chunksize=32):
                decoded.append(out)
                bar.update()
    else:
        for item in items:
            decoded.append(decode(item))
            bar.update()
    bar.close()
    return decoded, rec_key


def _orientation_note(image: Decoded) -> str:
    """For a box refused on a photo with an EXIF orientation (other than 1, "as stored"): its displayed and
    stored sizes (boxes are given in the displayed photo's coordinates)."""
    if image.orientation in (None, 1):
        return ""
    return (
        f"; the photo is displayed {image.width}x{image.height} (EXIF orientation {image.orientation}; stored "
        f"{image.stored[0]}x{image.stored[1]}): boxes are in displayed coordinates"
    )


def _image_problem(rec: Record, image: Decoded) -> Problem | None:
    """Why a decoded record is skipped (missing or corrupt file, image too small, unusable box), or None."""
    width, height = image.width, image.height
    if image.error == MISSING_FILE:
        return Problem(rec.image_id, rec.source, MISSING_FILE, str(rec.path))
    if image.error is not None:
        return Problem(rec.image_id, rec.source, CORRUPT_IMAGE, image.error)
    if min(width, height) < MIN_SIDE_PX:
        return Problem(
            rec.image_id, rec.source, IMAGE_TOO_SMALL, f"image {width}x{height} < {MIN_SIDE_PX} px"
        )
    box = _box_problem(rec.bbox, rec.theta, width, height)
    if box is not None:
        placed = box[0] not in (BOX_ZERO_AREA, BOX_NOT_FINITE)  # problems that depend on the photo's size
        return Problem(
            rec.image_id, rec.source, box[0], box[1] + (_orientation_note(image) if placed else "")
        )
    return None


def stored_file_name(rec: Record, fmt: str) -> str:
    """The file name stored in the corpus, with the extension of the real format (LionData's ".png" are JPEG)."""
    stem = Path(
        rec.file_name or (rec.path.name if rec.path is not None else rec.image_id.replace(":", "_"))
    ).stem
    return stem + _FORMAT_EXT.get(fmt, Path(rec.path).suffix if rec.path is not None else ".img")


def check_images(
    candidates: list[Record], rec_key: list[int], decoded: list[Decoded], problems: list[Problem]
) -> tuple[list[ValidatedRow], int]:
    """The candidates whose image and box pass, and how many had a rotation without a box (set to 0); each
    other candidate adds its :class:`Problem` to ``problems``."""
    passed: list[ValidatedRow] = []
    digests: dict[int, str] = {}
    theta_without_box = 0
    for rec, k in zip(candidates, rec_key, strict=True):
        image = decoded[k]
        problem = _image_problem(rec, image)
        if problem is not None:
            problems.append(problem)
            continue
        if rec.theta and rec.bbox is None:  # a rotation needs a box: the image processor refuses it alone
            rec.theta = 0.0
            theta_without_box += 1
        if k not in digests:
            digests[k] = hashlib.sha256(image.data).hexdigest()
        name = stored_file_name(rec, image.format)
        passed.append(ValidatedRow(rec, image.data, image.width, image.height, name, digests[k]))
    return passed, theta_without_box


def drop_small_identities(
    passed: list[ValidatedRow], min_per_identity: int, problems: list[Problem]
) -> list[ValidatedRow]:
    """The rows of identities with at least ``min_per_identity`` images (counted after every other check); each
    other row adds its :class:`Problem` to ``problems``."""
    per_identity = Counter(row.record.identity for row in passed)
    rows: list[ValidatedRow] = []
    for row in passed:
        if per_identity[row.record.identity] < min_per_identity:
            problems.append(
                Problem(
                    row.record.image_id,
                    row.record.source,
                    TOO_FEW_IMAGES,
                    f"{row.record.identity} has {per_identity[row.record.identity]} < {min_per_identity}",
                )
            )
        else:
            rows.append(row)
    return rows


def duplicate_warnings(
    rows: list[ValidatedRow], theta_without_box: int
) -> tuple[dict[str, int], list[list[str]]]:
    """The warnings of the build report, and the groups of byte-identical images under different identities.

    Byte-identical images (same file content and box) are kept but reported: within one identity they are
    harmless copies (they share an encounter in every source here); across identities they are label errors to
    declare as fixes in the source.
    """
    warnings: dict[str, int] = {}
    if theta_without_box:
        warnings["theta without a box (set to 0)"] = theta_without_box
    same: dict[tuple, list[ValidatedRow]] = defaultdict(list)
    for row in rows:
        same[(row.digest, row.record.bbox)].append(row)
    groups = [g for g in same.values() if len(g) > 1]
    duplicates_across: list[list[str]] = []
    if groups:
        warnings["byte-identical copies (kept)"] = sum(len(g) - 1 for g in groups)
        duplicates_across = [
            sorted(r.record.image_id for r in g) for g in groups if len({r.record.identity for r in g}) > 1
        ]
        warnings["byte-identical images under different identities"] = len(duplicates_across)
    return warnings, duplicates_across


def _log_problems(problems: list[Problem], n_rows: int) -> None:
    """Each skipped row at debug level, and one warning counting them by reason."""
    for p in problems:
        logger.debug("skipped %s (%s): %s %s", p.image_id, p.source, p.reason, p.detail)
    if problems:
        logger.warning(
            "validation skipped %d of %d rows: %s",
            len(problems),
            len(problems) + n_rows,
            dict(Counter(p.reason for p in problems)),
        )


def validate(
    records: Iterable[Record],
    *,
    min_per_identity: int = 2,
    workers: int = 2,
    progress: bool = True,
) -> ValidationResult:
    """Check every record; return the rows that pass and one :class:`Problem` per skipped row."""
    problems: list[Problem] = []
    candidates = screen_records(records, problems)
    decoded, rec_key = decode_distinct(candidates, workers, progress)
    passed, theta_without_box = check_images(candidates, rec_key, decoded, problems)
    rows = drop_small_identities(passed, min_per_identity, problems)
    warnings, duplicates_across = duplicate_warnings(rows, theta_without_box)
    _log_problems(problems, len(rows))
    return ValidationResult(rows, problems, warnings, duplicates_across)
