"""Camtrap DP packages opened and validated offline: the ``datapackage.json`` and its three tables.

:func:`open_package` reads a package's descriptor and finds the CSV file of each of its three tables; a package
that cannot be read at all (not JSON, no ``resources`` list, a table missing, a CSV that does not exist or lies
outside the package folder) raises :class:`~animal_reid.season.ingest.IngestError` with one line naming the file.
:func:`validate_package` lists every problem of a package, one line each naming the file, the line and the field:
the profile's required properties (``profile``, ``created``, ``contributors``, ``project`` with its required
properties and enums, ``spatial``, ``temporal`` dates, ``taxonomic`` names) and the version (1.0, 1.0.1 or 1.0.2),
then each table against its schema and the keys between them (:mod:`animal_reid.season.camtrapdp_schema`).
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .camtrapdp_schema import SUPPORTED_VERSIONS, TABLES, Table, key_problems, read_table
from .ingest import IngestError, is_inside, read_text

__all__ = ["Package", "open_package", "validate_package"]


@dataclass
class Package:
    """An opened package: its ``datapackage.json``, folder, descriptor and the CSV file of each table."""

    file: Path
    root: Path
    descriptor: dict[str, Any]
    tables: dict[str, Path]


def _read_descriptor(file: Path) -> dict[str, Any]:
    text = read_text(file)
    try:
        descriptor = json.loads(text)
    except json.JSONDecodeError as err:
        raise IngestError(
            f"{file}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
        ) from err
    if not isinstance(descriptor, dict):
        raise IngestError(f"{file}: expected a JSON object, got {type(descriptor).__name__}")
    return descriptor


def _resource_file(file: Path, root: Path, index: int, resource: dict[str, Any]) -> Path:
    where = f"{file}: resources[{index}] ({resource['name']})"
    path = resource.get("path")
    if isinstance(path, list):
        raise IngestError(f"{where}: a multi-part path is not read (one CSV file per table)")
    if not isinstance(path, str) or not path.strip():
        raise IngestError(f"{where}: no 'path' to its CSV file")
    if "://" in path:
        raise IngestError(f"{where}: path {path!r} is a URL: remote tables are not read")
    target = root / path
    if not is_inside(target, root):
        raise IngestError(f"{where}: path {path!r} resolves outside the package folder {root}: not read")
    if not target.is_file():
        raise IngestError(f"{where}: file {target} does not exist")
    return target


def open_package(path: str | Path) -> Package:
    """The package at ``path`` (its folder or its ``datapackage.json``); :class:`IngestError` naming the file when
    it is not JSON, has no ``resources`` list, lacks one of the three tables or a table's CSV file."""
    path = Path(path)
    file = path / "datapackage.json" if path.is_dir() else path
    if not file.is_file():
        raise IngestError(f"{file}: no such file")
    descriptor = _read_descriptor(file)
    resources = descriptor.get("resources")
    if not isinstance(resources, list) or not resources:
        raise IngestError(
            f"{file}: no 'resources' list (a Camtrap DP names deployments, media and observations)"
        )
    root, tables = file.parent.resolve(), {}
    for index, resource in enumerate(resources):
        name = resource.get("name") if isinstance(resource, dict) else None
        if name not in TABLES:
            continue
        if name in tables:
            raise IngestError(f"{file}: resources[{index}] is a second {name!r} resource")
        tables[name] = _resource_file(file, root, index, resource)
    missing = [name for name in TABLES if name not in tables]
    if missing:
        raise IngestError(
            f"{file}: no {', '.join(missing)} resource (a Camtrap DP has deployments, media and observations)"
        )
    return Package(file, root, descriptor, tables)


def _profile_version(profile: Any) -> str | None:
    match = re.search(
        r"/camtrap-dp/([^/]+)/camtrap-dp-profile\.json$", profile if isinstance(profile, str) else ""
    )
    return match.group(1) if match else None


_PROJECT_ENUMS = {
    "samplingDesign": (
        "simpleRandom",
        "systematicRandom",
        "clusteredRandom",
        "experimental",
        "targeted",
        "opportunistic",
    ),
    "captureMethod": ("activityDetection", "timeLapse"),
    "observationLevel": ("media", "event"),
}


def _project_problems(file: Path, project: Any) -> list[str]:
    if not isinstance(project, dict):
        return [f"{file}: project is not an object"]
    out = [
        f"{file}: project has no {key!r} (required by the Camtrap DP profile)"
        for key in ("title", "samplingDesign", "captureMethod", "individualAnimals", "observationLevel")
        if key not in project
    ]
    for key, allowed in _PROJECT_ENUMS.items():
        values = project.get(key, [])
        for value in (
            [values] if key == "samplingDesign" else values if isinstance(values, list) else [values]
        ):
            if value not in allowed:
                out.append(f"{file}: project.{key} {value!r} is not one of {', '.join(allowed)}")
    if "individualAnimals" in project and not isinstance(project["individualAnimals"], bool):
        out.append(f"{file}: project.individualAnimals {project['individualAnimals']!r} is not true or false")
    return out


def _descriptor_problems(pkg: Package) -> list[str]:
    """The package profile's checks this module makes (required properties, version, project, coverage)."""
    file, d = pkg.file, pkg.descriptor
    required = ("profile", "created", "contributors", "project", "spatial", "temporal", "taxonomic")
    out = [f"{file}: no {key!r} (required by the Camtrap DP profile)" for key in required if key not in d]
    if "profile" in d and _profile_version(d["profile"]) not in SUPPORTED_VERSIONS:
        out.append(f"{file}: profile {d['profile']!r} is not Camtrap DP {'/'.join(SUPPORTED_VERSIONS)}")
    if "created" in d and not _iso(d["created"]):
        out.append(f"{file}: created {d['created']!r} is not an ISO 8601 date-time")
    if "project" in d:
        out += _project_problems(file, d["project"])
    temporal = d.get("temporal", {})
    for key in ("start", "end") if "temporal" in d else ():
        value = temporal.get(key) if isinstance(temporal, dict) else None
        if not _is_date(value):
            out.append(f"{file}: temporal.{key} {value!r} is not a date (YYYY-MM-DD)")
    for i, taxon in enumerate(d.get("taxonomic", []) if isinstance(d.get("taxonomic"), list) else [None]):
        if not isinstance(taxon, dict) or not isinstance(taxon.get("scientificName"), str):
            out.append(f"{file}: taxonomic[{i}] has no scientificName")
    return out


def _iso(value: Any) -> bool:
    try:
        _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        return True
    except (AttributeError, TypeError, ValueError):
        return False


def _is_date(value: Any) -> bool:
    try:
        _dt.datetime.strptime(value, "%Y-%m-%d")
        return True
    except (TypeError, ValueError):
        return False


def validate_package(path: str | Path) -> list[str]:
    """The problems of the Camtrap DP at ``path`` (folder or ``datapackage.json``), one line each naming the
    file, the line and the field; ``[]`` when it is valid."""
    try:
        pkg = open_package(path)
    except IngestError as err:
        return [str(err)]
    problems = _descriptor_problems(pkg)
    tables: dict[str, Table] = {}
    for name in TABLES:
        try:
            tables[name] = read_table(pkg.tables[name], name)
        except IngestError as err:
            problems.append(str(err))
    for table in tables.values():
        for row in table.rows:
            problems.extend(row.problems)
    if len(tables) == len(TABLES):
        seen: set[str] = set()
        for by_line in key_problems(tables).values():
            for line in sorted(by_line):
                new = [p for p in by_line[line] if p not in seen]
                seen.update(new)
                problems.extend(new)
    return problems
