"""Backing up a catalogue (database rows and photos) to one archive, and restoring it into an empty store.

An archive is a gzip-compressed tar holding, in this order:

* ``manifest.json``: :data:`ARCHIVE_FORMAT`, the schema revision, when and from where, per table its row
  count, its columns and how each is written, and the sha256 and size of every other member;
* ``tables/<table>.jsonl``: every row of every table at that revision (found by reflecting the database, so a
  table a later revision adds is included without a change here), one JSON object per line, tables in
  foreign-key order: bytes as base64, date-times as ISO 8601 in UTC (naive ones are the store's UTC);
* ``photos/<path>``: every file of the photo folder (its path relative to the folder).

The rows are read in one snapshot (a read transaction), so a backup taken while a service writes is
consistent; photos are only ever added (content-addressed), so every photo a row names is in the folder.

:func:`restore` goes into an EMPTY store only (any row refused with one line): the database is migrated to the
archive's revision, every member is checked against the manifest's sha256 as it is read, the photos are written
and the rows inserted in foreign-key order in ONE transaction (a damaged archive leaves the store empty), on
PostgreSQL each serial/identity sequence is set past the largest id, and the schema is then brought to the
newest revision. Errors are :class:`BackupError` with one line naming the archive and the problem.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import gzip
import hashlib
import io
import json
import os
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import sqlalchemy as sa

from animal_reid.manifest import OutputError, describe_os_error, replace_file
from animal_reid.serve.store import MIGRATIONS, Catalogue

ARCHIVE_FORMAT = "animal-reid-catalogue-backup"
ARCHIVE_VERSION = 1
MANIFEST = "manifest.json"
SKIP_TABLES = ("alembic_version",)  # the revision is in the manifest; migrating writes this table
_CHUNK = 1000  # rows per INSERT
_READ = 1 << 20


class BackupError(ValueError):
    """A backup or restore that cannot be done; the message is one line naming the archive or store."""


@dataclass
class BackupSummary:
    """What a backup wrote or a restore read."""

    archive: Path
    revision: str
    rows: dict[str, int] = field(default_factory=dict)
    photos: int = 0
    missing_photos: list[str] = field(default_factory=list)

    def line(self, verb: str, where: str) -> str:
        """``restored X into Y: 3 individuals, 6 sightings, 1 encounter, 7 photo files (schema revision 0002)``."""
        counts = [
            _count(self.rows[t], t) for t in ("individuals", "sightings", "encounters") if t in self.rows
        ]
        counts.append(_count(self.photos, "photo files"))
        text = f"{verb} {where}: {', '.join(counts)} (schema revision {self.revision})"
        if self.missing_photos:
            text += f"; {_count(len(self.missing_photos), 'photos')} named by the catalogue were not in its folder"
        return text


def _count(n: int, plural: str) -> str:
    return f"{n} {plural if n != 1 else plural[:-1]}"


# --- values ---------------------------------------------------------------------------------------------------
def _kind(col_type: sa.types.TypeEngine) -> str:
    """How a column's values are written: bytes (base64), datetime (ISO 8601, UTC), or as they are (JSON)."""
    if isinstance(col_type, sa.LargeBinary):
        return "bytes"
    return "datetime" if isinstance(col_type, sa.DateTime) else "json"


def encode(value: Any, kind: str) -> Any:
    """A column value as it is written to the archive (see the module doc)."""
    if value is None or kind == "json":
        return value
    if kind == "bytes":
        return base64.b64encode(bytes(value)).decode("ascii")
    aware = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
    return aware.astimezone(dt.UTC).isoformat()


def _decode(value: Any, kind: str, col_type: sa.types.TypeEngine) -> Any:
    if value is None or kind == "json":
        return value
    if kind == "bytes":
        return base64.b64decode(value)
    when = dt.datetime.fromisoformat(value)
    return when if getattr(col_type, "timezone", False) else when.astimezone(dt.UTC).replace(tzinfo=None)


# --- reading the database -------------------------------------------------------------------------------------
def reflect(engine: sa.Engine) -> list[sa.Table]:
    """The catalogue's tables (not Alembic's), parents before the tables whose foreign keys name them."""
    meta = sa.MetaData()
    meta.reflect(bind=engine)
    return [t for t in meta.sorted_tables if t.name not in SKIP_TABLES]


@contextlib.contextmanager
def _snapshot(engine: sa.Engine):
    """A connection whose reads all see one committed state."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn, conn.begin():
            yield conn
        return
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":  # pysqlite begins no transaction for reads by itself
            conn.exec_driver_sql("BEGIN")
        try:
            yield conn
        finally:
            conn.rollback()


def _rows(conn: sa.Connection, table: sa.Table):
    kinds = {c.name: _kind(c.type) for c in table.columns}
    order = list(table.primary_key.columns) or list(table.columns)
    for row in conn.execute(sa.select(table).order_by(*order)).mappings():
        yield {name: encode(row[name], kind) for name, kind in kinds.items()}


def table_rows(catalogue: Catalogue) -> dict[str, list[dict]]:
    """Every table's rows as an archive holds them (comparable between SQLite and PostgreSQL)."""
    with _snapshot(catalogue.engine) as conn:
        return {t.name: list(_rows(conn, t)) for t in reflect(catalogue.engine)}


def _json_line(row: dict, table: str) -> bytes:
    try:
        return (json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
    except (TypeError, ValueError) as err:
        raise BackupError(f"table {table}: a value cannot be written to the archive ({err})") from err


def _spool_tables(catalogue: Catalogue, folder: Path) -> tuple[str, dict[str, dict]]:
    """Each table's rows into ``folder/<table>.jsonl`` (one snapshot); (revision, per-table manifest entry)."""
    out: dict[str, dict] = {}
    with _snapshot(catalogue.engine) as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            raise BackupError(
                f"catalogue {catalogue.shown_url} is not a catalogue (it has no schema revision)"
            )
        revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        for table in reflect(catalogue.engine):
            digest, n = hashlib.sha256(), 0
            with open(folder / f"{table.name}.jsonl", "wb") as f:
                for row in _rows(conn, table):
                    line = _json_line(row, table.name)
                    f.write(line)
                    digest.update(line)
                    n += 1
            out[table.name] = {
                "member": f"tables/{table.name}.jsonl", "rows": n, "sha256": digest.hexdigest(),
                "bytes": (folder / f"{table.name}.jsonl").stat().st_size,
                "columns": {c.name: _kind(c.type) for c in table.columns},
            }  # fmt: skip
    return revision, out


# --- photos ---------------------------------------------------------------------------------------------------
def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_READ):
            digest.update(chunk)
    return digest.hexdigest()


def _photo_files(photo_dir: Path) -> dict[str, dict]:
    """Every file of the photo folder (hidden temporaries left out): relative POSIX path -> sha256, bytes."""
    out = {}
    for path in sorted(p for p in photo_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = path.relative_to(photo_dir).as_posix()
        out[rel] = {"member": f"photos/{rel}", "sha256": _file_sha256(path), "bytes": path.stat().st_size}
    return out


def _missing_photos(catalogue: Catalogue, tables: dict[str, dict], folder: Path) -> list[str]:
    """Photos the ``photos`` table names whose file is not in the photo folder (reported, not fatal)."""
    if "photos" not in tables:
        return []
    missing = []
    with open(folder / "photos.jsonl", "rb") as f:
        for line in f:
            row = json.loads(line)
            if not catalogue.photo_path(row["sha256"], row["format"]).is_file():
                missing.append(row["sha256"])
    return missing


# --- writing the archive --------------------------------------------------------------------------------------
def _add(tar: tarfile.TarFile, name: str, size: int, fileobj, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, int(mtime)
    tar.addfile(info, fileobj)


def _write_archive(f, manifest: dict, spool: Path, photo_dir: Path) -> None:
    data = (json.dumps(manifest, indent=1) + "\n").encode("utf-8")
    now = dt.datetime.now(dt.UTC).timestamp()
    with tarfile.open(fileobj=f, mode="w:gz", compresslevel=6) as tar:
        _add(tar, MANIFEST, len(data), io.BytesIO(data), now)
        for name, entry in manifest["tables"].items():
            with open(spool / f"{name}.jsonl", "rb") as src:
                _add(tar, entry["member"], entry["bytes"], src, now)
        for rel, entry in manifest["photos"].items():
            path = photo_dir / rel
            with open(path, "rb") as src:
                _add(tar, entry["member"], entry["bytes"], src, path.stat().st_mtime)


def backup(catalogue: Catalogue, archive_path: str | os.PathLike) -> BackupSummary:
    """Write ``catalogue`` (every table's rows and every photo file) to a new archive at ``archive_path``;
    an existing file is never replaced (:class:`BackupError`)."""
    archive = Path(archive_path).expanduser()
    if archive.exists():
        raise BackupError(f"archive {archive} exists: choose another file name (a backup never replaces one)")
    with tempfile.TemporaryDirectory(prefix="animal-reid-backup-") as tmp:
        spool = Path(tmp)
        try:
            revision, tables = _spool_tables(catalogue, spool)
        except sa.exc.SQLAlchemyError as err:
            raise BackupError(
                f"catalogue {catalogue.shown_url}: cannot be read ({_first_line(err)})"
            ) from err
        if revision is None:
            raise BackupError(f"catalogue {catalogue.shown_url} has no schema revision: nothing to back up")
        photos = _photo_files(catalogue.photo_dir)
        manifest = {
            "format": ARCHIVE_FORMAT, "version": ARCHIVE_VERSION, "revision": revision,
            "created_at": dt.datetime.now(dt.UTC).isoformat(), "source": catalogue.shown_url,
            "counts": {name: entry["rows"] for name, entry in tables.items()} | {"photo_files": len(photos)},
            "tables": tables, "photos": photos,
        }  # fmt: skip
        missing = _missing_photos(catalogue, tables, spool)
        try:
            replace_file(archive, lambda f: _write_archive(f, manifest, spool, catalogue.photo_dir),
                         tool="animal-reid catalogue backup", what="archive")  # fmt: skip
        except OutputError as err:
            raise BackupError(str(err)) from err
    rows = {name: entry["rows"] for name, entry in tables.items()}
    return BackupSummary(archive, revision, rows, len(photos), missing)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


# --- restoring ------------------------------------------------------------------------------------------------
class _Archive:
    """An archive read once, front to back, each member checked against the manifest as it is read."""

    def __init__(self, path: Path):
        self.path = path
        self.tar = tarfile.open(path, mode="r|gz")  # noqa: SIM115  (closed by close())
        self.members = iter(self.tar)
        try:
            self.manifest = self._manifest()
        except BaseException:
            self.tar.close()
            raise

    def damaged(self, why: str) -> BackupError:
        return BackupError(f"archive {self.path} is damaged or not a catalogue backup: {why}")

    def _manifest(self) -> dict:
        first = next(self.members, None)
        if first is None or first.name != MANIFEST or not first.isfile():
            raise self.damaged(f"its first member is not {MANIFEST}")
        manifest = json.loads(self.tar.extractfile(first).read())
        if not isinstance(manifest, dict) or manifest.get("format") != ARCHIVE_FORMAT:
            raise self.damaged(f'{MANIFEST} has no "format": {ARCHIVE_FORMAT!r}')
        if manifest.get("version") != ARCHIVE_VERSION:
            raise BackupError(f"archive {self.path} is version {manifest.get('version')!r}; this animal-reid "
                              f"reads version {ARCHIVE_VERSION}")  # fmt: skip
        return manifest

    def next_member(self, expected: str, entry: dict):
        """The next member's file object, which must be ``expected``."""
        member = next(self.members, None)
        if member is None:
            raise self.damaged(f"it ends before {expected}")
        if member.name != expected or not member.isfile() or member.size != entry["bytes"]:
            raise self.damaged(f"{member.name} where {expected} ({entry['bytes']} bytes) was expected")
        return self.tar.extractfile(member)

    def check(self, entry: dict, digest) -> None:
        if digest.hexdigest() != entry["sha256"]:
            raise self.damaged(f"{entry['member']} does not match its sha256 in {MANIFEST}")

    def check_end(self) -> None:
        extra = next(self.members, None)
        if extra is not None:
            raise self.damaged(f"{extra.name} is not in {MANIFEST}")

    def close(self) -> None:
        self.tar.close()


def _open_archive(path: Path) -> _Archive:
    if not path.is_file():
        raise BackupError(f"archive {path}: no such file")
    try:
        return _Archive(path)
    except BackupError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as err:
        raise BackupError(f"archive {path} is damaged or not a catalogue backup: {_first_line(err)}") from err


def _check_empty(catalogue: Catalogue) -> None:
    with catalogue.engine.connect() as conn:
        counts = {t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar()
                  for t in reflect(catalogue.engine)}  # fmt: skip
    full = {name: n for name, n in counts.items() if n}
    if full:
        name = "individuals" if "individuals" in full else next(iter(full))
        raise BackupError(
            f"catalogue {catalogue.shown_url} is not empty (table {name}: {full[name]} rows): restore goes into an empty "
            "catalogue only (nothing is replaced)"
        )


def _alembic_config():
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _alembic(catalogue: Catalogue, action: str, revision: str) -> None:
    from alembic import command
    from alembic.util import CommandError

    cfg = _alembic_config()
    try:
        with catalogue.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            getattr(command, action)(cfg, revision)
    except CommandError as err:
        raise BackupError(f"catalogue {catalogue.shown_url}: cannot {action} it to schema revision {revision} "
                          f"({_first_line(err)})") from err  # fmt: skip


def _migrate_to(catalogue: Catalogue, revision: str, archive: Path) -> None:
    """Bring the (empty) store to ``revision``: upgrade, or downgrade one that is newer."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config())
    if revision not in {r.revision for r in script.walk_revisions()}:
        raise BackupError(f"archive {archive} was written at schema revision {revision}, which this version "
                          "of animal-reid does not know (upgrade animal-reid to restore it)")  # fmt: skip
    current = catalogue.revision() if sa.inspect(catalogue.engine).has_table("alembic_version") else None
    if current == revision:
        return
    older = current is not None and revision in {
        r.revision for r in script.iterate_revisions(current, "base")
    }
    _alembic(catalogue, "downgrade" if older else "upgrade", revision)


def _insert_table(conn: sa.Connection, table: sa.Table, entry: dict, archive: _Archive) -> None:
    kinds = entry["columns"]
    lacking = sorted(set(kinds) - set(table.columns.keys()))
    if lacking:
        raise BackupError(f"archive {archive.path}: table {table.name} has columns the catalogue's table lacks "
                          f"({', '.join(lacking)})")  # fmt: skip
    digest, batch = hashlib.sha256(), []
    for line in archive.next_member(entry["member"], entry):
        digest.update(line)
        row = json.loads(line)
        batch.append({k: _decode(v, kinds[k], table.c[k].type) for k, v in row.items()})
        if len(batch) >= _CHUNK:
            conn.execute(table.insert(), batch)
            batch = []
    archive.check(entry, digest)  # before the last rows: a damaged member inserts nothing more
    if batch:
        conn.execute(table.insert(), batch)


def _photo_target(photo_dir: Path, rel: str, archive: _Archive) -> Path:
    parts = PurePosixPath(rel).parts
    if not parts or rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in rel:
        raise archive.damaged(f"photo path {rel!r} is not a plain relative path")
    target = photo_dir.joinpath(*parts)
    if not target.resolve().is_relative_to(photo_dir.resolve()):
        raise archive.damaged(f"photo path {rel!r} leads outside the photo folder")
    return target


def _restore_photo(archive: _Archive, rel: str, entry: dict, photo_dir: Path) -> None:
    """The photo written beside its place, checked, then renamed into place (an identical file kept)."""
    target = _photo_target(photo_dir, rel, archive)
    source = archive.next_member(entry["member"], entry)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.restore.tmp")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as f:
            while chunk := source.read(_READ):
                digest.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        archive.check(entry, digest)
        if target.exists() and _file_sha256(target) != entry["sha256"]:
            raise BackupError(f"photo folder {photo_dir} already holds a different {rel}: restore into an "
                              "empty photo folder (nothing is replaced)")  # fmt: skip
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _reset_sequences(conn: sa.Connection, tables: list[sa.Table]) -> None:
    """On PostgreSQL, each serial/identity sequence set so that the next id follows the largest restored one."""
    if conn.dialect.name != "postgresql":
        return
    quote = conn.dialect.identifier_preparer.quote
    for table in tables:
        for col in table.columns:
            if not isinstance(col.type, sa.Integer):
                continue
            seq = conn.execute(sa.text("SELECT pg_get_serial_sequence(:t, :c)"),
                               {"t": quote(table.name), "c": col.name}).scalar()  # fmt: skip
            if seq:
                top = f"SELECT coalesce(max({quote(col.name)}), 0) + 1 FROM {quote(table.name)}"
                conn.execute(sa.text(f"SELECT setval(:s, ({top}), false)"), {"s": seq})


def _restore_contents(archive: _Archive, catalogue: Catalogue) -> None:
    """Rows (in the archive's foreign-key order) and photos, in one transaction."""
    tables = {t.name: t for t in reflect(catalogue.engine)}
    missing = [name for name in archive.manifest["tables"] if name not in tables]
    if missing:
        raise BackupError(f"archive {archive.path}: the catalogue at revision {archive.manifest['revision']} has "
                          f"no table {missing[0]}")  # fmt: skip
    with catalogue.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA defer_foreign_keys = ON")
        for name, entry in archive.manifest["tables"].items():
            _insert_table(conn, tables[name], entry, archive)
        for rel, entry in archive.manifest["photos"].items():
            _restore_photo(archive, rel, entry, catalogue.photo_dir)
        archive.check_end()
        _reset_sequences(conn, list(tables.values()))


def restore(archive_path: str | os.PathLike, catalogue: Catalogue) -> BackupSummary:
    """Restore the archive at ``archive_path`` into the EMPTY ``catalogue`` (module doc); the catalogue ends
    at the newest schema revision."""
    path = Path(archive_path).expanduser()
    archive = _open_archive(path)
    try:
        revision = str(archive.manifest.get("revision"))
        _check_empty(catalogue)
        _migrate_to(catalogue, revision, path)
        _restore_contents(archive, catalogue)
    except BackupError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, KeyError, TypeError, ValueError) as err:
        raise archive.damaged(_first_line(err)) from err
    except OSError as err:
        raise BackupError(f"restore: cannot write {describe_os_error(err)}") from err
    except sa.exc.SQLAlchemyError as err:
        raise BackupError(
            f"catalogue {catalogue.shown_url}: {_first_line(err)} (nothing was restored)"
        ) from err
    finally:
        archive.close()
    _alembic(catalogue, "upgrade", "head")
    manifest = archive.manifest
    rows = {name: entry["rows"] for name, entry in manifest["tables"].items()}
    return BackupSummary(path, revision, rows, len(manifest["photos"]))


def read_manifest(archive_path: str | os.PathLike) -> dict:
    """The manifest of an archive (its first member only is read)."""
    archive = _open_archive(Path(archive_path).expanduser())
    archive.close()
    return archive.manifest
