"""What the catalogue store answers: individuals with their sightings, species counts, flags, and the rows a
replica's index and caches are built from. :class:`CatalogueReads` is a part of
:class:`~animal_reid.serve.store.Catalogue` (which supplies ``engine`` and ``photo_dir``); the module functions
are the per-session pieces the store's writes use too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from animal_reid.serve import changelog
from animal_reid.serve.changes import digest_sql
from animal_reid.serve.schema import (
    PHOTO_URL,
    Change,
    Encounter,
    Flag,
    Individual,
    IndividualAlias,
    NotFound,
    Photo,
    Sighting,
    encounter_dict,
    encounter_key_sql,
    flag_dict,
    iso,
    sighting_dict,
)
from animal_reid.serve.settings import species_key

CHUNK = 500  # ids per IN (...) list
FORMAT_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


@dataclass(frozen=True)
class Touched:
    """What a stretch of the change log names: its number of rows, the sightings and the individuals (for an
    ``individual.*`` change also ``other_id``: the individual merged into another)."""

    changes: int
    sighting_ids: frozenset[int]
    individual_ids: frozenset[int]


@dataclass(frozen=True)
class FollowState:
    """What a replica's index and caches are derived from (no embeddings), read in one snapshot: sightings'
    individual and species (split by whether this replica's model made the embedding) and individuals' species
    and name: every one (``touched`` None), or those the change-log rows after a seq name (``touched``); with
    the change log's newest seq and the content digest (:func:`~animal_reid.serve.changes.digest_sql`; None
    where there is none) of that snapshot."""

    sightings: dict[int, tuple[int, str]]
    other_model: dict[int, tuple[int, str]]
    individuals: dict[int, tuple[str, str]]
    seq: int = 0
    digest: tuple | None = None
    touched: Touched | None = None

    @property
    def names(self) -> dict[int, str]:
        return {i: name for i, (_, name) in self.individuals.items()}


@dataclass(frozen=True)
class IndexRows:
    """Every sighting's embedding, for rebuilding the search index."""

    sighting_ids: np.ndarray
    individual_ids: np.ndarray
    species: list[str]
    embeddings: np.ndarray


def get_or_404(s: Session, model: type, key: int, what: str):
    """The row of ``model`` with primary key ``key``; NotFound ("sighting 7 is not in the catalogue")."""
    row = s.get(model, key)
    if row is None:
        raise NotFound(f"{what} {key} is not in the catalogue")
    return row


def _chunks(ids: list[int]):
    for i in range(0, len(ids), CHUNK):
        yield ids[i : i + CHUNK]


def _sighting_stats(s: Session, ids: list[int]) -> dict[int, tuple]:
    """{individual id: (sightings, encounters, first taken_at, last taken_at, first sighting id)}; sightings
    with no encounter count as one per day (:func:`encounter_key_sql`)."""
    q = sa.select(
        Sighting.individual_id, sa.func.count(), sa.func.count(encounter_key_sql().distinct()),
        sa.func.min(Sighting.taken_at), sa.func.max(Sighting.taken_at), sa.func.min(Sighting.id),
    ).group_by(Sighting.individual_id)  # fmt: skip
    out = {}
    for part in _chunks(ids):
        out.update((int(r[0]), tuple(r[1:])) for r in s.execute(q.where(Sighting.individual_id.in_(part))))
    return out


def aliases_of(s: Session, ids: list[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = defaultdict(list)
    q = sa.select(IndividualAlias.individual_id, IndividualAlias.alias).order_by(IndividualAlias.id)
    for part in _chunks(ids):
        for iid, alias in s.execute(q.where(IndividualAlias.individual_id.in_(part))):
            out[int(iid)].append(alias)
    return out


def individual_dicts(s: Session, individuals: list[Individual]) -> list[dict]:
    """The API's view of individuals: with aliases, counts, first and last dated sighting, and a cover photo
    (the first sighting filed)."""
    ids = [i.id for i in individuals]
    stats, aliases = _sighting_stats(s, ids), aliases_of(s, ids)
    first_ids = [st[4] for st in stats.values()]
    covers = {}
    for part in _chunks(first_ids):
        covers.update(
            s.execute(sa.select(Sighting.id, Sighting.photo_sha256).where(Sighting.id.in_(part))).all()
        )
    out = []
    for ind in individuals:
        n, n_enc, first, last, cover_id = stats.get(ind.id, (0, 0, None, None, None))
        cover = (
            None if cover_id is None else {"sighting_id": cover_id, "url": PHOTO_URL.format(covers[cover_id])}
        )
        out.append({
            "id": ind.id, "name": ind.name, "species": ind.species, "notes": ind.notes,
            "aliases": aliases.get(ind.id, []), "n_sightings": int(n), "n_encounters": int(n_enc or 0),
            "first_seen": first, "last_seen": last, "created_at": iso(ind.created_at), "cover": cover,
        })  # fmt: skip
    return out


def individual_dict(s: Session, ind: Individual) -> dict:
    return individual_dicts(s, [ind])[0]


def _matching(species: str | None, q: str | None):
    """The WHERE clause of an individuals search: of ``species``, name or an alias containing ``q``."""
    where = sa.true()
    if species is not None:
        where = where & (Individual.species == species_key(species))
    if q and q.strip():
        pattern = "%" + q.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        alias = sa.select(IndividualAlias.individual_id).where(
            sa.func.lower(IndividualAlias.alias).like(pattern, escape="\\")
        )
        where = where & (sa.func.lower(Individual.name).like(pattern, escape="\\") | Individual.id.in_(alias))
    return where


def _follow_rows(s: Session, model_id: str, preprocessing_key: str, wheres: list) -> tuple[dict, dict]:
    """({sighting id: (individual id, species)} embedded by this model, the same for the others) of the
    sightings matching any of ``wheres``."""
    mine = (Sighting.model_id == model_id) & (Sighting.preprocessing_key == preprocessing_key)
    q = sa.select(Sighting.id, Sighting.individual_id, Individual.species, mine).join(
        Individual, Individual.id == Sighting.individual_id
    )
    sightings: dict[int, tuple[int, str]] = {}
    other: dict[int, tuple[int, str]] = {}
    for where in wheres:
        for sid, iid, species, is_mine in s.execute(q.where(where)):
            (sightings if is_mine else other)[int(sid)] = (int(iid), species)
    return sightings, other


def _individual_rows(s: Session, wheres: list) -> dict[int, tuple[str, str]]:
    q = sa.select(Individual.id, Individual.species, Individual.name)
    return {int(i): (sp, name) for where in wheres for i, sp, name in s.execute(q.where(where))}


@contextmanager
def _snapshot(engine: sa.Engine) -> Iterator[Session]:
    """A read-only session whose statements all see one snapshot of the catalogue."""
    with Session(engine) as s, s.begin():
        if engine.dialect.name == "postgresql":
            s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        elif (
            engine.dialect.name == "sqlite" and not s.connection().connection.dbapi_connection.in_transaction
        ):
            s.connection().exec_driver_sql("BEGIN")  # pysqlite starts none for reads
        yield s


def _seq_and_digest(s: Session) -> tuple[int, tuple | None]:
    sql = digest_sql(s.get_bind().dialect.name)
    if sql is None:
        return changelog.last_seq(s), None
    row = [int(v) for v in s.execute(sa.text(sql)).one()]
    return row[0], tuple(row[1:])


def _touched(s: Session, after_seq: int, upto_seq: int, limit: int) -> Touched | None:
    """What the change-log rows with ``after_seq < seq <= upto_seq`` name; None when they cannot be read
    (see :meth:`CatalogueReads.follow_changes`)."""
    if upto_seq < after_seq:
        return None
    q = (
        sa.select(Change.seq, Change.kind, Change.individual_id, Change.sighting_id, Change.other_id)
        .where((Change.seq > after_seq) & (Change.seq <= upto_seq))
        .order_by(Change.seq)
        .limit(limit + 1)
    )
    rows = s.execute(q).all() if upto_seq > after_seq else []
    if len(rows) > limit or (rows[-1].seq if rows else after_seq) != upto_seq:
        return None
    sightings = {r.sighting_id for r in rows if r.sighting_id is not None}
    individuals = {r.individual_id for r in rows if r.individual_id is not None}
    individuals |= {r.other_id for r in rows if r.other_id is not None and r.kind.startswith("individual.")}
    return Touched(len(rows), frozenset(sightings), frozenset(individuals))


class CatalogueReads:
    """The store's read-only calls (one snapshot each); mixed into :class:`~animal_reid.serve.store.Catalogue`."""

    engine: sa.Engine
    photo_dir: Path

    def photo_path(self, sha256: str, fmt: str) -> Path:
        """Where the photo with this content hash and format is kept (``<dir>/ab/ab12....jpg``)."""
        return self.photo_dir / sha256[:2] / f"{sha256}.{FORMAT_EXT.get(fmt, 'bin')}"

    # --- the change log ----------------------------------------------------------------------------------
    def list_changes(
        self, after_seq: int = 0, limit: int = 100, individual_id: int | None = None
    ) -> list[dict]:
        """Changes after ``after_seq``, oldest first (see :func:`changelog.list_changes`)."""
        with Session(self.engine) as s:
            return changelog.list_changes(s, after_seq, limit, individual_id)

    def changes_page(self, after_seq: int = 0, limit: int = 100, individual_id: int | None = None) -> dict:
        """``{"changes": [...], "last_seq": n}``: the newest seq, then the changes after ``after_seq`` up to it
        (read in that order, so a client asking again with ``after=`` its last change's seq misses nothing)."""
        with Session(self.engine) as s:
            last = changelog.last_seq(s)
            changes = changelog.list_changes(s, after_seq, limit, individual_id, upto=last)
            return {"changes": changes, "last_seq": last}

    def last_seq(self) -> int:
        with Session(self.engine) as s:
            return changelog.last_seq(s)

    # --- individuals ----------------------------------------------------------------------------------------
    def list_individuals(
        self, species: str | None = None, q: str | None = None, limit: int | None = None, offset: int = 0
    ) -> list[dict]:
        """Individuals (of ``species``; name or alias containing ``q``, any case) by name, from ``offset``."""
        with Session(self.engine) as s:
            query = sa.select(Individual).where(_matching(species, q))
            query = query.order_by(sa.func.lower(Individual.name), Individual.id).offset(offset).limit(limit)
            return individual_dicts(s, list(s.scalars(query)))

    def count_individuals(self, species: str | None = None, q: str | None = None) -> int:
        with Session(self.engine) as s:
            return int(
                s.scalar(sa.select(sa.func.count()).select_from(Individual).where(_matching(species, q)))
            )

    def get_individual(self, individual_id: int) -> dict:
        """The individual with its sightings, oldest ``taken_at`` first (undated ones last, in filing order)."""
        with Session(self.engine) as s:
            ind = get_or_404(s, Individual, individual_id, "individual")
            undated = sa.case((Sighting.taken_at.is_(None), 1), else_=0)
            rows = s.scalars(
                sa.select(Sighting)
                .where(Sighting.individual_id == individual_id)
                .order_by(undated, Sighting.taken_at, Sighting.id)
            ).all()
            return {**individual_dict(s, ind), "sightings": [sighting_dict(r) for r in rows]}

    def get_sighting(self, sighting_id: int) -> dict:
        """The sighting, with its individual's species and name."""
        with Session(self.engine) as s:
            row = get_or_404(s, Sighting, sighting_id, "sighting")
            ind = s.get(Individual, row.individual_id)
            return {**sighting_dict(row), "species": ind.species, "individual_name": ind.name}

    def get_encounter(self, encounter_id: int) -> dict:
        """The encounter with the ids of its sightings."""
        with Session(self.engine) as s:
            enc = get_or_404(s, Encounter, encounter_id, "encounter")
            q = sa.select(Sighting.id).where(Sighting.encounter_id == encounter_id).order_by(Sighting.id)
            return {**encounter_dict(enc), "sighting_ids": [int(i) for i in s.scalars(q)]}

    def species(self) -> list[str]:
        with Session(self.engine) as s:
            return sorted(s.scalars(sa.select(Individual.species).distinct()))

    def species_counts(self) -> dict[str, tuple[int, int]]:
        """{species: (individuals, sightings)} for every species in the catalogue."""
        with Session(self.engine) as s:
            n_sightings = (
                sa.select(Sighting.individual_id, sa.func.count().label("n"))
                .group_by(Sighting.individual_id)
                .subquery()
            )
            q = (
                sa.select(
                    Individual.species, sa.func.count(), sa.func.coalesce(sa.func.sum(n_sightings.c.n), 0)
                )
                .outerjoin(n_sightings, n_sightings.c.individual_id == Individual.id)
                .group_by(Individual.species)
            )
            return {sp: (int(n_ind), int(n_sig)) for sp, n_ind, n_sig in s.execute(q)}

    def list_flags(self, open_only: bool = True) -> list[dict]:
        """Flags for a reviewer (only those not resolved yet when ``open_only``), oldest first."""
        with Session(self.engine) as s:
            q = sa.select(Flag).order_by(Flag.id)
            if open_only:
                q = q.where(Flag.resolved_at.is_(None))
            return [flag_dict(f) for f in s.scalars(q)]

    # --- photos and what the index is built from ----------------------------------------------------------
    def find_photo(self, sha256: str) -> tuple[Path, str]:
        """The file and format of a stored photo; NotFound when no sighting ever stored it."""
        with Session(self.engine) as s:
            photo = s.get(Photo, sha256)
            if photo is None:
                raise NotFound(f"photo {sha256} is not in the catalogue")
            return self.photo_path(sha256, photo.format), photo.format

    def sighting_pairs(self) -> list[tuple[int, int]]:
        """(sighting id, individual id) of every sighting, in id order."""
        with Session(self.engine) as s:
            q = sa.select(Sighting.id, Sighting.individual_id).order_by(Sighting.id)
            return [(int(a), int(b)) for a, b in s.execute(q)]

    def describe(self, individual_ids: list[int], sighting_ids: list[int]) -> tuple[dict, dict]:
        """({individual id: name}, {sighting id: photo sha256}) for the ids given."""
        with Session(self.engine) as s:
            names = s.execute(
                sa.select(Individual.id, Individual.name).where(Individual.id.in_(individual_ids))
            )
            photos = s.execute(
                sa.select(Sighting.id, Sighting.photo_sha256).where(Sighting.id.in_(sighting_ids))
            )
            return dict(names.all()), dict(photos.all())

    def stale_sightings(
        self, model_id: str, preprocessing_key: str
    ) -> list[tuple[int, Path, list | None, float]]:
        """Sightings embedded by another model or preprocessing: (id, photo file, box, theta) to re-embed."""
        with Session(self.engine) as s:
            q = (
                sa.select(Sighting, Photo.format)
                .join(Photo, Photo.sha256 == Sighting.photo_sha256)
                .where((Sighting.model_id != model_id) | (Sighting.preprocessing_key != preprocessing_key))
            )
            return [(r.id, self.photo_path(r.photo_sha256, fmt), r.box, r.theta) for r, fmt in s.execute(q)]

    def follow_state(self, model_id: str, preprocessing_key: str) -> FollowState:
        """Every sighting's (individual, species) and every individual's (species, name), in one snapshot."""
        with _snapshot(self.engine) as s:
            seq, digest = _seq_and_digest(s)
            sightings, other = _follow_rows(s, model_id, preprocessing_key, [sa.true()])
            individuals = _individual_rows(s, [sa.true()])
        return FollowState(sightings, other, individuals, seq, digest)

    def follow_changes(
        self, model_id: str, preprocessing_key: str, after_seq: int, limit: int
    ) -> FollowState | None:
        """:meth:`follow_state` of what the change-log rows after ``after_seq`` name only: their sightings and
        every sighting of their individuals, and their individuals (those still in the catalogue); in one
        snapshot. None when that stretch of the log cannot be read: it went back (a restore), its newest row
        is missing, or it holds more than ``limit`` rows."""
        with _snapshot(self.engine) as s:
            seq, digest = _seq_and_digest(s)
            touched = _touched(s, after_seq, seq, limit)
            if touched is None:
                return None
            sids, iids = sorted(touched.sighting_ids), sorted(touched.individual_ids)
            where = [Sighting.id.in_(part) for part in _chunks(sids)]
            where += [Sighting.individual_id.in_(part) for part in _chunks(iids)]
            sightings, other = _follow_rows(s, model_id, preprocessing_key, where)
            individuals = _individual_rows(s, [Individual.id.in_(part) for part in _chunks(iids)])
        return FollowState(sightings, other, individuals, seq, digest, touched)

    def individual_rows(self) -> dict[int, tuple[str, str]]:
        """{id: (species, name)} of every individual."""
        with Session(self.engine) as s:
            return _individual_rows(s, [sa.true()])

    def embeddings(self, sighting_ids: list[int]) -> dict[int, np.ndarray]:
        """{sighting id: stored embedding} for those of ``sighting_ids`` still in the catalogue."""
        out: dict[int, np.ndarray] = {}
        with Session(self.engine) as s:
            for part in _chunks(sighting_ids):
                q = sa.select(Sighting.id, Sighting.embedding).where(Sighting.id.in_(part))
                out.update((int(sid), np.frombuffer(emb, dtype=np.float32)) for sid, emb in s.execute(q))
        return out

    def photo_files(self, sighting_ids: list[int]) -> dict[int, tuple[Path, list | None, float]]:
        """{sighting id: (photo file, box, theta)} for those of ``sighting_ids`` still in the catalogue."""
        with Session(self.engine) as s:
            q = (
                sa.select(Sighting.id, Sighting.photo_sha256, Photo.format, Sighting.box, Sighting.theta)
                .join(Photo, Photo.sha256 == Sighting.photo_sha256)
                .where(Sighting.id.in_(sighting_ids))
            )
            return {
                int(sid): (self.photo_path(sha, fmt), box, theta)
                for sid, sha, fmt, box, theta in s.execute(q)
            }

    def index_rows(self) -> IndexRows:
        """Every sighting's (id, individual, species, embedding), in id order, read in one transaction."""
        with Session(self.engine) as s:
            q = (
                sa.select(Sighting.id, Sighting.individual_id, Individual.species, Sighting.embedding)
                .join(Individual, Individual.id == Sighting.individual_id)
                .order_by(Sighting.id)
            )
            rows = s.execute(q).all()
        emb = [np.frombuffer(r[3], dtype=np.float32) for r in rows]
        dim = emb[0].size if emb else 0
        return IndexRows(
            sighting_ids=np.array([r[0] for r in rows], dtype=np.int64),
            individual_ids=np.array([r[1] for r in rows], dtype=np.int64),
            species=[r[2] for r in rows],
            embeddings=np.stack(emb) if emb else np.zeros((0, dim), np.float32),
        )
