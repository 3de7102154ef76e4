"""Central validation of the unified table, before anything is written.

Every record is checked once: rows a reader could not parse (``extra["invalid"]``, see
:meth:`~data_scripts.sources.base.Source.skipped`), required fields and their types, known species, unique
image id, file exists, full decode (catches truncated files), finite box inside the image with non-zero area
and sides of at least :data:`MIN_SIDE_PX`, and enough images per identity. A row that fails is skipped and
reported with its reason; the build never stops halfway because of one file or one row.
Decoding runs in a process pool and each file is decoded exactly once per build (the bytes read for the
check are the bytes embedded in the Parquet shards).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import numbers
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageFile
from tqdm.auto import tqdm

from .schema import SPECIES, Record

logger = logging.getLogger(__name__)

# Reasons a row is skipped (keys of the build report's "skipped" table).
MISSING_FIELD = "missing required field"
UNKNOWN_SPECIES = "unknown species"
DUPLICATE_ID = "duplicate image_id"
MISSING_FILE = "missing file"
CORRUPT_IMAGE = "image does not decode"
BOX_ZERO_AREA = "box with zero area"
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
    """A record that passed validation, with the bytes to embed and the decoded size."""

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


def decode(item: tuple[str | None, bytes | None]) -> tuple[bytes | None, int, int, str, str | None]:
    """Read (if a path) and fully decode one image: ``(bytes, width, height, format, error)``."""
    path, data = item
    lenient = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail, whatever the caller set
    try:
        if data is None:
            data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # full decode: a truncated file fails here, not only in the header
            return data, im.width, im.height, im.format or "", None
    except FileNotFoundError:
        return None, 0, 0, "", MISSING_FILE
    except Exception as err:  # any decoder failure is a property of the file, reported per row
        return None, 0, 0, "", f"{type(err).__name__}: {err}"
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


def _box_problem(bbox, theta: float, width: int, height: int) -> tuple[str, str] | None:
    """Why a box (and its rotation) cannot be cropped from a ``width`` x ``height`` image, or None."""
    if not math.isfinite(theta):
        return BOX_NOT_FINITE, f"theta {theta}"
    if bbox is None:
        return None
    x, y, w, h = bbox
    if not all(math.isfinite(v) for v in bbox):
        return BOX_NOT_FINITE, f"bbox {list(bbox)}"
    if not (w > 0 and h > 0):
        return BOX_ZERO_AREA, f"bbox {list(bbox)}"
    tol = BOX_TOLERANCE_PX
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        return BOX_OUTSIDE, f"bbox {list(bbox)} vs image {width}x{height}"
    # an upright box is cropped to its part inside the image; a rotated one keeps its own size
    sides = (min(x + w, width) - max(x, 0.0), min(y + h, height) - max(y, 0.0)) if theta == 0 else (w, h)
    if min(sides) < MIN_SIDE_PX:
        return BOX_TOO_SMALL, (
            f"bbox {list(bbox)} is {sides[0]:.1f}x{sides[1]:.1f} px in the {width}x{height} image; "
            f"at least {MIN_SIDE_PX} per side is required"
        )
    return None


def _record_problem(rec: Record, seen_ids: set[str]) -> Problem | None:
    """Why a record is skipped before its file is read (unparsed, malformed, incomplete, excluded, unknown
    species, repeated image id), or None; a record that passes has its image id added to ``seen_ids``."""
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
    if rec.image_id in seen_ids:
        return Problem(rid, rec.source, DUPLICATE_ID, "")
    seen_ids.add(rec.image_id)
    return None


def screen_records(records: Iterable[Record], problems: list[Problem]) -> list[Record]:
    """The records worth decoding, in order; each other record adds its :class:`Problem` to ``problems``."""
    candidates: list[Record] = []
    seen_ids: set[str] = set()
    for rec in records:
        problem = _record_problem(rec, seen_ids)
        if problem is not None:
            problems.append(problem)
        else:
            candidates.append(rec)
    return candidates


def decode_distinct(candidates: list[Record], workers: int, progress: bool) -> tuple[list[tuple], list[int]]:
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
    decoded: list[tuple] = []
    if workers > 1 and len(items) > 64:
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


def _image_problem(rec: Record, err: str | None, width: int, height: int) -> Problem | None:
    """Why a decoded record is skipped (missing or corrupt file, image too small, unusable box), or None."""
    if err == MISSING_FILE:
        return Problem(rec.image_id, rec.source, MISSING_FILE, str(rec.path))
    if err is not None:
        return Problem(rec.image_id, rec.source, CORRUPT_IMAGE, err)
    if min(width, height) < MIN_SIDE_PX:
        return Problem(
            rec.image_id, rec.source, IMAGE_TOO_SMALL, f"image {width}x{height} < {MIN_SIDE_PX} px"
        )
    box = _box_problem(rec.bbox, rec.theta, width, height)
    if box is not None:
        return Problem(rec.image_id, rec.source, box[0], box[1])
    return None


def stored_file_name(rec: Record, fmt: str) -> str:
    """The file name stored in the corpus, with the extension of the real format (LionData's ".png" are JPEG)."""
    stem = Path(
        rec.file_name or (rec.path.name if rec.path is not None else rec.image_id.replace(":", "_"))
    ).stem
    return stem + _FORMAT_EXT.get(fmt, Path(rec.path).suffix if rec.path is not None else ".img")


def check_images(
    candidates: list[Record], rec_key: list[int], decoded: list[tuple], problems: list[Problem]
) -> tuple[list[ValidatedRow], int]:
    """The candidates whose image and box pass, and how many had a rotation without a box (set to 0); each
    other candidate adds its :class:`Problem` to ``problems``."""
    passed: list[ValidatedRow] = []
    digests: dict[int, str] = {}
    theta_without_box = 0
    for rec, k in zip(candidates, rec_key, strict=True):
        data, width, height, fmt, err = decoded[k]
        problem = _image_problem(rec, err, width, height)
        if problem is not None:
            problems.append(problem)
            continue
        if rec.theta and rec.bbox is None:  # a rotation needs a box: the image processor refuses it alone
            rec.theta = 0.0
            theta_without_box += 1
        if k not in digests:
            digests[k] = hashlib.sha256(data).hexdigest()
        passed.append(ValidatedRow(rec, data, width, height, stored_file_name(rec, fmt), digests[k]))
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
