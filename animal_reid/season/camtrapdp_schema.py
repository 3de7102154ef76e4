"""Camtrap DP 1.0 tables checked offline: the vendored table schemas and the part of Table Schema they use.

The three tables of a Camtrap DP (``deployments``, ``media``, ``observations``) are checked against the Camtrap DP
1.0 table schemas vendored in ``schemas/camtrap-dp/`` (``frictionless`` fetches them by URL, which fails offline)
with the part of Frictionless Table Schema they use, written here: the types ``string``, ``number``, ``integer``,
``boolean``, ``datetime`` (``%Y-%m-%dT%H:%M:%S%z``), ``date``, ``any`` and ``object``; the constraints
``required``, ``unique``, ``enum``, ``minimum``, ``maximum`` and ``pattern``; ``missingValues``, ``primaryKey``
and ``foreignKeys``. :func:`read_table` types each row and lists its problems, :func:`key_problems` the repeated
keys (both rows named) and the foreign keys pointing nowhere; every problem is one line naming the file, the line
and the field. A table that cannot be read at all (not UTF-8, a required column missing) raises
:class:`~animal_reid.season.ingest.IngestError` naming the file.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from .ingest import IngestError, read_text

__all__ = [
    "PROFILE_URL",
    "SCHEMA_DIR",
    "SUPPORTED_VERSIONS",
    "TABLES",
    "VERSION",
    "Row",
    "Table",
    "key_problems",
    "load_schema",
    "read_table",
    "schema_url",
]

#: the folder of the vendored table schemas
SCHEMA_DIR = Path(__file__).parent / "schemas" / "camtrap-dp"
#: the three resources of a Camtrap DP, in the order they are read (and their keys point)
TABLES = ("deployments", "media", "observations")
#: the version written and checked against; packages of the versions below are read (same table schemas)
VERSION = "1.0"
SUPPORTED_VERSIONS = ("1.0", "1.0.1", "1.0.2")
_BASE_URL = "https://raw.githubusercontent.com/tdwg/camtrap-dp/{}/"
PROFILE_URL = _BASE_URL.format(VERSION) + "camtrap-dp-profile.json"

_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|[+-]?INF|NaN")
_INTEGER = re.compile(r"[+-]?\d+")
_TRUE, _FALSE = ("true", "True", "TRUE", "1"), ("false", "False", "FALSE", "0")
_KINDS = {
    "number": "number",
    "integer": "integer",
    "boolean": "boolean (true or false)",
    "datetime": "date-time (YYYY-MM-DDThh:mm:ssZ or YYYY-MM-DDThh:mm:ss±hh:mm)",
    "date": "date (YYYY-MM-DD)",
    "object": "JSON object",
}


def schema_url(name: str, version: str = VERSION) -> str:
    """The published URL of a table schema, as a package's resource names it."""
    return _BASE_URL.format(version) + f"{name}-table-schema.json"


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The vendored Camtrap DP 1.0 table schema of ``name`` (one of :data:`TABLES`)."""
    return json.loads((SCHEMA_DIR / f"{name}-table-schema.json").read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------------------------------------
# the tables
@dataclass
class Row:
    """One CSV row: its line, the raw cells by column, the typed values (None where missing or bad), problems."""

    line: int
    raw: dict[str, str]
    values: dict[str, Any]
    problems: list[str] = field(default_factory=list)


@dataclass
class Table:
    """A table read against its schema."""

    name: str
    path: Path
    header: list[str]
    rows: list[Row]


def _cast(text: str, fld: dict[str, Any]) -> Any:
    """``text`` as the field's type; ValueError when it is not one."""
    kind, fmt = fld.get("type", "string"), fld.get("format", "default")
    if kind == "number" and _NUMBER.fullmatch(text):
        return float(text.replace("INF", "inf"))
    if kind == "integer" and _INTEGER.fullmatch(text):
        return int(text)
    if kind == "boolean" and text in _TRUE + _FALSE:
        return text in _TRUE
    if kind == "datetime":
        if fmt not in ("default", "any"):
            return _dt.datetime.strptime(text, fmt)
        return _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if kind == "date":
        return _dt.datetime.strptime(text, "%Y-%m-%d" if fmt in ("default", "any") else fmt).date()
    if kind == "object":
        value = json.loads(text)
        if isinstance(value, dict):
            return value
    if kind in ("string", "any"):
        return text
    raise ValueError(kind)


def _constraint_problem(text: str, value: Any, fld: dict[str, Any]) -> str | None:
    name, c = fld["name"], fld.get("constraints", {})
    if "enum" in c and value not in c["enum"]:
        return f"{name} {text!r} is not one of {', '.join(map(str, c['enum']))}"
    if "minimum" in c and value < c["minimum"]:
        return f"{name} {text} is below the minimum {c['minimum']}"
    if "maximum" in c and value > c["maximum"]:
        return f"{name} {text} is above the maximum {c['maximum']}"
    if "pattern" in c and not re.fullmatch(c["pattern"], text):
        return f"{name} {text!r} does not match the pattern {c['pattern']}"
    return None


def _check_cell(text: str, fld: dict[str, Any], missing: list[str]) -> tuple[Any, str | None]:
    """The typed value of one cell and its problem (None when fine)."""
    name = fld["name"]
    if text in missing:
        return None, f"{name} is empty (required)" if fld.get("constraints", {}).get("required") else None
    try:
        value = _cast(text, fld)
    except (ValueError, TypeError, OverflowError):
        return None, f"{name} {text!r} is not a {_KINDS.get(fld.get('type'), fld.get('type'))}"
    problem = _constraint_problem(text, value, fld)
    return (None, problem) if problem else (value, None)


def _records(path: Path, text: str):
    """``(first line, cells)`` of each non-blank CSV record after the header; the header first."""
    reader = csv.reader(io.StringIO(text, newline=""))
    end = 0
    for cells in reader:
        start, end = end + 1, reader.line_num
        if cells:
            yield start, cells


def _check_header(path: Path, name: str, header: list[str], schema: dict[str, Any]) -> None:
    seen: set[str] = set()
    for column in header:
        if column in seen:
            raise IngestError(f"{path}: column {column!r} appears twice in the header")
        seen.add(column)
    for fld in schema["fields"]:
        if fld.get("constraints", {}).get("required") and fld["name"] not in seen:
            raise IngestError(f"{path}: no {fld['name']!r} column (required by the Camtrap DP {name} table)")


def read_table(path: str | Path, name: str) -> Table:
    """The CSV of table ``name`` read against its schema: each row typed, with its problems (one line each).
    :class:`IngestError` naming the file when it cannot be read or lacks a required column."""
    path, schema = Path(path), load_schema(name)
    text = read_text(path)
    records = _records(path, text)
    first = next(records, None)
    if first is None:
        raise IngestError(f"{path}: empty file (no header)")
    header = first[1]
    _check_header(path, name, header, schema)
    fields = {fld["name"]: fld for fld in schema["fields"]}
    missing = schema.get("missingValues", [""])
    rows = []
    for line, cells in records:
        where = f"{path} line {line}"
        row = Row(line, dict(zip(header, cells, strict=False)), {})
        if len(cells) != len(header):
            row.problems.append(f"{where}: {len(cells)} cells, the header has {len(header)}")
        for column, fld in fields.items():
            if column in header:
                row.values[column], problem = _check_cell(row.raw.get(column, ""), fld, missing)
                if problem:
                    row.problems.append(f"{where}: {problem}")
        rows.append(row)
    return Table(name, path, header, rows)


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _unique_problems(table: Table, out: dict[int, list[str]]) -> None:
    schema = load_schema(table.name)
    keys = {f["name"] for f in schema["fields"] if f.get("constraints", {}).get("unique")}
    keys.update(_as_list(schema.get("primaryKey", [])))
    for key in sorted(keys):
        first: dict[str, int] = {}
        for row in table.rows:
            value = row.raw.get(key, "")
            if value == "":
                continue
            if value in first:
                message = f"{table.path} lines {first[value]} and {row.line} share {key} {value!r}"
                out.setdefault(first[value], []).append(message)
                out.setdefault(row.line, []).append(message)
            else:
                first[value] = row.line


def key_problems(tables: dict[str, Table]) -> dict[str, dict[int, list[str]]]:
    """Duplicate primary keys (and unique fields) and foreign keys that point nowhere: ``{table: {line:
    [problem]}}`` (a duplicate is listed under both lines)."""
    out: dict[str, dict[int, list[str]]] = {name: {} for name in tables}
    for table in tables.values():
        _unique_problems(table, out[table.name])
        for fk in load_schema(table.name).get("foreignKeys", []):
            (column,), ref = _as_list(fk["fields"]), fk["reference"]
            target = tables.get(ref["resource"])
            if target is None:
                continue
            (ref_column,) = _as_list(ref["fields"])
            known = {row.raw.get(ref_column, "") for row in target.rows}
            for row in table.rows:
                value = row.raw.get(column, "")
                if value != "" and value not in known:
                    message = f"{table.path} line {row.line}: {column} {value!r} is not a {ref['resource']}.{ref_column} in {target.path}"
                    out[table.name].setdefault(row.line, []).append(message)
    return out
