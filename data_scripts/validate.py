"""Central validation of the unified table, before anything is written.

Every record is checked once: required fields, known species, unique image id, file exists, full decode
(catches truncated files), box inside the image with non-zero area, and enough images per identity. A row
that fails is skipped and reported with its reason; the build never stops halfway because of one file.
Decoding runs in a process pool and each file is decoded exactly once per build (the bytes read for the
check are the bytes embedded in the Parquet shards).
"""

from __future__ import annotations

import hashlib
import io
import logging
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
TOO_FEW_IMAGES = "identity with too few images"

BOX_TOLERANCE_PX = 1.0
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


def _box_problem(bbox, width: int, height: int) -> tuple[str, str] | None:
    if bbox is None:
        return None
    x, y, w, h = bbox
    if not (w > 0 and h > 0):
        return BOX_ZERO_AREA, f"bbox {list(bbox)}"
    tol = BOX_TOLERANCE_PX
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        return BOX_OUTSIDE, f"bbox {list(bbox)} vs image {width}x{height}"
    return None


def validate(
    records: Iterable[Record],
    *,
    min_per_identity: int = 2,
    workers: int = 2,
    progress: bool = True,
) -> ValidationResult:
    """Check every record; return the rows that pass and one :class:`Problem` per skipped row."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    problems: list[Problem] = []
    candidates: list[Record] = []
    seen_ids: set[str] = set()
    for rec in records:
        rid = rec.image_id or "<no image_id>"
        missing = [name for name in ("source", "species", "identity", "image_id") if not getattr(rec, name)]
        if rec.path is None and rec.data is None:
            missing.append("path or data")
        if missing:
            problems.append(Problem(rid, rec.source or "", MISSING_FIELD, ", ".join(missing)))
            continue
        if rec.species not in SPECIES:
            problems.append(
                Problem(rid, rec.source, UNKNOWN_SPECIES, f"{rec.species!r} is not in the vocabulary")
            )
            continue
        if rec.image_id in seen_ids:
            problems.append(Problem(rid, rec.source, DUPLICATE_ID, ""))
            continue
        seen_ids.add(rec.image_id)
        candidates.append(rec)

    # Decode each distinct file once (several COCO annotations may share one photo).
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

    passed: list[ValidatedRow] = []
    digests: dict[int, str] = {}
    for rec, k in zip(candidates, rec_key, strict=True):
        data, width, height, fmt, err = decoded[k]
        if err == MISSING_FILE:
            problems.append(Problem(rec.image_id, rec.source, MISSING_FILE, str(rec.path)))
            continue
        if err is not None:
            problems.append(Problem(rec.image_id, rec.source, CORRUPT_IMAGE, err))
            continue
        box = _box_problem(rec.bbox, width, height)
        if box is not None:
            problems.append(Problem(rec.image_id, rec.source, box[0], box[1]))
            continue
        if k not in digests:
            digests[k] = hashlib.sha256(data).hexdigest()
        # the stored name carries the real format (LionData's ".png" files are JPEG)
        stem = Path(
            rec.file_name or (rec.path.name if rec.path is not None else rec.image_id.replace(":", "_"))
        ).stem
        file_name = stem + _FORMAT_EXT.get(fmt, Path(rec.path).suffix if rec.path is not None else ".img")
        passed.append(ValidatedRow(rec, data, width, height, file_name, digests[k]))

    # Identities with too few images, counted after every other check.
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

    warnings: dict[str, int] = {}
    by_digest = Counter(row.digest for row in rows)
    dup = sum(n - 1 for n in by_digest.values() if n > 1)
    if dup:
        identities_by_digest: dict[str, set[str]] = defaultdict(set)
        for row in rows:
            if by_digest[row.digest] > 1:
                identities_by_digest[row.digest].add(row.record.identity)
        warnings["byte-identical copies (kept)"] = dup
        warnings["byte-identical copies under different identities"] = sum(
            1 for ids in identities_by_digest.values() if len(ids) > 1
        )
    for p in problems:
        logger.debug("skipped %s (%s): %s %s", p.image_id, p.source, p.reason, p.detail)
    if problems:
        logger.warning(
            "validation skipped %d of %d rows: %s",
            len(problems),
            len(problems) + len(rows),
            dict(Counter(p.reason for p in problems)),
        )
    return ValidationResult(rows, problems, warnings)
