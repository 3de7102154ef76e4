"""Inputs of identification: image items, the bad-image policy, and the gallery and query readers.

A gallery is a folder per individual, a CSV (``path,identity[,species,encounter]``) or a built corpus directory;
queries are image files, folders of images or CSVs (``path`` [, ``identity``, ...]); see
:mod:`animal_reid.identify`. Unusable files go to a :class:`BadImages` (skipped and listed, or raised).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..manifest import describe_os_error

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
ON_ERROR = ("skip", "raise")


class UsageError(ValueError):
    """A bad command-line argument or input path: the CLI exits with status 2."""


class BadImageError(ValueError):
    """An unusable gallery or query image under ``on_error="raise"`` (names the file and the reason)."""


@dataclass
class ImageItem:
    """One image: a file path or encoded bytes, with what is known about it."""

    image: str | bytes
    name: str
    identity: str | None = None
    species: str | None = None
    encounter: str | None = None
    bbox: list[float] | None = None
    theta: float = 0.0

    def cache_key(self) -> str:
        if isinstance(self.image, bytes):
            src = "sha1:" + hashlib.sha1(self.image).hexdigest()
        else:
            p = Path(self.image).resolve()
            st = p.stat()
            src = f"file:{p}:{st.st_size}:{st.st_mtime_ns}"
        bbox = None if self.bbox is None else [round(float(v), 3) for v in self.bbox]
        payload = json.dumps([src, bbox, round(float(self.theta or 0.0), 6)])
        return hashlib.sha1(payload.encode()).hexdigest()

    def open(self):
        """The image as an RGB PIL image cropped to its box (rotated by ``theta``), for match sheets.

        The crop the model and re-ranking see: the image processor's, the box in the displayed photo's pixels
        (EXIF orientation applied); an unusable box raises its ``InvalidImageError``.
        """
        from ..rerank.features import crop_item

        return crop_item(self)


@dataclass
class SkippedImage:
    """A gallery or query image left out of the run, and why."""

    path: str
    role: str  # "gallery" or "query"
    reason: str
    item: ImageItem | None = field(default=None, repr=False, compare=False)


class BadImages:
    """The bad-image policy of a run: ``"skip"`` lists unusable images and goes on, ``"raise"`` stops at the first.

    Pass one object to :func:`read_gallery`, :func:`read_queries` and :meth:`Identifier.identify`; afterwards
    ``skipped`` holds a :class:`SkippedImage` per image left out (write it with :func:`write_skipped`).
    """

    #: images logged one by one at WARNING; the rest at DEBUG (all are in ``skipped``)
    LOG_FIRST = 20

    def __init__(self, on_error: str = "skip"):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.on_error = on_error
        self.skipped: list[SkippedImage] = []

    def __len__(self) -> int:
        return len(self.skipped)

    def add(self, path: str, role: str, reason: str, item: ImageItem | None = None, error=None) -> None:
        """Record one unusable image (``"skip"``) or raise :class:`BadImageError` about it (``"raise"``)."""
        if self.on_error == "raise":
            raise BadImageError(f"{role} image {path}: {reason}") from error
        level = logging.WARNING if len(self.skipped) < self.LOG_FIRST else logging.DEBUG
        logger.log(level, "skipping %s image %s: %s", role, path, reason)
        self.skipped.append(SkippedImage(str(path), role, reason, item))

    def count(self, role: str) -> int:
        return sum(1 for s in self.skipped if s.role == role)

    def summary(self, report: str | os.PathLike | None = None) -> str:
        """One line: how many images were skipped, per role, and where the list is."""
        where = f"; path and reason of each in {report}" if report is not None else ""
        return (
            f"skipped {len(self.skipped)} unusable images ({self.count('gallery')} gallery, "
            f"{self.count('query')} query){where}"
        )


def item_path(item: ImageItem) -> str:
    """The path reports name an item by: its file, or its name for an image given as bytes."""
    return item.image if isinstance(item.image, str) else item.name


def is_image_error(err: BaseException) -> bool:
    """Whether ``err`` is about one image (the processor's ``InvalidImageError``, PIL failing to read a file).

    ``InvalidImageError`` is matched by name: a model loaded as remote code has its own copy of the class.
    """
    if any(c.__name__ == "InvalidImageError" for c in type(err).__mro__):
        return True
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # pragma: no cover - PIL comes with the model code
        return False
    return isinstance(err, UnidentifiedImageError | Image.DecompressionBombError)


def error_reason(err: BaseException, item: ImageItem) -> str:
    """One line for the report: the error's message without the file name it starts with."""
    text = str(err).strip()
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: the last line is the error
        text = text.splitlines()[-1].split(": ", 1)[-1]
    text = " ".join(text.split()) or type(err).__name__
    for prefix in (f"{item_path(item)}: ", f"{item.image}: " if isinstance(item.image, str) else ""):
        if prefix and text.startswith(prefix):
            text = text[len(prefix) :]
    return re.sub(r"^<\d+ bytes>: ", "", text)


def unsupported_reason(p: Path) -> str:
    """Why a file is not read as an image: its type, and the types that are."""
    kind = f"file type {p.suffix.lower()!r}" if p.suffix else "file without an extension"
    return f"unsupported {kind} (supported: {', '.join(e[1:] for e in IMAGE_EXTENSIONS)})"


def _hidden(p: Path, base: Path) -> bool:
    return any(part.startswith(".") for part in p.relative_to(base).parts)


def _scan(folder: Path, role: str, bad: BadImages | None, **fields) -> list[ImageItem]:
    """The images under ``folder`` (recursively, hidden files left out); other files go to ``bad``."""
    items = []
    for f in sorted(f for f in folder.rglob("*") if f.is_file() and not _hidden(f, folder)):
        if f.suffix.lower() in IMAGE_EXTENSIONS:
            items.append(ImageItem(image=str(f), name=str(f), **fields))
        elif bad is not None:
            bad.add(str(f), role, unsupported_reason(f))
    return items


def _open_csv(path: Path):
    """``path`` as UTF-8 text for :mod:`csv` (a byte-order mark, as Excel writes, is dropped)."""
    try:
        return open(path, newline="", encoding="utf-8-sig")
    except OSError as err:
        raise ValueError(f"cannot read the CSV {describe_os_error(err, path)}") from err


def _csv_rows(path: Path, need: set[str]) -> list[tuple[int, dict]]:
    """``(row number, row)`` of a CSV (the header is row 1); ValueError naming the file when it cannot be read as
    UTF-8 text or lacks a column of ``need``."""
    with _open_csv(path) as f:
        try:
            reader = csv.DictReader(f)
            cols = set(reader.fieldnames or [])
            if not need <= cols:
                raise ValueError(f"{path}: CSV needs columns {sorted(need)}, has {sorted(cols)}")
            return [(reader.line_num, row) for row in reader]
        except UnicodeDecodeError as err:
            byte = err.object[err.start]
            raise ValueError(
                f"{path}: not UTF-8 text (byte {byte:#04x} is not UTF-8); save the CSV as UTF-8"
            ) from err
        except csv.Error as err:
            raise ValueError(f"{path}: not a readable CSV ({err})") from err


def _duplicate_row(path: Path, first: tuple[int, dict], row_no: int, row: dict) -> None:
    """A row listing a file an earlier row (``first``) listed: ValueError naming both rows when their identities
    differ; else a warning naming both (the caller skips the later row)."""
    first_no, first_row = first
    a, b = first_row.get("identity") or "", row.get("identity") or ""
    both = f"{path}: rows {first_no} and {row_no} list the same image ({first_row['path']!r} and {row['path']!r})"
    if a != b:
        raise ValueError(
            f"{both} under two identities, {a!r} on row {first_no} and {b!r} on row {row_no}: keep one"
        )
    logger.warning("%s with the same identity %r: skipping row %d", both, b, row_no)


def _read_csv(path: Path, need_identity: bool, bad: BadImages | None = None) -> list[ImageItem]:
    """Items of a gallery or query CSV. One file on two rows is an error when their identities differ (naming
    both rows), else the later row is skipped with a warning naming both."""
    role = "gallery" if need_identity else "query"
    items, seen = [], {}
    for row_no, row in _csv_rows(path, {"path", "identity"} if need_identity else {"path"}):
        p = Path(row["path"] or "")
        p = p if p.is_absolute() else path.parent / p
        if not p.is_file():
            if bad is None:
                raise FileNotFoundError(f"{path}: image {row['path']!r} not found (looked at {p})")
            bad.add(str(p), role, f"file not found (listed in {path.name} as {row['path']!r})")
            continue
        if bad is not None and p.suffix.lower() not in IMAGE_EXTENSIONS:
            bad.add(str(p), role, unsupported_reason(p))
            continue
        same = p.resolve()
        if same in seen:
            _duplicate_row(path, seen[same], row_no, row)
            continue
        seen[same] = (row_no, row)
        items.append(
            ImageItem(
                image=str(p),
                name=row["path"],
                identity=row.get("identity") or None,
                species=row.get("species") or None,
                encounter=row.get("encounter") or None,
            )
        )
    return items


def _read_corpus(root: Path, config: str | None, splits: Sequence[str] | None) -> list[ImageItem]:
    import pyarrow.parquet as pq

    data = root / "data"
    configs = sorted(d.name for d in data.iterdir() if d.is_dir())
    if config is None:
        chosen = ["all"] if "all" in configs else configs
    elif config in configs:
        chosen = [config]
    else:
        raise ValueError(f"{root}: no corpus config {config!r}; configs are {configs}")
    items: list[ImageItem] = []
    seen: set[str] = set()
    for c in chosen:
        files = sorted((data / c).glob("*.parquet"))
        for f in files:
            split = f.name.split("-", 1)[0]
            if splits and split not in splits:
                continue
            table = pq.read_table(f)
            cols = set(table.column_names)
            if not {"image", "identity"} <= cols:
                raise ValueError(f"{f}: corpus shard needs columns image and identity, has {sorted(cols)}")
            for row in table.to_pylist():
                image_id = str(row.get("image_id") or f"{f.name}:{len(items)}")
                if image_id in seen:
                    continue
                seen.add(image_id)
                img = row["image"]
                data_bytes = img.get("bytes") if isinstance(img, dict) else img
                if not data_bytes:
                    raise ValueError(f"{f}: image {image_id} has no embedded bytes")
                items.append(
                    ImageItem(
                        image=bytes(data_bytes),
                        name=image_id,
                        identity=row["identity"],
                        species=row.get("species"),
                        encounter=row.get("encounter"),
                        bbox=row.get("bbox"),
                        theta=float(row.get("theta") or 0.0),
                    )
                )
    if not items:
        raise ValueError(f"{root}: no images in configs {chosen} splits {list(splits) if splits else 'all'}")
    return items


def read_gallery(
    source: str | os.PathLike,
    config: str | None = None,
    splits: Sequence[str] | None = None,
    bad_images: BadImages | None = None,
) -> list[ImageItem]:
    """Gallery items from a folder per individual, a CSV, or a built corpus directory (see the module docstring).

    With ``bad_images``, files that cannot be images (unsupported type, a CSV row whose file is missing) go
    there; without, other files in the folders are ignored and a missing CSV row raises ``FileNotFoundError``.
    """
    root = Path(source)
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise ValueError(f"gallery file {root} is not a CSV (expected path,identity[,species,encounter])")
        items = _read_csv(root, need_identity=True, bad=bad_images)
    elif (root / "data").is_dir() and any((root / "data").glob("*/*.parquet")):
        items = _read_corpus(root, config, splits)
    elif root.is_dir():
        items = []
        for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for it in _scan(d, "gallery", bad_images, identity=d.name):
                it.name = str(Path(it.image).relative_to(root))
                items.append(it)
    else:
        raise FileNotFoundError(f"gallery {root} not found")
    if not items:
        skipped = f" ({len(bad_images)} unusable files skipped)" if bad_images else ""
        raise ValueError(
            f"gallery {root} holds no images{skipped}: expected <identity>/<image> folders, a CSV, "
            "or a corpus directory"
        )
    return items


def read_queries(
    sources: Iterable[str | os.PathLike], bad_images: BadImages | None = None
) -> list[ImageItem]:
    """Query items from image files, folders (searched recursively) and CSVs (``path`` [, ``identity``, ``species``]).

    ``bad_images`` as for :func:`read_gallery`; a file given by name with an unsupported type goes there too.
    """
    sources = list(sources)
    n_bad = len(bad_images) if bad_images is not None else 0
    items: list[ImageItem] = []
    for s in sources:
        p = Path(s)
        if p.is_file() and p.suffix.lower() == ".csv":
            items.extend(_read_csv(p, need_identity=False, bad=bad_images))
        elif p.is_file():
            if bad_images is not None and p.suffix.lower() not in IMAGE_EXTENSIONS:
                bad_images.add(str(p), "query", unsupported_reason(p))
            else:
                items.append(ImageItem(image=str(p), name=str(p)))
        elif p.is_dir():
            items.extend(_scan(p, "query", bad_images))
        else:
            raise FileNotFoundError(f"query {p} not found")
    if not items:
        skipped = len(bad_images) - n_bad if bad_images is not None else 0
        note = f" ({skipped} unusable files skipped)" if skipped else ""
        raise ValueError(f"no query images found in {list(map(str, sources))}{note}")
    return items
