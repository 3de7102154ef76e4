"""Writing the season as a Camtrap DP 1.0 package: the observation columns, and a package built from scratch.

:func:`~animal_reid.season.camtrapdp.write_camtrapdp` is the entry point; this module holds what both of its ways
share and the first of them. Each annotation is one media-level ``animal`` observation
(:func:`fill_observation`): its box normalised to the displayed photo (a rotated box as its enclosing upright box,
clipped to the photo), ``individualID`` the assignment's individual (a known one, or the proposed new id of
discovery; empty when unsure), ``classificationMethod`` ``machine``, ``classifiedBy`` ``animal-reid <version>``,
``classificationTimestamp`` now, ``classificationProbability`` the assignment's score clipped to [0, 1] (a
similarity, not a calibrated probability), and the decision in ``observationTags`` (``reidDecision:<decision>``,
``reidCandidate:<id>`` when not known, ``viewpoint:<v>``). An individual the input already gave (a human's
``individualID``) is kept, never overwritten.

:func:`write_new_package` builds a package from the annotations alone: one deployment per camera (else site, else
``unknown``) with the mean place of its photos (a deployment without coordinates cannot be written: its
annotations are skips) and the span of their date-times; one media row per photo, the photo copied into
``media/`` (``"link"``: hard-linked, ``"none"``: not written). Date-times without an offset are written with
``utc_offset`` (default UTC, and the deployment's ``timestampIssues`` is then ``true``). ``sensitive``
({species: degrees}) rounds the coordinates of every deployment where such a species was seen and sets
``coordinateUncertainty`` and the package's ``coordinatePrecision``.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import json
import math
import mimetypes
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .annotations import Annotation, Assignment
from .camtrapdp_schema import PROFILE_URL, TABLES, VERSION, load_schema, schema_url
from .ingest import DUPLICATE, MALFORMED, MISSING, UNREADABLE, Skip
from .ingest_exif import UnreadablePhoto, read_photo

__all__ = ["MEDIA_MODES", "CamtrapDPError", "WriteOptions", "fill_observation", "write_new_package"]

#: what happens to the photos: copied into the package, hard-linked (copied where links fail), or not written
MEDIA_MODES = ("copy", "link", "none")
_DEG_METRES = 111_320.0


class CamtrapDPError(ValueError):
    """A package that cannot be written (a file already in the folder, a bad option); one line."""


def columns(name: str) -> list[str]:
    return [f["name"] for f in load_schema(name)["fields"]]


def _classifier() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"animal-reid {version('animal-reid')}"
    except PackageNotFoundError:
        return "animal-reid"


def _num(value: float) -> str:
    return repr(round(float(value), 6))


def timestamp(text: str | None, utc_offset: str | None) -> tuple[_dt.datetime, bool] | None:
    """The date-time (aware) and whether its offset was assumed; None when absent or not ISO 8601."""
    try:
        when = _dt.datetime.fromisoformat((text or "").strip())
    except ValueError:
        return None
    if when.tzinfo is not None:
        return when.replace(microsecond=0), False
    tz = _dt.datetime.fromisoformat(f"2000-01-01T00:00:00{utc_offset}").tzinfo if utc_offset else _dt.UTC
    return when.replace(microsecond=0, tzinfo=tz), utc_offset is None


def iso(when: _dt.datetime) -> str:
    text = when.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _bbox(box: Sequence[float], theta: float, size: tuple[int, int]) -> list[str] | None:
    """``bboxX, bboxY, bboxWidth, bboxHeight`` of a pixel box (its upright envelope when rotated), clipped to
    the photo; None when nothing of it is inside."""
    x, y, w, h = (float(v) for v in box)
    if theta:
        c, s = abs(math.cos(theta)), abs(math.sin(theta))
        cx, cy, w, h = x + w / 2, y + h / 2, w * c + h * s, w * s + h * c
        x, y = cx - w / 2, cy - h / 2
    width, height = size
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
    if x1 <= x0 or y1 <= y0:
        return None
    return [_num(x0 / width), _num(y0 / height), _num((x1 - x0) / width), _num((y1 - y0) / height)]


def _tag(key: str, value: Any) -> str:
    return f"{key}:{str(value).replace('|', '/')}"


@dataclass
class WriteOptions:
    assignments: dict[str, Assignment]
    scientific_names: Mapping[str, str]
    sensitive: Mapping[str, float]
    utc_offset: str | None
    classifier: str = field(default_factory=_classifier)
    now: str = field(default_factory=lambda: iso(_dt.datetime.now(_dt.UTC).replace(microsecond=0)))
    sizes: dict[Path, tuple[int, int] | str] = field(default_factory=dict)

    def scientific(self, species: str | None) -> str:
        return self.scientific_names.get(species, species) if species else ""

    def size(self, photo: Path) -> tuple[int, int] | str:
        """The photo's displayed size, or why it cannot be read (cached)."""
        if photo not in self.sizes:
            try:
                self.sizes[photo] = read_photo(photo, check_pixels=False).size
            except UnreadablePhoto as err:
                self.sizes[photo] = f"unreadable ({err})"
        return self.sizes[photo]


def fill_observation(
    row: dict[str, str], ann: Annotation, opts: WriteOptions, size: tuple[int, int] | None
) -> None:
    """Set the re-identification columns of an observation row (an individual already given is kept)."""
    a = opts.assignments.get(ann.annotation_id)
    tags = [t for t in (row.get("observationTags") or "").split("|") if t.strip()]
    if ann.viewpoint and not any(t.strip().startswith("viewpoint:") for t in tags):
        tags.append(_tag("viewpoint", ann.viewpoint))
    given = row.get("individualID") or ann.individual
    if a is not None:
        tags.append(_tag("reidDecision", a.decision))
        if a.candidate and a.decision != "known":
            tags.append(_tag("reidCandidate", a.candidate))
    if given:
        row["individualID"] = given
    elif a is not None and a.decision in ("known", "new") and a.individual:
        row["individualID"] = a.individual
        row["classificationMethod"], row["classifiedBy"] = "machine", opts.classifier
        row["classificationTimestamp"] = opts.now
        score = "" if a.score is None or not math.isfinite(a.score) else _num(min(max(a.score, 0.0), 1.0))
        row["classificationProbability"] = score
    if ann.box is not None and size is not None and not row.get("bboxX"):
        bbox = _bbox(ann.box, ann.theta, size) or [""] * 4
        row.update(zip(("bboxX", "bboxY", "bboxWidth", "bboxHeight"), bbox, strict=True))
    row["observationTags"] = " | ".join(t.strip() for t in tags)


def write_skip(ann: Annotation, reason: str, problem: str) -> Skip:
    where = ann.source or "annotations"
    message = f"annotation {ann.annotation_id!r} ({ann.photo}): {problem}: left out of the Camtrap DP"
    return Skip(where, ann.annotation_id, reason, message)


def photo_path(ann: Annotation, photo_root: Path) -> Path:
    path = Path(ann.photo)
    return (path if path.is_absolute() else photo_root / path).resolve()


def checked_size(ann: Annotation, opts: WriteOptions, photo: Path) -> tuple[int, int] | Skip:
    """The displayed size of the annotation's photo, or the skip of a missing or unreadable photo or box."""
    if not photo.is_file():
        return write_skip(ann, MISSING, f"photo {photo} does not exist")
    size = opts.size(photo)
    if isinstance(size, str):
        return write_skip(ann, UNREADABLE, f"photo {photo} is {size}")
    if ann.box is not None and _bbox(ann.box, ann.theta, size) is None:
        return write_skip(ann, MALFORMED, f"box {ann.box} is outside the {size[0]}x{size[1]} photo")
    return size


# ----------------------------------------------------------------------------------------------------------------
# coordinates of sensitive species
def coarsen(lat: float, lon: float, step: float) -> tuple[float, float]:
    """The centre of the ``step``-degree cell holding the point: the one rule of every export
    (:func:`animal_reid.season.exports_tables.cell_centre`)."""
    from .exports_tables import cell_centre

    return cell_centre(lat, step, 90.0), cell_centre(lon, step, 180.0)


def uncertainty_m(step: float) -> int:
    return math.ceil(step * _DEG_METRES * math.sqrt(0.5))


def sensitive_step(species: set[str], opts: WriteOptions) -> float | None:
    steps = [opts.sensitive[s] for s in species if s in opts.sensitive]
    return max(steps) if steps else None


# ----------------------------------------------------------------------------------------------------------------
# writing
def csv_bytes(header: list[str], rows: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([("" if row.get(c) is None else row.get(c)) for c in header] for row in rows)
    return buf.getvalue().encode("utf-8")


def put_file(out_dir: Path, rel: str, data: bytes) -> None:
    target = out_dir / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "xb") as f:  # never replaces a file
        f.write(data)


def put_media(src: Path, dest: Path, mode: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if mode == "link":
        try:
            os.link(src, dest)
            return
        except OSError:
            pass
    shutil.copyfile(src, dest)


def _resource(name: str, path: str) -> dict[str, Any]:
    return {
        "name": name, "path": path, "profile": "tabular-data-resource", "format": "csv",
        "mediatype": "text/csv", "encoding": "utf-8", "schema": schema_url(name),
    }  # fmt: skip


def taxonomic(names: set[str], existing: list[Any] | None = None) -> list[Any]:
    out = list(existing or [])
    known = {t.get("scientificName") for t in out if isinstance(t, dict)}
    return out + [{"scientificName": name} for name in sorted(names - known) if name]


@dataclass
class _New:
    """A package built from the annotations alone: deployments, media and observations by id."""

    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)
    media: dict[Path, dict[str, Any]] = field(default_factory=dict)
    observations: list[tuple[Annotation, dict[str, str]]] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)


def _add_annotation(new: _New, ann: Annotation, opts: WriteOptions, photo: Path) -> None:
    size = checked_size(ann, opts, photo)
    if isinstance(size, Skip):
        new.skips.append(size)
        return
    dep_id = ann.camera or ann.site or "unknown"
    media = new.media.get(photo)
    if media is None:
        when = timestamp(ann.datetime, opts.utc_offset)
        if when is None:
            new.skips.append(
                write_skip(ann, MALFORMED, f"date-time {ann.datetime!r} is not ISO 8601 (media need one)")
            )
            return
        media_id = "m" + hashlib.sha1(str(photo).encode()).hexdigest()[:12]
        media = {"mediaID": media_id, "deploymentID": dep_id, "when": when, "photo": photo, "first": ann}
        new.media[photo] = media
    elif media["deploymentID"] != dep_id:
        first = media["first"].annotation_id
        problem = f"its photo is in deployment {media['deploymentID']!r} (annotation {first!r}), this one says {dep_id!r}"
        new.skips.append(write_skip(ann, DUPLICATE, problem))
        return
    dep = new.deployments.setdefault(dep_id, {"coords": [], "times": [], "species": set(), "site": ann.site})
    if ann.latitude is not None and ann.longitude is not None:
        dep["coords"].append((ann.latitude, ann.longitude))
    dep["times"].append(media["when"])
    dep["species"].update({ann.species, opts.scientific(ann.species)} - {None, ""})
    a = opts.assignments.get(ann.annotation_id)
    row = {
        "observationID": ann.annotation_id, "deploymentID": dep_id, "mediaID": media["mediaID"],
        "eventID": (a.encounter if a and a.encounter else ann.encounter) or "",
        "eventStart": iso(media["when"][0]), "eventEnd": iso(media["when"][0]), "observationLevel": "media",
        "observationType": "animal", "scientificName": opts.scientific(ann.species), "count": "1",
        "observationComments": ann.notes or "",
    }  # fmt: skip
    fill_observation(row, ann, opts, size)
    new.observations.append((ann, row))


def _deployment_rows(new: _New, opts: WriteOptions) -> tuple[list[dict[str, Any]], float | None]:
    """Deployment rows (those without coordinates dropped, their annotations skipped) and the coarsest step."""
    rows, coarsest = [], None
    for dep_id, dep in new.deployments.items():
        if not dep["coords"]:
            for ann, row in new.observations:
                if row["deploymentID"] == dep_id:
                    problem = (
                        f"deployment {dep_id!r} has no latitude/longitude (Camtrap DP deployments need them)"
                    )
                    new.skips.append(write_skip(ann, MALFORMED, problem))
            continue
        lat = sum(c[0] for c in dep["coords"]) / len(dep["coords"])
        lon = sum(c[1] for c in dep["coords"]) / len(dep["coords"])
        row = {
            "deploymentID": dep_id,
            "locationName": dep["site"] or "",
            "latitude": _num(lat),
            "longitude": _num(lon),
        }
        step = sensitive_step(dep["species"], opts)
        if step is not None:
            lat, lon = coarsen(lat, lon, step)
            row.update(
                latitude=repr(lat), longitude=repr(lon), coordinateUncertainty=str(uncertainty_m(step))
            )
            coarsest = max(coarsest or 0.0, step)
        times = [t for t, _ in dep["times"]]
        row.update(deploymentStart=iso(min(times)), deploymentEnd=iso(max(times)))
        row["timestampIssues"] = "true" if any(assumed for _, assumed in dep["times"]) else ""
        rows.append(row)
    return rows, coarsest


def _media_row(media: dict[str, Any]) -> dict[str, str]:
    photo: Path = media["photo"]
    mediatype = mimetypes.guess_type(photo.name)[0] or f"image/{photo.suffix.lstrip('.').lower() or 'jpeg'}"
    return {
        "mediaID": media["mediaID"], "deploymentID": media["deploymentID"], "timestamp": iso(media["when"][0]),
        "filePath": f"media/{media['mediaID']}{photo.suffix.lower()}", "filePublic": "false",
        "fileName": photo.name, "fileMediatype": mediatype,
    }  # fmt: skip


def _descriptor(
    deployments: list[dict[str, Any]], species: set[str], project: Mapping[str, Any] | None
) -> dict:
    lats = [float(d["latitude"]) for d in deployments] or [0.0]
    lons = [float(d["longitude"]) for d in deployments] or [0.0]
    w, s, e, n = min(lons), min(lats), max(lons), max(lats)
    spatial = (
        {"type": "Point", "coordinates": [w, s]}
        if (w, s) == (e, n)
        else {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    )
    days = [d[k][:10] for d in deployments for k in ("deploymentStart", "deploymentEnd")] or ["1970-01-01"]
    return {
        "resources": [_resource(name, f"{name}.csv") for name in TABLES],
        "profile": PROFILE_URL, "name": "animal-reid-season", "created": iso(_dt.datetime.now(_dt.UTC).replace(microsecond=0)),
        "title": (project or {}).get("title", "Season re-identified by animal-reid"),
        "contributors": [{"title": "animal-reid", "role": "contributor"}], "version": VERSION,
        "project": {
            "title": "Season re-identified by animal-reid", "samplingDesign": "opportunistic",
            "captureMethod": ["activityDetection"], "individualAnimals": True, "observationLevel": ["media"],
            **(project or {}),
        },
        "spatial": spatial, "temporal": {"start": min(days), "end": max(days)}, "taxonomic": taxonomic(species),
    }  # fmt: skip


def write_new_package(
    out_dir: Path,
    annotations: Sequence[Annotation],
    opts: WriteOptions,
    photo_root: Path,
    media_mode: str,
    project: Mapping[str, Any] | None = None,
) -> list[Skip]:
    """Write a package built from the annotations alone into ``out_dir``; the annotations left out."""
    new = _New()
    seen: dict[str, Annotation] = {}
    for ann in annotations:
        if ann.annotation_id in seen:
            new.skips.append(
                write_skip(ann, DUPLICATE, "its annotation_id is already used by an earlier annotation")
            )
            continue
        seen[ann.annotation_id] = ann
        _add_annotation(new, ann, opts, photo_path(ann, photo_root))
    deployments, coarsest = _deployment_rows(new, opts)
    kept = {d["deploymentID"] for d in deployments}
    media = [m for m in new.media.values() if m["deploymentID"] in kept]
    observations = [row for _, row in new.observations if row["deploymentID"] in kept]
    descriptor = _descriptor(deployments, {r["scientificName"] for r in observations}, project)
    if coarsest is not None:
        descriptor["coordinatePrecision"] = coarsest
    media_rows = [_media_row(m) for m in media]
    put_file(out_dir, "deployments.csv", csv_bytes(columns("deployments"), deployments))
    put_file(out_dir, "media.csv", csv_bytes(columns("media"), media_rows))
    put_file(out_dir, "observations.csv", csv_bytes(columns("observations"), observations))
    if media_mode != "none":
        for m, row in zip(media, media_rows, strict=True):
            put_media(m["photo"], out_dir / row["filePath"], media_mode)
    put_file(
        out_dir, "datapackage.json", (json.dumps(descriptor, indent=2, ensure_ascii=False) + "\n").encode()
    )
    return new.skips
