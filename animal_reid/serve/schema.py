"""The catalogue's tables (SQLAlchemy 2 ORM), the plain values the store takes and answers, and their checks
(one-line :class:`Invalid` errors naming the field).

Tables (Alembic revisions ``0001`` and ``0002`` in ``migrations/``): ``individuals`` (names unique per species,
case-insensitively: checked by the store in its write transaction) with ``individual_aliases``; ``photos``
(content-addressed, one row per distinct file); ``sightings`` (a photo of an individual with its embedding and
metadata: when, where, viewpoint, observer, notes, who filed it, and a ``flag`` saying why a reviewer should
look); ``encounters`` (several sightings of one event); ``changes`` (the audit log and the replicas' change
log: one row per change, ``seq`` increasing in commit order); ``flags`` (things for a reviewer to look at).

``taken_at``, ``started_at`` and ``ended_at`` are ISO 8601 text as the camera or the user gave them
(``2026-05-01T06:12:30``, with ``+02:00`` when the offset is known): a camera's clock has no time zone, and a
``timestamptz`` column would shift it. Server times (``created_at``, ``at``) are UTC date-times.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import math
import warnings
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

PHOTO_URL = "/v1/photos/{}"
#: ``created_by`` of sightings filed before revision 0002 recorded who filed them
UNKNOWN_FILER = "unknown (before 0002)"
TEXT_FIELDS = ("site", "viewpoint", "observer", "notes")
TEXT_LIMITS = {"name": 200, "alias": 200, "site": 200, "viewpoint": 64, "observer": 200, "notes": 10_000}


class Base(DeclarativeBase):
    pass


class Individual(Base):
    __tablename__ = "individuals"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    species: Mapped[str] = mapped_column(sa.String(64), index=True)
    notes: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))


class IndividualAlias(Base):
    __tablename__ = "individual_aliases"
    id: Mapped[int] = mapped_column(primary_key=True)
    individual_id: Mapped[int] = mapped_column(sa.ForeignKey("individuals.id"), index=True)
    alias: Mapped[str] = mapped_column(sa.String(200))


class Photo(Base):
    __tablename__ = "photos"
    sha256: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    format: Mapped[str] = mapped_column(sa.String(16))
    width: Mapped[int]
    height: Mapped[int]
    n_bytes: Mapped[int]


class Encounter(Base):
    __tablename__ = "encounters"
    id: Mapped[int] = mapped_column(primary_key=True)
    species: Mapped[str] = mapped_column(sa.String(64), index=True)
    started_at: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)
    ended_at: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)
    site: Mapped[str] = mapped_column(sa.String(200), default="")
    lat: Mapped[float | None] = mapped_column(nullable=True)
    lon: Mapped[float | None] = mapped_column(nullable=True)
    observer: Mapped[str] = mapped_column(sa.String(200), default="")
    notes: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(sa.String(200))


class Sighting(Base):
    __tablename__ = "sightings"
    id: Mapped[int] = mapped_column(primary_key=True)
    individual_id: Mapped[int] = mapped_column(sa.ForeignKey("individuals.id"), index=True)
    photo_sha256: Mapped[str] = mapped_column(sa.ForeignKey("photos.sha256"), index=True)
    box: Mapped[list | None] = mapped_column(sa.JSON, nullable=True)
    theta: Mapped[float] = mapped_column(default=0.0)
    embedding: Mapped[bytes] = mapped_column(sa.LargeBinary)
    dim: Mapped[int]
    model_id: Mapped[str] = mapped_column(sa.String(64))
    preprocessing_key: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    encounter_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("encounters.id"), nullable=True, index=True
    )
    taken_at: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)
    lat: Mapped[float | None] = mapped_column(nullable=True)
    lon: Mapped[float | None] = mapped_column(nullable=True)
    site: Mapped[str] = mapped_column(sa.String(200), default="")
    viewpoint: Mapped[str] = mapped_column(sa.String(64), default="")
    observer: Mapped[str] = mapped_column(sa.String(200), default="")
    notes: Mapped[str] = mapped_column(sa.Text, default="")
    created_by: Mapped[str] = mapped_column(sa.String(200), default="unknown")
    flag: Mapped[str | None] = mapped_column(sa.Text, nullable=True)


class Change(Base):
    __tablename__ = "changes"
    __table_args__ = {"sqlite_autoincrement": True}  # a seq is never reused, even after the last row goes
    seq: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(sa.String(200))
    kind: Mapped[str] = mapped_column(sa.String(64))
    individual_id: Mapped[int | None] = mapped_column(nullable=True, index=True)
    sighting_id: Mapped[int | None] = mapped_column(nullable=True)
    other_id: Mapped[int | None] = mapped_column(nullable=True)
    before: Mapped[dict | None] = mapped_column(sa.JSON, nullable=True)
    after: Mapped[dict | None] = mapped_column(sa.JSON, nullable=True)


class Flag(Base):
    __tablename__ = "flags"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    individual_id: Mapped[int | None] = mapped_column(nullable=True, index=True)
    sighting_id: Mapped[int | None] = mapped_column(nullable=True)
    other_id: Mapped[int | None] = mapped_column(nullable=True)
    detail: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    resolved_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    resolved_by: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)


FLAG_KINDS = ("duplicate_name", "duplicate_photo", "photo_elsewhere")


class NotFound(LookupError):
    """A named individual, sighting, encounter or flag is not in the catalogue (HTTP 404)."""


class Conflict(ValueError):
    """A change the catalogue refuses, e.g. a second individual of one name in a species (HTTP 409)."""


class SamePhoto(Conflict):
    """The photo is already a sighting of this individual (HTTP 409; the route names the file)."""


class Invalid(ValueError):
    """A value the catalogue cannot take, e.g. a latitude of 95 degrees (HTTP 422); the message names it."""


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
class SightingMeta:
    """What a reviewer knows about a sighting. ``taken_at``: ISO 8601 text or a datetime (None: the photo's EXIF
    date-time, if any); ``lat``/``lon`` in degrees (None with None: the photo's EXIF GPS position, if any)."""

    taken_at: str | dt.datetime | None = None
    lat: float | None = None
    lon: float | None = None
    site: str = ""
    viewpoint: str = ""
    observer: str = ""
    notes: str = ""


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def when_text(value: str | dt.datetime | None, what: str = "taken_at") -> str | None:
    """A date-time as stored: ISO 8601 text (seconds, the offset kept when given); None for None or "".
    Invalid naming ``what`` for anything that is not a date-time."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise Invalid(
                f"{what}: expected a date-time like 2026-05-01T06:12:30, got {text[:40]!r}"
            ) from None
    if not isinstance(value, dt.datetime):
        raise Invalid(f"{what}: expected a date-time, got {type(value).__name__}")
    return value.replace(microsecond=0).isoformat()


def checked_place(lat: float | None, lon: float | None) -> tuple[float | None, float | None]:
    """(lat, lon) when both are degrees on Earth, or both None; Invalid naming what is wrong."""
    if (lat is None) != (lon is None):
        raise Invalid("lat, lon: give both or neither")
    for what, value, limit in (("lat", lat, 90.0), ("lon", lon, 180.0)):
        if value is not None and not (math.isfinite(value) and -limit <= value <= limit):
            raise Invalid(f"{what}: expected degrees between -{limit:g} and {limit:g}, got {value}")
    return (None if lat is None else float(lat)), (None if lon is None else float(lon))


def name_key(name: str) -> str:
    """How names compare: trimmed, case-folded (``" Asha "`` and ``"ASHA"`` are one name)."""
    return " ".join(name.split()).casefold()


def iso(value: dt.datetime | None) -> str | None:
    """A server time as ISO 8601 in UTC (SQLite gives it back without its zone: it was stored in UTC)."""
    if value is None:
        return None
    return (value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)).isoformat()


def sighting_dict(s: Sighting) -> dict:
    return {
        "id": s.id, "individual_id": s.individual_id, "encounter_id": s.encounter_id, "photo": s.photo_sha256,
        "url": PHOTO_URL.format(s.photo_sha256), "box": s.box, "theta": s.theta, "taken_at": s.taken_at,
        "lat": s.lat, "lon": s.lon, "site": s.site, "viewpoint": s.viewpoint, "observer": s.observer,
        "notes": s.notes, "flag": s.flag, "model_id": s.model_id, "created_at": iso(s.created_at),
        "created_by": s.created_by,
    }  # fmt: skip


def encounter_dict(e: Encounter) -> dict:
    return {
        "id": e.id, "species": e.species, "started_at": e.started_at, "ended_at": e.ended_at, "site": e.site,
        "lat": e.lat, "lon": e.lon, "observer": e.observer, "notes": e.notes, "created_at": iso(e.created_at),
        "created_by": e.created_by,
    }  # fmt: skip


def change_dict(c: Change) -> dict:
    return {
        "seq": c.seq, "at": iso(c.at), "actor": c.actor, "kind": c.kind, "individual_id": c.individual_id,
        "sighting_id": c.sighting_id, "other_id": c.other_id, "before": c.before, "after": c.after,
    }  # fmt: skip


def flag_dict(f: Flag) -> dict:
    return {
        "id": f.id, "kind": f.kind, "individual_id": f.individual_id, "sighting_id": f.sighting_id,
        "other_id": f.other_id, "detail": f.detail, "created_at": iso(f.created_at),
        "resolved_at": iso(f.resolved_at), "resolved_by": f.resolved_by,
    }  # fmt: skip


def photo_exif(data: bytes) -> tuple[str | None, float | None, float | None]:
    """(date-time, lat, lon) from a photo's EXIF (``DateTimeOriginal`` first); Nones when it has none or it
    cannot be read: a photo's metadata never stops it being filed."""
    from PIL import Image

    from animal_reid.season.ingest_exif import exif_fields

    try:
        with warnings.catch_warnings(), Image.open(io.BytesIO(data)) as im:
            warnings.simplefilter("ignore")
            values, _notes = exif_fields(im.getexif())
        return when_text(values["datetime"]), values["latitude"], values["longitude"]
    except Exception:  # noqa: BLE001 - unreadable EXIF is no date, not an error
        return None, None, None


def clean_text(field: str, value) -> str:
    text = "" if value is None else str(value).strip()
    if len(text) > TEXT_LIMITS[field]:
        raise Invalid(f"{field}: at most {TEXT_LIMITS[field]} characters, got {len(text)}")
    return text


def clean_name(value) -> str:
    name = clean_text("name", value)
    if not name:
        raise Invalid("name: an individual needs a name")
    return name


def clean_aliases(values) -> list[str]:
    """Aliases trimmed, empty ones dropped, each once (any case)."""
    out, seen = [], set()
    for value in values or ():
        alias = clean_text("alias", value)
        if alias and name_key(alias) not in seen:
            out.append(alias)
            seen.add(name_key(alias))
    return out


def check_fields(fields: dict, allowed: tuple[str, ...], what: str) -> None:
    bad = sorted(set(fields) - set(allowed))
    if bad:
        raise Invalid(f"{what}: cannot change {', '.join(bad)} (can: {', '.join(allowed)})")


def place_fields(fields: dict, current: tuple) -> dict:
    """``lat``/``lon`` of ``fields`` checked together with the one not given (``current``)."""
    if "lat" not in fields and "lon" not in fields:
        return {}
    lat, lon = checked_place(fields.get("lat", current[0]), fields.get("lon", current[1]))
    return {"lat": lat, "lon": lon}


def encounter_key_sql():
    """A sighting's encounter as SQL, for counting encounters: ``e<id>`` for its encounter, else ``d<date>``, the
    day it was taken (else filed): per individual, photos filed one by one from one outing count as one encounter,
    not one each (the rule the calibration's encounter count follows)."""
    day = sa.func.substr(sa.func.coalesce(Sighting.taken_at, sa.cast(Sighting.created_at, sa.String)), 1, 10)
    return sa.case(
        (Sighting.encounter_id.is_(None), "d" + day), else_="e" + sa.cast(Sighting.encounter_id, sa.String)
    )
