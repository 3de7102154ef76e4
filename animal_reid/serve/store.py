"""The catalogue store: individuals, their sightings and embeddings, in SQLite (default) or PostgreSQL.

Each public method of :class:`Catalogue` is one transaction. Embeddings are stored as float32 bytes with the
model id and preprocessing key they came from; photos are stored content-addressed (``<sha256>.<ext>``) in
``photo_dir``, written (fsynced, renamed into place) before the row that names them is committed, so a crash
leaves at worst an unreferenced photo file, never a sighting without its photo. The schema is versioned with
Alembic (``migrations/``); :meth:`Catalogue.migrate` brings a database to the newest revision.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from animal_reid.serve.changes import notify_on_write
from animal_reid.serve.settings import species_key

MIGRATIONS = Path(__file__).with_name("migrations")
FORMAT_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


class Base(DeclarativeBase):
    pass


class Individual(Base):
    __tablename__ = "individuals"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    species: Mapped[str] = mapped_column(sa.String(64), index=True)
    notes: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))


class Photo(Base):
    __tablename__ = "photos"
    sha256: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    format: Mapped[str] = mapped_column(sa.String(16))
    width: Mapped[int]
    height: Mapped[int]
    n_bytes: Mapped[int]


class Sighting(Base):
    __tablename__ = "sightings"
    id: Mapped[int] = mapped_column(primary_key=True)
    individual_id: Mapped[int] = mapped_column(sa.ForeignKey("individuals.id"), index=True)
    photo_sha256: Mapped[str] = mapped_column(sa.ForeignKey("photos.sha256"))
    box: Mapped[list | None] = mapped_column(sa.JSON, nullable=True)
    theta: Mapped[float] = mapped_column(default=0.0)
    embedding: Mapped[bytes] = mapped_column(sa.LargeBinary)
    dim: Mapped[int]
    model_id: Mapped[str] = mapped_column(sa.String(64))
    preprocessing_key: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))


class NotFound(LookupError):
    """A named individual or sighting is not in the catalogue (HTTP 404)."""


class Conflict(ValueError):
    """A change the catalogue refuses, e.g. merging individuals of two species (HTTP 409)."""


@dataclass(frozen=True)
class NewPhoto:
    """A validated upload: its bytes and what the header said."""

    data: bytes
    format: str
    width: int
    height: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class FollowState:
    """What a replica's index and caches are derived from, without embeddings: every sighting's individual and
    species (split by whether this replica's model made its embedding) and every individual's name."""

    sightings: dict[int, tuple[int, str]]
    other_model: dict[int, tuple[int, str]]
    names: dict[int, str]


@dataclass(frozen=True)
class IndexRows:
    """Every sighting's embedding, for rebuilding the search index."""

    sighting_ids: np.ndarray
    individual_ids: np.ndarray
    species: list[str]
    embeddings: np.ndarray


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cur.execute("PRAGMA synchronous=FULL")  # a commit survives power loss, not only a killed process
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def default_photo_dir(url: str) -> Path:
    """``<database>.photos`` beside a SQLite file; other databases need an explicit photo directory."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        raise ValueError(f"catalogue {parsed.render_as_string()} needs a photo directory (--photos DIR)")
    return Path(parsed.database).with_suffix(".photos")


def _individual_dict(ind: Individual, n_sightings: int) -> dict:
    return {
        "id": ind.id,
        "name": ind.name,
        "species": ind.species,
        "notes": ind.notes,
        "n_sightings": n_sightings,
        "created_at": ind.created_at.isoformat(),
    }


def _sighting_dict(s: Sighting) -> dict:
    return {
        "id": s.id,
        "individual_id": s.individual_id,
        "photo": s.photo_sha256,
        "box": s.box,
        "theta": s.theta,
        "model_id": s.model_id,
        "created_at": s.created_at.isoformat(),
    }


class Catalogue:
    """Individuals and sightings in a SQL database (``url``), photos in ``photo_dir``."""

    def __init__(self, url: str, photo_dir: str | os.PathLike | None = None):
        self.url = url
        self.photo_dir = Path(photo_dir) if photo_dir is not None else default_photo_dir(url)
        self.photo_dir.mkdir(parents=True, exist_ok=True)
        is_sqlite = sa.make_url(url).get_backend_name() == "sqlite"
        self.engine = sa.create_engine(url, pool_pre_ping=not is_sqlite)
        if is_sqlite:
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        notify_on_write(self.engine)  # PostgreSQL: other replicas wake up at each commit (changes.py)

    @property
    def shown_url(self) -> str:
        """The URL for messages and logs: any password masked."""
        return self.engine.url.render_as_string(hide_password=True)

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

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

    # --- photos -------------------------------------------------------------------------------------------
    def photo_path(self, sha256: str, fmt: str) -> Path:
        return self.photo_dir / sha256[:2] / f"{sha256}.{FORMAT_EXT.get(fmt, 'bin')}"

    def find_photo(self, sha256: str) -> tuple[Path, str]:
        """The file and format of a stored photo; NotFound when no sighting ever stored it."""
        with Session(self.engine) as s:
            photo = s.get(Photo, sha256)
            if photo is None:
                raise NotFound(f"photo {sha256} is not in the catalogue")
            return self.photo_path(sha256, photo.format), photo.format

    def _write_photo(self, photo: NewPhoto) -> str:
        sha = photo.sha256
        path = self.photo_path(sha, photo.format)
        if path.is_file():
            return sha
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(photo.data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return sha

    # --- individuals --------------------------------------------------------------------------------------
    def create_individual(self, name: str, species: str, notes: str = "") -> dict:
        with Session(self.engine) as s, s.begin():
            ind = Individual(name=name, species=species_key(species), notes=notes, created_at=_now())
            s.add(ind)
            s.flush()
            return _individual_dict(ind, 0)

    def _counts(self, s: Session) -> dict[int, int]:
        rows = s.execute(sa.select(Sighting.individual_id, sa.func.count()).group_by(Sighting.individual_id))
        return dict(rows.all())

    def list_individuals(self, species: str | None = None) -> list[dict]:
        with Session(self.engine) as s:
            q = sa.select(Individual).order_by(Individual.id)
            if species is not None:
                q = q.where(Individual.species == species_key(species))
            counts = self._counts(s)
            return [_individual_dict(i, counts.get(i.id, 0)) for i in s.scalars(q)]

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

    def _individual(self, s: Session, individual_id: int) -> Individual:
        ind = s.get(Individual, individual_id)
        if ind is None:
            raise NotFound(f"individual {individual_id} is not in the catalogue")
        return ind

    def get_individual(self, individual_id: int) -> dict:
        with Session(self.engine) as s:
            ind = self._individual(s, individual_id)
            rows = s.scalars(
                sa.select(Sighting).where(Sighting.individual_id == individual_id).order_by(Sighting.id)
            ).all()
            return {**_individual_dict(ind, len(rows)), "sightings": [_sighting_dict(r) for r in rows]}

    def merge(self, source_id: int, target_id: int) -> dict:
        """Move every sighting of ``source_id`` to ``target_id`` and delete ``source_id``; returns the target."""
        if source_id == target_id:
            raise Conflict(f"cannot merge individual {source_id} into itself")
        with Session(self.engine) as s, s.begin():
            src, dst = self._individual(s, source_id), self._individual(s, target_id)
            if src.species != dst.species:
                raise Conflict(
                    f"individual {source_id} is a {src.species!r}, {target_id} a {dst.species!r}: "
                    "only individuals of one species can be merged"
                )
            s.execute(
                sa.update(Sighting).where(Sighting.individual_id == source_id).values(individual_id=target_id)
            )
            if src.notes:
                dst.notes = f"{dst.notes}\n{src.notes}".strip()
            s.delete(src)
            s.flush()
            n = s.scalar(sa.select(sa.func.count()).where(Sighting.individual_id == target_id))
            return _individual_dict(dst, n)

    # --- sightings ----------------------------------------------------------------------------------------
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
    ) -> dict:
        """Record ``photo`` as a sighting of ``individual_id``, or of a new individual (``new_individual``:
        name, species, notes) created in the same transaction. Returns the sighting plus its species."""
        if (individual_id is None) == (new_individual is None):
            raise ValueError("give either an individual id or a new individual, not both or neither")
        emb = np.ascontiguousarray(embedding, dtype=np.float32).reshape(-1)
        sha = self._write_photo(photo)
        with Session(self.engine) as s, s.begin():
            if individual_id is None:
                fields = {"notes": "", **new_individual, "species": species_key(new_individual["species"])}
                ind = Individual(**fields, created_at=_now())
                s.add(ind)
                s.flush()
            else:
                ind = self._individual(s, individual_id)
            if s.get(Photo, sha) is None:
                s.add(Photo(sha256=sha, format=photo.format, width=photo.width, height=photo.height,
                            n_bytes=len(photo.data)))  # fmt: skip
            row = Sighting(
                individual_id=ind.id, photo_sha256=sha, box=box, theta=float(theta), embedding=emb.tobytes(),
                dim=emb.size, model_id=model_id, preprocessing_key=preprocessing_key, created_at=_now(),
            )  # fmt: skip
            s.add(row)
            s.flush()
            return {**_sighting_dict(row), "species": ind.species, "individual_name": ind.name}

    def delete_sighting(self, sighting_id: int) -> dict:
        with Session(self.engine) as s, s.begin():
            row = s.get(Sighting, sighting_id)
            if row is None:
                raise NotFound(f"sighting {sighting_id} is not in the catalogue")
            out = _sighting_dict(row)
            s.delete(row)
            return out

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

    def update_embedding(self, sighting_id: int, embedding: np.ndarray, model_id: str, key: str) -> None:
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

    def follow_state(self, model_id: str, preprocessing_key: str) -> FollowState:
        """Every sighting's (individual, species) and every individual's name, read in one transaction."""
        with Session(self.engine) as s, s.begin():
            mine = (Sighting.model_id == model_id) & (Sighting.preprocessing_key == preprocessing_key)
            q = sa.select(Sighting.id, Sighting.individual_id, Individual.species, mine).join(
                Individual, Individual.id == Sighting.individual_id
            )
            sightings, other = {}, {}
            for sid, iid, species, is_mine in s.execute(q):
                (sightings if is_mine else other)[int(sid)] = (int(iid), species)
            names = dict(s.execute(sa.select(Individual.id, Individual.name)).all())
        return FollowState(sightings, other, names)

    def embeddings(self, sighting_ids: list[int], chunk: int = 500) -> dict[int, np.ndarray]:
        """{sighting id: stored embedding} for those of ``sighting_ids`` still in the catalogue."""
        out: dict[int, np.ndarray] = {}
        with Session(self.engine) as s:
            for i in range(0, len(sighting_ids), chunk):
                q = sa.select(Sighting.id, Sighting.embedding).where(
                    Sighting.id.in_(sighting_ids[i : i + chunk])
                )
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
