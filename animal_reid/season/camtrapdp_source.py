"""Writing the season into a copy of the Camtrap DP it came from: its rows kept, its observations filled.

:func:`write_from_source` copies a source package into a new folder: its deployments and media rows as they are
(coordinates rounded where a ``sensitive`` species was seen), its media files (copied, hard-linked or not written)
and other local resources, its ``datapackage.json`` (``created`` now, ``taxonomic`` completed,
``project.individualAnimals`` true). Its observations are kept; the one whose ``observationID`` is an annotation's
``annotation_id`` (as :func:`~animal_reid.season.camtrapdp.read_camtrapdp` names them) gets the re-identification
columns (:func:`~animal_reid.season.camtrapdp_write.fill_observation`; an ``individualID`` already there is kept),
and an annotation of one of its photos that has no observation yet (a detector's box) becomes a new media-level
observation. An annotation of a photo that is not among its media is a returned skip.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .annotations import Annotation
from .camtrapdp_package import Package, open_package
from .camtrapdp_schema import TABLES, Table, read_table
from .camtrapdp_write import (
    WriteOptions,
    checked_size,
    coarsen,
    columns,
    csv_bytes,
    fill_observation,
    photo_path,
    put_file,
    put_media,
    taxonomic,
    uncertainty_m,
    write_skip,
)
from .ingest import MISSING, Skip, is_inside

logger = logging.getLogger(__name__)

__all__ = ["write_from_source"]


def _local(pkg: Package, rel: Any) -> Path | None:
    """The file a relative path of the package names, when it is inside the package folder and exists."""
    if not isinstance(rel, str) or not rel or "://" in rel or Path(rel).is_absolute():
        return None
    path = pkg.root / rel
    return path if is_inside(path, pkg.root) and path.is_file() else None


def _new_row(ann: Annotation, media_row: dict[str, str], opts: WriteOptions) -> dict[str, str]:
    a = opts.assignments.get(ann.annotation_id)
    return {
        "observationID": ann.annotation_id, "deploymentID": media_row.get("deploymentID", ""),
        "mediaID": media_row.get("mediaID", ""), "eventID": (a.encounter if a and a.encounter else ann.encounter) or "",
        "eventStart": media_row.get("timestamp", ""), "eventEnd": media_row.get("timestamp", ""),
        "observationLevel": "media", "observationType": "animal", "scientificName": opts.scientific(ann.species),
        "count": "1", "observationComments": ann.notes or "",
    }  # fmt: skip


def _observations(
    pkg: Package, tables: dict[str, Table], annotations: Sequence[Annotation], opts: WriteOptions, root: Path
) -> tuple[list[dict[str, str]], list[Skip], dict[str, float]]:
    """The source's observation rows, filled, plus the new ones; the annotations left out; the grid of each
    deployment where an annotation of a sensitive species was written."""
    media_by_photo = {}
    for row in tables["media"].rows:
        local = _local(pkg, row.raw.get("filePath"))
        if local is not None:
            media_by_photo.setdefault(local.resolve(), row.raw)
    rows = [dict(row.raw) for row in tables["observations"].rows]
    index: dict[str, int] = {}
    for i, row in enumerate(rows):
        index.setdefault(row.get("observationID", ""), i)
    skips: list[Skip] = []
    steps: dict[str, float] = {}
    for ann in annotations:
        photo = photo_path(ann, root)
        step = opts.sensitive.get(ann.species or "")
        if ann.annotation_id in index:
            row = rows[index[ann.annotation_id]]
            size = checked_size(ann, opts, photo) if ann.box is not None and not row.get("bboxX") else None
            fill_observation(row, ann, opts, None if isinstance(size, Skip) else size)
            if step:
                steps[row["deploymentID"]] = max(step, steps.get(row["deploymentID"], 0.0))
            continue
        media_row = media_by_photo.get(photo)
        if media_row is None:
            skips.append(write_skip(ann, MISSING, f"its photo is not among the media of {pkg.file}"))
            continue
        size = checked_size(ann, opts, photo)
        if isinstance(size, Skip):
            skips.append(size)
            continue
        row = _new_row(ann, media_row, opts)
        fill_observation(row, ann, opts, size)
        index[ann.annotation_id] = len(rows)
        rows.append(row)
        if step:
            steps[row["deploymentID"]] = max(step, steps.get(row["deploymentID"], 0.0))
    return rows, skips, steps


def _coarsened(
    deployments: Table, observations: list[dict[str, str]], opts: WriteOptions, per_dep: dict[str, float]
) -> tuple[list, float]:
    """The deployment rows, coordinates rounded where a sensitive species was seen (the annotations' grids by
    deployment in ``per_dep``, or a row's ``scientificName``); the coarsest grid (0: none)."""
    steps = {**opts.sensitive, **{opts.scientific(s): step for s, step in opts.sensitive.items()}}
    per_dep = dict(per_dep)
    for row in observations:
        step = steps.get(row.get("scientificName", ""))
        if step is not None:
            dep = row.get("deploymentID", "")
            per_dep[dep] = max(per_dep.get(dep, 0.0), step)
    out = []
    for row in deployments.rows:
        raw, step = dict(row.raw), per_dep.get(row.raw.get("deploymentID", ""))
        lat, lon = row.values.get("latitude"), row.values.get("longitude")
        if step and lat is not None and lon is not None:
            lat, lon = coarsen(lat, lon, step)
            raw.update(
                latitude=repr(lat), longitude=repr(lon), coordinateUncertainty=str(uncertainty_m(step))
            )
        out.append(raw)
    return out, max(per_dep.values(), default=0.0)


def _copy_files(out: Path, pkg: Package, media: Table, media_mode: str) -> None:
    """The media files and the package's other local resources, at the same relative paths."""
    if media_mode != "none":
        missing = 0
        for row in media.rows:
            local = _local(pkg, row.raw.get("filePath"))
            if local is None:
                missing += "://" not in row.raw.get("filePath", "")
                continue
            target = out / row.raw["filePath"]
            if not target.exists():
                put_media(local, target, media_mode)
        if missing:
            logger.warning("%s: %d media files not in the package folder: not copied", pkg.file, missing)
    for resource in pkg.descriptor.get("resources", []):
        if isinstance(resource, dict) and resource.get("name") not in TABLES:
            local = _local(pkg, resource.get("path"))
            if local is not None and not (out / resource["path"]).exists():
                (out / resource["path"]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(local, out / resource["path"])


def _descriptor(pkg: Package, observations: list[dict[str, str]], opts: WriteOptions, step: float) -> dict:
    descriptor = copy.deepcopy(pkg.descriptor)
    descriptor["created"] = opts.now
    names = {row.get("scientificName", "") for row in observations if row.get("observationType") == "animal"}
    existing = descriptor.get("taxonomic")
    descriptor["taxonomic"] = taxonomic(names - {""}, existing if isinstance(existing, list) else None)
    if isinstance(descriptor.get("project"), dict):
        descriptor["project"]["individualAnimals"] = True
    if step:
        descriptor["coordinatePrecision"] = max(step, descriptor.get("coordinatePrecision") or 0.0)
    return descriptor


def write_from_source(
    out: Path,
    source: Path,
    annotations: Sequence[Annotation],
    opts: WriteOptions,
    root: Path,
    media_mode: str,
) -> list[Skip]:
    """Write the source package with the annotations' observations filled or added into ``out``; the skips."""
    pkg = open_package(source)
    tables = {name: read_table(pkg.tables[name], name) for name in TABLES}
    observations, skips, per_dep = _observations(pkg, tables, annotations, opts, root)
    deployments, step = _coarsened(tables["deployments"], observations, opts, per_dep)
    rel = {name: pkg.tables[name].relative_to(pkg.root).as_posix() for name in TABLES}
    obs_header = tables["observations"].header
    obs_header = obs_header + [c for c in columns("observations") if c not in obs_header]
    dep_header = tables["deployments"].header
    if step and "coordinateUncertainty" not in dep_header:
        dep_header = dep_header + ["coordinateUncertainty"]
    put_file(out, rel["deployments"], csv_bytes(dep_header, deployments))
    put_file(out, rel["media"], csv_bytes(tables["media"].header, [r.raw for r in tables["media"].rows]))
    put_file(out, rel["observations"], csv_bytes(obs_header, observations))
    _copy_files(out, pkg, tables["media"], media_mode)
    descriptor = _descriptor(pkg, observations, opts, step)
    put_file(out, "datapackage.json", (json.dumps(descriptor, indent=2, ensure_ascii=False) + "\n").encode())
    return skips
