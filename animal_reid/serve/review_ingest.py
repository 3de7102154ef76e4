"""A batch upload read into encounters: photos (or one zip of photos with a MegaDetector JSON or a Camtrap DP
package) checked, their metadata read through the season ingest, grouped into encounters and embedded.

Uploads are written into a temporary folder and read from there by the library's readers
(:func:`~animal_reid.season.ingest.ingest_folder`, :func:`~animal_reid.season.ingest_megadetector.ingest_megadetector`,
:func:`~animal_reid.season.camtrapdp.read_camtrapdp`); nothing is written outside it. A zip is read entry by entry
(never ``extractall``): an entry with an absolute path, a ``..`` part, a symbolic link, an encrypted entry, a name
given twice, more entries than :attr:`ZipLimits.max_entries` or more bytes than the limits (counted while
decompressing, not taken from the header) refuses the whole upload with one line naming the entry. Each photo is
checked as the app checks an upload (size, format, pixels from the header) before any reader decodes it; a photo
that fails is skipped, one ``{file, reason}`` line each, and the batch goes on.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from fastapi import HTTPException

from animal_reid.season.annotations import Annotation
from animal_reid.season.camtrapdp import read_camtrapdp
from animal_reid.season.encounters import group_encounters, split_same_photo
from animal_reid.season.ingest import IngestError, Skip, ingest_folder
from animal_reid.season.ingest_exif import IMAGE_SUFFIXES
from animal_reid.season.ingest_megadetector import ingest_megadetector, load_megadetector
from animal_reid.serve.store import NewPhoto
from animal_reid.serve.uploads import check_image

_CHUNK = 1 << 20
_METADATA_SUFFIXES = (".json", ".csv")


class BatchError(ValueError):
    """An upload refused as a whole: one line naming the file or entry, and the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ZipLimits:
    """What one zip may hold: entries, bytes per metadata entry (photos: the upload limit), bytes in all."""

    max_entries: int = 5000
    max_entry_bytes: int = 64 * 2**20
    max_total_bytes: int = 2 * 2**30


@dataclass(frozen=True)
class PhotoFile:
    """A checked photo file of the batch, without its bytes (read when needed: a batch is never all in memory)."""

    path: Path
    sha256: str
    format: str
    width: int
    height: int
    n_bytes: int

    def read(self) -> NewPhoto:
        return NewPhoto(data=self.path.read_bytes(), format=self.format, width=self.width, height=self.height)


@dataclass
class BatchPhoto:
    """One animal in one photo of the batch (a whole photo, or a detection's box), with its metadata."""

    file: str  # path inside the batch (the zip entry, or the uploaded file's name)
    photo: PhotoFile
    box: list[float] | None = None
    theta: float = 0.0
    taken_at: str | None = None  # ISO 8601 as the input gave it
    lat: float | None = None
    lon: float | None = None
    site: str | None = None
    camera: str | None = None
    viewpoint: str | None = None
    observer: str | None = None
    notes: str | None = None
    encounter: str | None = None
    embedding: np.ndarray | None = field(default=None, repr=False)


@dataclass
class ReadBatch:
    """What a batch upload held: the photos to queue, the files left out, and how many photo files it had."""

    photos: list[BatchPhoto]
    skipped: list[dict]
    n_files: int
    source: str  # what the metadata came from: camtrapdp | megadetector | photos


# ----------------------------------------------------------------------------------------------------------------
# photos
def check_photo(data: bytes, name: str, service) -> NewPhoto:
    """The app's upload check (:func:`animal_reid.serve.uploads.check_image`: size, format, pixels from the
    header), its refusal as a :class:`BatchError` with the same line and status."""
    try:
        return check_image(data, name, service)
    except HTTPException as err:
        raise BatchError(str(err.detail), err.status_code) from None


def _is_photo_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _hidden(rel: str) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in PurePosixPath(rel).parts)


# ----------------------------------------------------------------------------------------------------------------
# uploads into the temporary folder
def upload_name(name: str | None, taken: set[str]) -> str:
    """A plain file name for an uploaded photo (its folders and odd characters dropped), unique in ``taken``."""
    base = re.sub(r"[^\w.\- ]", "_", PurePosixPath((name or "photo").replace("\\", "/")).name).strip(" .")
    base = base or "photo"
    stem, suffix = os.path.splitext(base)
    out, n = base, 1
    while out.lower() in taken:
        n += 1
        out = f"{stem}-{n}{suffix}"
    taken.add(out.lower())
    return out


def write_uploads(files: list[tuple[str | None, bytes]], dest: Path) -> list[str]:
    """Write uploaded photos into ``dest`` under plain unique names; returns the names in upload order."""
    taken: set[str] = set()
    names = []
    for name, data in files:
        safe = upload_name(name, taken)
        (dest / safe).write_bytes(data)
        names.append(safe)
    return names


def _entry_problem(info: zipfile.ZipInfo) -> str | None:
    name = info.filename.replace("\\", "/")
    if any(ord(c) < 32 for c in name):
        return "has a control character in its name"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "has an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "leaves the archive (a '..' in its path)"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "is a symbolic link"
    if info.flag_bits & 0x1:
        return "is encrypted"
    return None


def _entry_limit(name: str, photo_bytes: int, limits: ZipLimits) -> int:
    return photo_bytes if _is_photo_name(name) else limits.max_entry_bytes


def _copy_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, limit: int, what: str) -> int:
    """Decompress one entry into ``target``, stopping (BatchError) at ``limit`` bytes whatever the header says."""
    written = 0
    with archive.open(info) as src, open(target, "wb") as out:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > limit:
                raise BatchError(f"{what} is over the {limit} byte limit once uncompressed", 413)
            out.write(chunk)
    return written


def extract_zip(fileobj, zip_name: str, dest: Path, photo_bytes: int, limits: ZipLimits) -> list[str]:
    """The entries of the zip ``fileobj`` written under ``dest`` (a fresh temporary folder); returns their paths
    relative to ``dest``. :class:`BatchError` naming the entry for anything unsafe or over the limits."""
    try:
        archive = zipfile.ZipFile(fileobj)
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise BatchError(f"{zip_name}: not a readable zip archive ({err})") from err
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_entries:
            raise BatchError(f"{zip_name}: {len(infos)} entries, over the limit of {limits.max_entries}", 413)
        return _extract_entries(archive, infos, zip_name, dest, photo_bytes, limits)


def _extract_entries(
    archive, infos, zip_name: str, dest: Path, photo_bytes: int, limits: ZipLimits
) -> list[str]:
    root, total, seen, out = dest.resolve(), 0, set(), []
    for info in infos:
        name = info.filename.replace("\\", "/")
        what = f"{zip_name}: entry {info.filename!r}"
        problem = _entry_problem(info)
        if problem:
            raise BatchError(f"{what} {problem}: refused")
        rel = "/".join(p for p in PurePosixPath(name).parts if p not in ("", "."))
        if info.is_dir() or not rel:
            continue
        limit = _entry_limit(rel, photo_bytes, limits)
        if info.file_size > limit:
            raise BatchError(
                f"{what} is {info.file_size} bytes uncompressed, over the {limit} byte limit", 413
            )
        if rel.lower() in seen:
            raise BatchError(f"{what} is in the archive twice: refused")
        seen.add(rel.lower())
        target = root / rel
        if not target.resolve().is_relative_to(root) or target.exists():
            raise BatchError(f"{what} clashes with another entry or leaves the archive: refused")
        target.parent.mkdir(parents=True, exist_ok=True)
        total += _copy_entry(archive, info, target, min(limit, limits.max_total_bytes - total), what)
        out.append(rel)
    return out


# ----------------------------------------------------------------------------------------------------------------
# metadata
def species_name(text: str | None) -> str:
    """A species as compared here: lower-case, spaces as ``_`` (``"Panthera leo"`` -> ``panthera_leo``)."""
    return re.sub(r"\s+", "_", (text or "").strip().lower())


def _find(root: Path, rels: list[str], test) -> str | None:
    found = sorted((r for r in rels if not _hidden(r) and test(r)), key=lambda r: (r.count("/"), r))
    return found[0] if found else None


def _is_megadetector(path: Path) -> bool:
    try:
        load_megadetector(path)
    except IngestError:
        return False
    return True


def read_metadata(root: Path, rels: list[str], species: str) -> tuple[list[Annotation], list[Skip], str]:
    """Annotations of the photos under ``root`` from a Camtrap DP ``datapackage.json``, else a MegaDetector JSON,
    else the photos' EXIF; the skips; and what was read (``"camtrapdp"``, ``"megadetector"``, ``"photos"``)."""
    package = _find(root, rels, lambda r: PurePosixPath(r).name == "datapackage.json")
    if package is not None:
        anns, skips = read_camtrapdp(root / package, species=species)
        return _batch_species(anns, skips, species), skips, "camtrapdp"
    md = _find(root, rels, lambda r: r.lower().endswith(".json") and _is_megadetector(root / r))
    if md is not None:
        anns, skips = ingest_megadetector(root / md, (root / md).parent, species=species)
        return anns, skips, "megadetector"
    anns, skips = ingest_folder(root, species=species)
    return anns, skips, "photos"


def _batch_species(anns: list[Annotation], skips: list[Skip], species: str) -> list[Annotation]:
    """The annotations of the batch's species: all of them when the input names one species only, else those
    named as the batch (``Panthera leo`` is ``panthera_leo``), the others skips naming their species.
    :class:`BatchError` when the input names several species and none is the batch's."""
    names = sorted({a.species or "" for a in anns})
    if len({species_name(n) for n in names}) <= 1:
        return [dataclasses.replace(a, species=species) for a in anns]
    kept = [dataclasses.replace(a, species=species) for a in anns if species_name(a.species) == species]
    if not kept:
        raise BatchError(
            f"datapackage.json names several species ({', '.join(names)}), none of them {species!r}: upload one "
            f"species per batch, or name the batch's species as the package does (e.g. {species_name(names[-1])!r})"
        )
    for a in anns:
        if species_name(a.species) != species:
            reason = f"{a.source}: a {a.species} observation, not {species}: skipped"
            skips.append(Skip(a.source or "", a.annotation_id, "species", reason))
    return kept


# ----------------------------------------------------------------------------------------------------------------
# the batch
def _shown(text: str, root: Path) -> str:
    """A message without the temporary folder's path."""
    for prefix in (f"{root.resolve()}/", f"{root}/", str(root.resolve()), str(root)):
        text = text.replace(prefix, "")
    return text


def _checked_photos(root: Path, rels: list[str], service, skipped: list[dict]) -> dict[str, PhotoFile]:
    """{relative path: PhotoFile} of the photo files that pass the upload check; the others deleted and skipped."""
    good: dict[str, PhotoFile] = {}
    first: dict[str, str] = {}  # sha256: the first file holding it
    for rel in rels:
        if _hidden(rel):
            continue
        if not _is_photo_name(rel):
            if not rel.lower().endswith(_METADATA_SUFFIXES):
                skipped.append({"file": rel, "reason": f"{rel}: not a photo (by its name): skipped"})
            continue
        path = root / rel
        try:
            limit = service.limits.max_upload_bytes
            if path.stat().st_size > limit:  # before reading it whole
                raise BatchError(f"{rel}: upload is over the {limit} byte limit", 413)
            photo = check_photo(path.read_bytes(), rel, service)
            if photo.sha256 in first:
                raise BatchError(f"{rel}: the same photo as {first[photo.sha256]}: skipped")
        except BatchError as err:
            skipped.append({"file": rel, "reason": str(err)})
            path.unlink()
            continue
        first[photo.sha256] = rel
        good[rel] = PhotoFile(path, photo.sha256, photo.format, photo.width, photo.height, len(photo.data))
    return good


def _batch_photo(
    ann: Annotation, rel: str, photo: PhotoFile, site: str | None, observer: str | None
) -> BatchPhoto:
    return BatchPhoto(
        file=rel, photo=photo, box=ann.box, theta=float(ann.theta or 0.0), taken_at=ann.datetime,
        lat=ann.latitude, lon=ann.longitude, site=ann.site or site, camera=ann.camera, viewpoint=ann.viewpoint,
        observer=observer or ann.observer, notes=ann.notes, encounter=ann.encounter,
    )  # fmt: skip


def read_batch(
    root: Path,
    rels: list[str],
    species: str,
    service,
    site: str | None = None,
    observer: str | None = None,
) -> ReadBatch:
    """The photos under ``root`` (``rels``: every file written there) as :class:`BatchPhoto` s of ``species``,
    with what was skipped and why (``service``: whose upload limits apply). ``site`` / ``observer``: the batch's,
    for photos whose metadata names none."""
    skipped: list[dict] = []
    good = _checked_photos(root, rels, service, skipped)
    try:
        anns, skips, source = read_metadata(root, rels, species)
    except IngestError as err:
        raise BatchError(_shown(str(err), root)) from err
    base = root.resolve()
    used: set[str] = set()
    photos = []
    for ann in anns:
        rel = Path(ann.photo).resolve().relative_to(base).as_posix()
        if rel in good:
            photos.append(_batch_photo(ann, rel, good[rel], site, observer))
            used.add(rel)
    told = {s["file"] for s in skipped}
    for s in skips:
        if not any(f"{t}'" in s.message or f"{t} " in s.message for t in told):  # not a photo skipped above
            skipped.append({"file": _skip_file(s, root), "reason": _shown(s.message, root)})
            told.add(s.row)
    skipped += [{"file": rel, "reason": f"{rel}: no animal in this photo by the batch's metadata: skipped"}
                for rel in sorted(good) if rel not in used and rel not in told]  # fmt: skip
    n_files = sum(1 for rel in rels if _is_photo_name(rel) and not _hidden(rel))
    return ReadBatch(photos, skipped, n_files, source)


def _skip_file(skip: Skip, root: Path) -> str:
    """What a reader's skip names: the photo (a folder's), else the input file and row."""
    if Path(skip.source).resolve() == root.resolve():
        return skip.row
    return f"{_shown(skip.source, root)} {skip.row}"


def embed_photos(encode, photos: list[BatchPhoto], skipped: list[dict], chunk: int = 32) -> list[BatchPhoto]:
    """``photos`` with their embeddings from ``encode(images, boxes, thetas)`` (the batcher's direct encode);
    a photo the model cannot use (a box outside it) is skipped with the reason. Returns the embedded ones."""
    out = []
    for a in range(0, len(photos), chunk):
        part = photos[a : a + chunk]
        try:
            rows = encode(
                [p.photo.path.read_bytes() for p in part], [p.box for p in part], [p.theta for p in part]
            )
            pairs = list(zip(part, rows, strict=True))
        except (ValueError, OSError):
            pairs = [(p, _one(encode, p, skipped)) for p in part]
        for p, row in pairs:
            if row is not None:
                p.embedding = np.asarray(row, dtype=np.float32).reshape(-1)
                out.append(p)
    return out


def _one(encode, p: BatchPhoto, skipped: list[dict]) -> np.ndarray | None:
    try:
        return encode([p.photo.path.read_bytes()], [p.box], [p.theta])[0]
    except (ValueError, OSError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        skipped.append({"file": p.file, "reason": f"{p.file}: cannot use this image: {reason[:300]}"})
        return None


def encounters(photos: list[BatchPhoto], species: str, gap_min: float) -> list[list[BatchPhoto]]:
    """The embedded ``photos`` grouped into encounters (the library's rules: camera or site, date-times within
    ``gap_min`` minutes; two animals of one photo apart), in the order of their first photo's date-time."""
    anns = [
        Annotation(annotation_id=str(i), photo=p.file, box=p.box, species=species, datetime=p.taken_at,
                   site=p.site, camera=p.camera, encounter=p.encounter, viewpoint=p.viewpoint)
        for i, p in enumerate(photos)
    ]  # fmt: skip
    grouped = group_encounters(anns, gap_s=float(gap_min) * 60.0)
    if photos:
        grouped = split_same_photo(grouped, np.stack([p.embedding for p in photos]))
    by: dict[str, list[BatchPhoto]] = defaultdict(list)
    for ann, p in zip(grouped, photos, strict=True):
        by[ann.encounter].append(p)
    groups = [sorted(g, key=lambda p: (p.taken_at or "", p.file)) for g in by.values()]
    return sorted(groups, key=lambda g: (g[0].taken_at or "", g[0].file))
