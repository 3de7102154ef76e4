"""Ingest a season's photos into the annotation table: a folder of photos (EXIF read), and what every reader shares.

:func:`ingest_folder` makes one whole-photo :class:`~animal_reid.season.annotations.Annotation` per photo under a
folder, with the date-time, place and camera of its EXIF (:mod:`animal_reid.season.ingest_exif`); the other
inputs have their own modules (:mod:`animal_reid.season.ingest_megadetector` for MegaDetector batch output,
:mod:`animal_reid.season.ingest_tables` for COCO and CSV, :mod:`animal_reid.season.camtrapdp` for Camtrap DP) and
``animal-reid ingest`` (:mod:`animal_reid.season.ingest_cli`) runs any of them.

Every reader returns ``(annotations, skips)``: a row or photo that cannot be used is a :class:`Skip` (the input
file, the row, a short reason counted in summaries, and one line naming the file, the row and the problem) and
the reader goes on; an input that cannot be read at all raises :class:`IngestError` with one line naming it.
Paths resolving outside the input's root (``../``, absolute paths, symbolic links pointing out) are skipped and
never opened. The species comes from the input, else from a per-folder map (:func:`read_species_map`,
:func:`species_for`), else from the one species the user gives.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .annotations import Annotation
from .ingest_exif import IMAGE_SUFFIXES, PhotoInfo, UnreadablePhoto, read_photo

logger = logging.getLogger(__name__)

__all__ = [
    "read_text",
    "BAD_BOX",
    "DETECTOR_FAILURE",
    "DUPLICATE",
    "MALFORMED",
    "MISSING",
    "OUTSIDE",
    "SKIP_FIELDS",
    "UNREADABLE",
    "IngestError",
    "Skip",
    "ingest_folder",
    "is_inside",
    "list_photos",
    "photo_annotation",
    "read_species_map",
    "skips_csv",
    "species_for",
]

# the reasons a skip is counted under
OUTSIDE = "outside the root"
MISSING = "missing photo"
UNREADABLE = "unreadable photo"
BAD_BOX = "bad box"
MALFORMED = "malformed row"
DUPLICATE = "duplicate"
DETECTOR_FAILURE = "detector failure"


class IngestError(ValueError):
    """An input that cannot be read at all (not JSON, an unsupported version, no such file); one line naming it."""


@dataclass(frozen=True)
class Skip:
    """A photo or row left out: the input, where in it, the reason (one of the constants above), the one line."""

    source: str  # the input file or folder
    row: str  # where in it: "images[3] detections[1]", "line 7", a photo's relative path
    reason: str
    message: str  # "<file> <row>: <problem>"


SKIP_FIELDS = ("source", "row", "reason", "message")


def skips_csv(skips: list[Skip]) -> bytes:
    """The skips as CSV bytes (columns :data:`SKIP_FIELDS`)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(SKIP_FIELDS)
    writer.writerows([getattr(s, name) for name in SKIP_FIELDS] for s in skips)
    return buf.getvalue().encode("utf-8")


def is_inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether ``path`` resolves (``..`` and symbolic links followed) to ``root`` or below it."""
    try:
        return Path(path).resolve().is_relative_to(Path(root).resolve())
    except (OSError, RuntimeError, ValueError):  # a link loop, a NUL byte: not a path to read
        return False


# ----------------------------------------------------------------------------------------------------------------
# species per folder
def _folder_key(text: str, where: str) -> str:
    """A folder of the map as a relative POSIX path ("" for the root); :class:`IngestError` when it leaves it."""
    key = text.strip().replace("\\", "/")
    parts = [p for p in PurePosixPath(key).parts if p not in (".", "")]
    if key.startswith("/") or ".." in parts:
        raise IngestError(f"{where}: folder {text!r} must be relative to the photo folder, inside it")
    return "/".join(parts)


class _Pairs(list):
    """A JSON object as its (key, value) pairs."""


def _species_pairs(path: Path, text: str, key: str) -> Iterator[tuple[str, str, str]]:
    """``(where, key, species)`` for each entry of a JSON object or a ``<key>,species`` CSV."""
    if path.suffix.lower() == ".json":
        try:
            pairs = json.loads(text, object_pairs_hook=_Pairs)  # keeps a repeated key, to report it
        except ValueError as err:
            raise IngestError(f"{path}: not valid JSON ({err})") from err
        if not isinstance(pairs, _Pairs):
            raise IngestError(
                f"{path}: expected a JSON object {{{key}: species}}, got {type(pairs).__name__}"
            )
        for name, species in pairs:
            yield f"{path} entry {name!r}", name, species
        return
    reader = csv.DictReader(io.StringIO(text))
    if not {key, "species"} <= set(reader.fieldnames or []):
        raise IngestError(f"{path}: expected columns {key},species, got {reader.fieldnames}")
    for row in reader:
        yield f"{path} line {reader.line_num}", row[key] or "", row["species"]


def read_text(path: Path) -> str:
    """A text input (a BOM accepted); :class:`IngestError` naming the file when it is not UTF-8 or unreadable."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise IngestError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except OSError as err:
        raise IngestError(f"{path}: {err.strerror or err}") from err


def read_species_map(path: str | os.PathLike, key: str = "folder") -> dict[str, str]:
    """``{folder: species}`` from a JSON object or a CSV with columns ``folder,species``; folders are relative
    to the photo folder ("" or "." is the whole folder). With another ``key`` (Camtrap DP's
    ``scientificName``) the map is ``{name: species}`` from a JSON object or a ``<key>,species`` CSV.
    :class:`IngestError` naming the file and row of an entry that is not text, a folder outside, or a key
    listed twice (both rows named)."""
    path = Path(path)
    text = read_text(path)
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for where, name, species in _species_pairs(path, text, key):
        if not isinstance(name, str) or not isinstance(species, str) or not species.strip():
            raise IngestError(f"{where}: expected a {key} and a species name, got {name!r}: {species!r}")
        name = _folder_key(name, where) if key == "folder" else name.strip()
        if name in seen:
            shown = (name or ".") if key == "folder" else name
            raise IngestError(f"{seen[name]} and {where.removeprefix(f'{path} ')}: {key} {shown!r} twice")
        seen[name] = where
        out[name] = species.strip()
    return out


def species_for(rel: str, species: str | None, species_map: Mapping[str, str] | None) -> str | None:
    """The species of the photo at ``rel`` (relative POSIX path): the map's entry for its deepest folder listed,
    else ``species``."""
    if species_map:
        folder = PurePosixPath(rel).parent
        for parent in (folder, *folder.parents):
            key = "" if str(parent) == "." else parent.as_posix()
            if key in species_map:
                return species_map[key]
    return species


# ----------------------------------------------------------------------------------------------------------------
# a folder of photos
def _is_photo(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def _outside(root: Path, path: Path) -> Skip:
    rel = path.relative_to(root).as_posix()
    return Skip(str(root), rel, OUTSIDE, f"{path}: a symbolic link pointing outside {root}: not read")


def _one_name_per_photo(root: Path, rels: list[str]) -> tuple[list[str], list[Skip]]:
    """Each photo once: a link to a photo listed under another name is a skip naming both (the file itself, not
    a link, keeps its name; among links only, the first name in order)."""
    names: dict[Path, list[str]] = {}
    for rel in rels:
        names.setdefault((root / rel).resolve(), []).append(rel)
    kept, skips = [], []
    for group in names.values():
        first = min(group, key=lambda r: ((root / r).is_symlink(), r))
        kept.append(first)
        skips += [
            Skip(
                str(root), rel, DUPLICATE, f"{root / rel}: a link to the photo {first}, read under that name"
            )
            for rel in group
            if rel != first
        ]
    return sorted(kept), sorted(skips, key=lambda s: s.row)


def list_photos(root: str | os.PathLike, recursive: bool = True) -> tuple[list[str], list[Skip]]:
    """The photos under ``root`` (relative POSIX paths, sorted) and the skips of links pointing outside it or
    to a photo listed under another name.

    Hidden files and folders (``.`` names: ``.DS_Store``, macOS ``._IMG_0001.JPG``) and files that are not photos
    by their name are left out; linked folders are not followed (one pointing outside is reported; one inside is
    read under its own path)."""
    root = Path(root).resolve()
    photos: list[str] = []
    skips: list[Skip] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        skips += [
            _outside(root, here / d)
            for d in dirs
            if (here / d).is_symlink() and not is_inside(here / d, root)
        ]
        for name in sorted(files):
            path = here / name
            if not _is_photo(name):
                continue
            if not is_inside(path, root):
                skips.append(_outside(root, path))
                continue
            photos.append(path.relative_to(root).as_posix())
    kept, repeated = _one_name_per_photo(root, photos)
    return kept, skips + repeated


def photo_annotation(annotation_id: str, photo: Path, info: PhotoInfo, **fields) -> Annotation:
    """An annotation of ``photo`` carrying its EXIF date-time, place and camera (and the EXIF note)."""
    values = {"datetime": info.datetime, "latitude": info.latitude, "longitude": info.longitude}
    values["camera"] = info.camera
    values.update({k: v for k, v in fields.items() if v is not None})
    notes = [n for n in (fields.get("notes"), info.note) if n]
    values["notes"] = "; ".join(notes) or None
    return Annotation(annotation_id=annotation_id, photo=str(photo), **values)


def ingest_folder(
    root: str | os.PathLike,
    species: str | None = None,
    recursive: bool = True,
    species_map: Mapping[str, str] | None = None,
    check_pixels: bool = True,
) -> tuple[list[Annotation], list[Skip]]:
    """One whole-photo annotation per photo under ``root``, with its EXIF date-time, place and camera.

    ``annotation_id`` is the photo's path relative to ``root`` (stable across runs), ``photo`` its absolute path.
    A photo without EXIF is ingested with empty fields; corrupt EXIF leaves them empty with a note in ``notes``;
    a file that is not a readable image (``check_pixels``: its pixels are decoded too) is a :class:`Skip`.
    """
    base = Path(root)
    if not base.is_dir():
        raise IngestError(f"{root}: no such folder")
    base = base.resolve()
    rels, skips = list_photos(base, recursive)
    annotations: list[Annotation] = []
    for rel in rels:
        path = base / rel
        try:
            info = read_photo(path, check_pixels=check_pixels)
        except UnreadablePhoto as err:
            skips.append(Skip(str(base), rel, UNREADABLE, f"{path}: unreadable photo ({err}): skipped"))
            continue
        if info.note:
            logger.warning("%s: %s", path, info.note)
        annotations.append(
            photo_annotation(rel, path, info, species=species_for(rel, species, species_map), source="folder")
        )
    logger.info("%s: %d photos ingested, %d skipped", base, len(annotations), len(skips))
    return annotations, skips
