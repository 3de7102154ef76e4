"""The catalogue store: individuals, their sightings and embeddings, in SQLite (default) or PostgreSQL.

Each public method of :class:`Catalogue` is one transaction, and every write appends its change-log rows
(:mod:`animal_reid.serve.changelog`: who, what, before and after) in that same transaction, under the
catalogue's write lock. Embeddings are stored as float32 bytes with the model id and preprocessing key they
came from; photos are stored content-addressed (``<sha256>.<ext>``) in ``photo_dir``, written (fsynced, renamed
into place) before the row that names them is committed, so a crash leaves at worst an unreferenced photo file,
never a sighting without its photo; deletes keep the files. Names are unique per species, case-insensitively; a
photo already filed for an individual is refused for it, and filed with a flag for another. The tables are in
:mod:`~animal_reid.serve.schema`, the reads in :mod:`~animal_reid.serve.store_reads`; the schema is versioned
with Alembic (``migrations/``) and :meth:`Catalogue.migrate` brings a database to the newest revision.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from animal_reid.serve import changelog
from animal_reid.serve.changes import register_sqlite_functions
from animal_reid.serve.schema import (  # noqa: F401  (re-exported: the store's public names)
    TEXT_FIELDS,
    TEXT_LIMITS,
    Base,
    Conflict,
    Encounter,
    Flag,
    Individual,
    IndividualAlias,
    Invalid,
    NewPhoto,
    NotFound,
    Photo,
    SamePhoto,
    Sighting,
    SightingMeta,
    check_fields,
    checked_place,
    clean_aliases,
    clean_name,
    clean_text,
    encounter_dict,
    flag_dict,
    name_key,
    now,
    photo_exif,
    place_fields,
    sighting_dict,
    when_text,
)
from animal_reid.serve.settings import species_key
from animal_reid.serve.store_reads import (  # noqa: F401  (re-exported)
    FORMAT_EXT,
    CatalogueReads,
    FollowState,
    IndexRows,
    Touched,
    aliases_of,
    get_or_404,
    individual_dict,
)

MIGRATIONS = Path(__file__).with_name("migrations")
INDIVIDUAL_FIELDS = ("name", "notes", "aliases")
SIGHTING_FIELDS = ("taken_at", "lat", "lon", *TEXT_FIELDS, "encounter_id")
ENCOUNTER_FIELDS = ("started_at", "ended_at", "site", "lat", "lon", "observer", "notes")


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cur.execute("PRAGMA synchronous=FULL")  # a commit survives power loss, not only a killed process
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()
    register_sqlite_functions(dbapi_conn)  # the replicas' content digest


def default_photo_dir(url: str) -> Path:
    """``<database>.photos`` beside a SQLite file; other databases need an explicit photo directory."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        raise ValueError(f"catalogue {parsed.render_as_string()} needs a photo directory (--photos DIR)")
    return Path(parsed.database).with_suffix(".photos")


def _state(s: Session, ind: Individual) -> dict:
    """An individual as the change log keeps it."""
    return {"id": ind.id, "name": ind.name, "species": ind.species, "notes": ind.notes,
            "aliases": aliases_of(s, [ind.id]).get(ind.id, [])}  # fmt: skip


class Catalogue(CatalogueReads):
    """Individuals and sightings in a SQL database (``url``), photos in ``photo_dir``."""

    def __init__(self, url: str, photo_dir: str | os.PathLike | None = None):
        self.url = url
        self.photo_dir = Path(photo_dir) if photo_dir is not None else default_photo_dir(url)
        self.photo_dir.mkdir(parents=True, exist_ok=True)
        is_sqlite = sa.make_url(url).get_backend_name() == "sqlite"
        self.engine = sa.create_engine(url, pool_pre_ping=not is_sqlite)
        if is_sqlite:
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)

    @property
    def shown_url(self) -> str:
        """The URL for messages and logs: any password masked."""
        return self.engine.url.render_as_string(hide_password=True)

    def migrate(self, revision: str = "head") -> None:
        """Bring the schema to the newest Alembic revision (or to ``revision``)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)

    def revision(self) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError:
            return False
        return True

    def close(self) -> None:
        self.engine.dispose()

    def write_photo(self, photo: NewPhoto) -> Path:
        """Store ``photo`` content-addressed (fsynced, renamed into place; kept if already there): its file."""
        path = self.photo_path(photo.sha256, photo.format)
        if path.is_file():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as f:
            f.write(photo.data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    # --- individuals --------------------------------------------------------------------------------------
    def _check_name(self, s: Session, species: str, name: str, except_id: int | None = None) -> None:
        """Conflict when another individual of ``species`` has ``name`` (any case); in the write transaction."""
        key = name_key(name)
        for iid, other in s.execute(
            sa.select(Individual.id, Individual.name).where(Individual.species == species)
        ):
            if iid != except_id and name_key(other) == key:
                raise Conflict(f"there is already a {species} named {other} (individual {iid})")

    def _set_aliases(self, s: Session, ind: Individual, aliases) -> None:
        s.execute(sa.delete(IndividualAlias).where(IndividualAlias.individual_id == ind.id))
        s.add_all(IndividualAlias(individual_id=ind.id, alias=a) for a in clean_aliases(aliases))

    def _new_individual(
        self, s: Session, actor: str, name: str, species: str, notes="", aliases=()
    ) -> Individual:
        species = species_key(species)
        name = clean_name(name)
        self._check_name(s, species, name)
        ind = Individual(name=name, species=species, notes=clean_text("notes", notes), created_at=now())
        s.add(ind)
        s.flush()
        self._set_aliases(s, ind, aliases)
        s.flush()
        changelog.record(s, actor, "individual.create", individual_id=ind.id, after=_state(s, ind))
        return ind

    def create_individual(
        self, name: str, species: str, notes: str = "", aliases=(), actor: str = "operator"
    ) -> dict:
        """A new individual; Conflict when its species already has one of that name (any case)."""
        with changelog.write_session(self.engine) as s:
            return individual_dict(s, self._new_individual(s, actor, name, species, notes, aliases))

    def update_individual(self, individual_id: int, actor: str, **fields) -> dict:
        """Change an individual's ``name``, ``notes`` and/or ``aliases`` (the list replaces the old one)."""
        check_fields(fields, INDIVIDUAL_FIELDS, f"individual {individual_id}")
        with changelog.write_session(self.engine) as s:
            ind = get_or_404(s, Individual, individual_id, "individual")
            before = _state(s, ind)
            if "name" in fields:
                ind.name = clean_name(fields["name"])
                self._check_name(s, ind.species, ind.name, except_id=ind.id)
            if "notes" in fields:
                ind.notes = clean_text("notes", fields["notes"])
            if "aliases" in fields:
                self._set_aliases(s, ind, fields["aliases"])
            s.flush()
            after = _state(s, ind)
            if after != before:
                changelog.record(
                    s, actor, "individual.update", individual_id=ind.id, before=before, after=after
                )
            return individual_dict(s, ind)

    def delete_individual(self, individual_id: int, actor: str) -> dict:
        """Delete an individual and its sightings (each logged with what it was; photo files are kept):
        ``{"deleted": individual, "sightings": n, "sighting_ids": [...]}``."""
        with changelog.write_session(self.engine) as s:
            ind = get_or_404(s, Individual, individual_id, "individual")
            shown = individual_dict(s, ind)
            rows = s.scalars(sa.select(Sighting).where(Sighting.individual_id == individual_id)).all()
            for row in rows:
                changelog.record(s, actor, "sighting.delete", individual_id=individual_id, sighting_id=row.id,
                                 before=sighting_dict(row))  # fmt: skip
            ids = [r.id for r in rows]
            s.execute(sa.delete(Sighting).where(Sighting.individual_id == individual_id))
            changelog.record(s, actor, "individual.delete", individual_id=individual_id,
                             before={**_state(s, ind), "sighting_ids": ids})  # fmt: skip
            s.execute(sa.delete(IndividualAlias).where(IndividualAlias.individual_id == individual_id))
            s.execute(sa.delete(Individual).where(Individual.id == individual_id))
            self._close_flags(s, actor, (Flag.individual_id == individual_id) | Flag.sighting_id.in_(ids))
            return {"deleted": shown, "sightings": len(ids), "sighting_ids": ids}

    def merge(self, source_id: int, target_id: int, actor: str = "operator") -> dict:
        """Move every sighting and alias of ``source_id`` to ``target_id`` (the source's name becomes an alias,
        its notes are appended) and delete ``source_id``; returns the target."""
        if source_id == target_id:
            raise Conflict(f"cannot merge individual {source_id} into itself")
        with changelog.write_session(self.engine) as s:
            src = get_or_404(s, Individual, source_id, "individual")
            dst = get_or_404(s, Individual, target_id, "individual")
            if src.species != dst.species:
                raise Conflict(
                    f"individual {source_id} is a {src.species!r}, {target_id} a {dst.species!r}: "
                    "only individuals of one species can be merged"
                )
            before = {"source": _state(s, src), "target": _state(s, dst)}
            s.execute(
                sa.update(Sighting).where(Sighting.individual_id == source_id).values(individual_id=target_id)
            )
            s.execute(sa.update(Flag).where(Flag.individual_id == source_id).values(individual_id=target_id))
            names = [a for a in before["target"]["aliases"] + [src.name] + before["source"]["aliases"]
                     if name_key(a) != name_key(dst.name)]  # fmt: skip
            s.execute(sa.delete(IndividualAlias).where(IndividualAlias.individual_id == source_id))
            self._set_aliases(s, dst, names)
            if src.notes:
                dst.notes = f"{dst.notes}\n{src.notes}".strip()
            s.execute(sa.delete(Individual).where(Individual.id == source_id))
            s.flush()
            changelog.record(s, actor, "individual.merge", individual_id=target_id, other_id=source_id,
                             before=before, after=_state(s, dst))  # fmt: skip
            self._flag_repeated_photos(s, dst)
            return individual_dict(s, dst)

    # --- flags --------------------------------------------------------------------------------------------
    def _close_flags(self, s: Session, actor: str, where) -> None:
        s.execute(
            sa.update(Flag)
            .where(where & Flag.resolved_at.is_(None))
            .values(resolved_at=now(), resolved_by=actor)
        )

    def _flag_repeated_photos(self, s: Session, ind: Individual) -> None:
        """A flag on each sighting of ``ind`` whose photo an earlier sighting of ``ind`` already has."""
        first: dict[str, int] = {}
        q = sa.select(Sighting).where(Sighting.individual_id == ind.id).order_by(Sighting.id)
        for row in s.scalars(q):
            if row.photo_sha256 not in first:
                first[row.photo_sha256] = row.id
                continue
            other = first[row.photo_sha256]
            row.flag = detail = f"same photo as sighting {other} of {ind.name}"
            q = sa.select(Flag).where(
                (Flag.sighting_id == row.id) & (Flag.other_id == other) & Flag.resolved_at.is_(None)
            )
            flag = s.scalars(q).first()  # "photo elsewhere" before a merge: now the same individual's
            if flag is None:
                flag = Flag(individual_id=ind.id, sighting_id=row.id, other_id=other, created_at=now())
                s.add(flag)
            flag.kind, flag.detail = "duplicate_photo", detail

    def resolve_flag(self, flag_id: int, actor: str) -> dict:
        """Mark a flag looked at (its sighting's ``flag`` text is cleared); Conflict when it already was."""
        with changelog.write_session(self.engine) as s:
            flag = get_or_404(s, Flag, flag_id, "flag")
            if flag.resolved_at is not None:
                raise Conflict(f"flag {flag_id} was already resolved by {flag.resolved_by}")
            before = flag_dict(flag)
            flag.resolved_at, flag.resolved_by = now(), actor
            row = s.get(Sighting, flag.sighting_id) if flag.sighting_id is not None else None
            if row is not None and row.flag == flag.detail:
                row.flag = None
            s.flush()
            changelog.record(s, actor, "flag.resolve", individual_id=flag.individual_id, sighting_id=flag.sighting_id,
                             other_id=flag.id, before=before, after=flag_dict(flag))  # fmt: skip
            return flag_dict(flag)

    # --- sightings ----------------------------------------------------------------------------------------
    def _meta_fields(self, meta: SightingMeta | None, data: bytes) -> dict:
        """The sighting's metadata columns, checked; the photo's EXIF date-time and place where none is given."""
        meta = meta or SightingMeta()
        taken_at = when_text(meta.taken_at)
        lat, lon = checked_place(meta.lat, meta.lon)
        if taken_at is None or lat is None:
            exif_when, exif_lat, exif_lon = photo_exif(data)
            taken_at = taken_at or exif_when
            if lat is None and exif_lat is not None and exif_lon is not None:
                lat, lon = exif_lat, exif_lon
        return {
            "taken_at": taken_at,
            "lat": lat,
            "lon": lon,
            **{f: clean_text(f, getattr(meta, f)) for f in TEXT_FIELDS},
        }

    def _encounter_for(self, s: Session, encounter_id: int | None, ind: Individual) -> None:
        if encounter_id is not None:
            enc = get_or_404(s, Encounter, encounter_id, "encounter")
            if enc.species != ind.species:
                raise Conflict(f"encounter {encounter_id} is of {enc.species}, {ind.name} a {ind.species}")

    def _photo_elsewhere(self, s: Session, sha: str, ind: Individual) -> tuple[int, str] | None:
        """SamePhoto when ``ind`` has a sighting of this photo; (the first sighting of it, the flag saying so)
        when another individual has; None when the photo is new."""
        q = (
            sa.select(Sighting.id, Sighting.individual_id)
            .where(Sighting.photo_sha256 == sha)
            .order_by(Sighting.id)
        )
        same = s.execute(q).all()
        mine = [sid for sid, iid in same if iid == ind.id]
        if mine:
            raise SamePhoto(f"already a sighting of {ind.name} (sighting {mine[0]})")
        if not same:
            return None
        return same[0][0], f"same photo as sighting {same[0][0]} of {s.get(Individual, same[0][1]).name}"

    def add_sighting(
        self,
        individual_id: int | None,
        photo: NewPhoto,
        embedding: np.ndarray,
        model_id: str,
        preprocessing_key: str,
        box: list[float] | None = None,
        theta: float = 0.0,
        new_individual: dict | None = None,
        meta: SightingMeta | None = None,
        encounter_id: int | None = None,
        actor: str = "operator",
    ) -> dict:
        """Record ``photo`` as a sighting of ``individual_id``, or of a new individual (``new_individual``:
        name, species, notes, aliases) created in the same transaction. Returns the sighting plus its species
        and individual's name. The same photo already a sighting of this individual: Conflict; of another one:
        filed, with a ``flag`` naming that sighting and a ``photo_elsewhere`` flag."""
        if (individual_id is None) == (new_individual is None):
            raise ValueError("give either an individual id or a new individual, not both or neither")
        emb = np.ascontiguousarray(embedding, dtype=np.float32).reshape(-1)
        fields = self._meta_fields(meta, photo.data)
        self.write_photo(photo)
        sha = photo.sha256
        with changelog.write_session(self.engine) as s:
            if individual_id is None:
                ind = self._new_individual(s, actor, **new_individual)
            else:
                ind = get_or_404(s, Individual, individual_id, "individual")
            elsewhere = self._photo_elsewhere(s, sha, ind)
            self._encounter_for(s, encounter_id, ind)
            if s.get(Photo, sha) is None:
                s.add(Photo(sha256=sha, format=photo.format, width=photo.width, height=photo.height,
                            n_bytes=len(photo.data)))  # fmt: skip
            flag = None if elsewhere is None else elsewhere[1]
            row = Sighting(
                individual_id=ind.id, photo_sha256=sha, box=box, theta=float(theta), embedding=emb.tobytes(),
                dim=emb.size, model_id=model_id, preprocessing_key=preprocessing_key, created_at=now(),
                encounter_id=encounter_id, created_by=actor, flag=flag, **fields,
            )  # fmt: skip
            s.add(row)
            s.flush()
            if elsewhere is not None:
                s.add(Flag(kind="photo_elsewhere", individual_id=ind.id, sighting_id=row.id, other_id=elsewhere[0],
                           detail=flag, created_at=now()))  # fmt: skip
            changelog.record(
                s, actor, "sighting.add", individual_id=ind.id, sighting_id=row.id, after=sighting_dict(row)
            )
            return {**sighting_dict(row), "species": ind.species, "individual_name": ind.name}

    def update_sighting(self, sighting_id: int, actor: str, **fields) -> dict:
        """Change a sighting's metadata (``taken_at``, ``lat``, ``lon``, ``site``, ``viewpoint``, ``observer``,
        ``notes``, ``encounter_id``); returns it."""
        check_fields(fields, SIGHTING_FIELDS, f"sighting {sighting_id}")
        with changelog.write_session(self.engine) as s:
            row = get_or_404(s, Sighting, sighting_id, "sighting")
            before = sighting_dict(row)
            values = {f: clean_text(f, fields[f]) for f in TEXT_FIELDS if f in fields}
            values |= place_fields(fields, (row.lat, row.lon))
            if "taken_at" in fields:
                values["taken_at"] = when_text(fields["taken_at"])
            if "encounter_id" in fields:
                self._encounter_for(s, fields["encounter_id"], s.get(Individual, row.individual_id))
                values["encounter_id"] = fields["encounter_id"]
            for key, value in values.items():
                setattr(row, key, value)
            s.flush()
            after = sighting_dict(row)
            if after != before:
                changelog.record(s, actor, "sighting.update", individual_id=row.individual_id, sighting_id=row.id,
                                 before=before, after=after)  # fmt: skip
            return after

    def delete_sighting(self, sighting_id: int, actor: str = "operator") -> dict:
        """Delete a sighting (logged with what it was; its photo file is kept); returns it."""
        with changelog.write_session(self.engine) as s:
            row = get_or_404(s, Sighting, sighting_id, "sighting")
            out = sighting_dict(row)
            changelog.record(s, actor, "sighting.delete", individual_id=row.individual_id, sighting_id=row.id,
                             before=out)  # fmt: skip
            s.delete(row)
            self._close_flags(s, actor, Flag.sighting_id == sighting_id)
            return out

    def update_embedding(self, sighting_id: int, embedding: np.ndarray, model_id: str, key: str) -> None:
        """Re-embedded by another model (derived data: not logged)."""
        emb = np.ascontiguousarray(embedding, dtype=np.float32).reshape(-1)
        with Session(self.engine) as s, s.begin():
            row = s.get(Sighting, sighting_id)
            if row is not None:
                row.embedding, row.dim, row.model_id, row.preprocessing_key = (
                    emb.tobytes(),
                    emb.size,
                    model_id,
                    key,
                )

    # --- encounters ---------------------------------------------------------------------------------------
    def _encounter_values(self, fields: dict, current: tuple = (None, None)) -> dict:
        values = {f: when_text(fields[f], f) for f in ("started_at", "ended_at") if f in fields}
        values |= {f: clean_text(f, fields[f]) for f in ("site", "observer", "notes") if f in fields}
        return values | place_fields(fields, current)

    def create_encounter(self, species: str, actor: str, **fields) -> dict:
        """A new encounter of ``species`` (``started_at``, ``ended_at``, ``site``, ``lat``, ``lon``, ``observer``,
        ``notes``); logged as ``encounter.create`` with the encounter's id as ``other_id``."""
        check_fields(fields, ENCOUNTER_FIELDS, "encounter")
        with changelog.write_session(self.engine) as s:
            enc = Encounter(species=species_key(species), created_at=now(), created_by=actor,
                            **{"site": "", "observer": "", "notes": "", **self._encounter_values(fields)})  # fmt: skip
            s.add(enc)
            s.flush()
            changelog.record(s, actor, "encounter.create", other_id=enc.id, after=encounter_dict(enc))
            return {**encounter_dict(enc), "sighting_ids": []}

    def update_encounter(self, encounter_id: int, actor: str, **fields) -> dict:
        """Change an encounter's ``started_at``, ``ended_at``, ``site``, ``lat``, ``lon``, ``observer`` or
        ``notes``; logged as ``encounter.update``. Returns it with its sightings' ids."""
        check_fields(fields, ENCOUNTER_FIELDS, f"encounter {encounter_id}")
        with changelog.write_session(self.engine) as s:
            enc = get_or_404(s, Encounter, encounter_id, "encounter")
            before = encounter_dict(enc)
            for key, value in self._encounter_values(fields, (enc.lat, enc.lon)).items():
                setattr(enc, key, value)
            s.flush()
            if encounter_dict(enc) != before:
                changelog.record(
                    s, actor, "encounter.update", other_id=enc.id, before=before, after=encounter_dict(enc)
                )
            return {**encounter_dict(enc), "sighting_ids": _encounter_sightings(s, encounter_id)}

    def delete_encounter(self, encounter_id: int, actor: str) -> dict:
        """Delete an encounter no sighting is part of (Conflict otherwise); logged as ``encounter.delete``
        with what it was. Returns it."""
        with changelog.write_session(self.engine) as s:
            enc = get_or_404(s, Encounter, encounter_id, "encounter")
            held = _encounter_sightings(s, encounter_id)
            if held:
                listed = ", ".join(map(str, held[:5])) + (", ..." if len(held) > 5 else "")
                raise Conflict(f"encounter {encounter_id} still has {len(held)} sightings ({listed})")
            out = {**encounter_dict(enc), "sighting_ids": []}
            changelog.record(s, actor, "encounter.delete", other_id=encounter_id, before=out)
            s.delete(enc)
            return out


def _encounter_sightings(s: Session, encounter_id: int) -> list[int]:
    q = sa.select(Sighting.id).where(Sighting.encounter_id == encounter_id).order_by(Sighting.id)
    return [int(i) for i in s.scalars(q)]
