"""Encounters, sighting metadata, aliases, the change log and flags; what existing catalogues hold is flagged.

Adds ``encounters``, ``individual_aliases``, ``changes`` (audit log and replicas' change log) and ``flags``, and
to ``sightings``: ``encounter_id``, ``taken_at``, ``lat``, ``lon``, ``site``, ``viewpoint``, ``observer``,
``notes``, ``created_by`` (``unknown (before 0002)`` for the sightings already there) and ``flag``. Nothing is
dropped: what the new rules refuse from now on but an existing catalogue may hold (one photo twice under one
individual, one photo under two individuals, two individuals of one species with one name, any case) is kept and
flagged for a reviewer (``flags`` rows, and the sighting's ``flag`` text).

Revision ID: 0002
Revises: 0001
"""

import datetime as dt

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

UNKNOWN_FILER = "unknown (before 0002)"  # a copy: a revision must not change when the code does


def _tables() -> None:
    op.create_table(
        "encounters",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("species", sa.String(64), nullable=False, index=True),
        sa.Column("started_at", sa.String(40), nullable=True),
        sa.Column("ended_at", sa.String(40), nullable=True),
        sa.Column("site", sa.String(200), nullable=False, server_default=""),
        sa.Column("lat", sa.Float, nullable=True),
        sa.Column("lon", sa.Float, nullable=True),
        sa.Column("observer", sa.String(200), nullable=False, server_default=""),
        sa.Column("notes", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
    )
    op.create_table(
        "individual_aliases",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("individual_id", sa.Integer, sa.ForeignKey("individuals.id"), nullable=False, index=True),
        sa.Column("alias", sa.String(200), nullable=False),
    )
    op.create_table(
        "changes",
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("individual_id", sa.Integer, nullable=True, index=True),
        sa.Column("sighting_id", sa.Integer, nullable=True),
        sa.Column("other_id", sa.Integer, nullable=True),
        sa.Column("before", sa.JSON, nullable=True),
        sa.Column("after", sa.JSON, nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "flags",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("individual_id", sa.Integer, nullable=True, index=True),
        sa.Column("sighting_id", sa.Integer, nullable=True),
        sa.Column("other_id", sa.Integer, nullable=True),
        sa.Column("detail", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_by", sa.String(200), nullable=True),
    )


def _sighting_columns() -> None:
    with op.batch_alter_table("sightings") as batch:
        batch.add_column(sa.Column("encounter_id", sa.Integer, nullable=True))
        batch.add_column(sa.Column("taken_at", sa.String(40), nullable=True))
        batch.add_column(sa.Column("lat", sa.Float, nullable=True))
        batch.add_column(sa.Column("lon", sa.Float, nullable=True))
        for name, width in (("site", 200), ("viewpoint", 64), ("observer", 200)):
            batch.add_column(sa.Column(name, sa.String(width), nullable=False, server_default=""))
        batch.add_column(sa.Column("notes", sa.Text, nullable=False, server_default=""))
        batch.add_column(
            sa.Column("created_by", sa.String(200), nullable=False, server_default=UNKNOWN_FILER)
        )
        batch.add_column(sa.Column("flag", sa.Text, nullable=True))
        batch.create_foreign_key("fk_sightings_encounter_id", "encounters", ["encounter_id"], ["id"])
        batch.create_index("ix_sightings_encounter_id", ["encounter_id"])
        batch.create_index("ix_sightings_photo_sha256", ["photo_sha256"])
    with op.batch_alter_table("sightings") as batch:  # rows written from now on say who filed them
        batch.alter_column("created_by", server_default="unknown", existing_type=sa.String(200))


def upgrade() -> None:
    _tables()
    _sighting_columns()
    conn = op.get_bind()
    _flag_photos(conn)
    _flag_names(conn)


def _key(name: str) -> str:
    return " ".join(name.split()).casefold()


def _add_flag(conn, kind: str, individual_id: int, sighting_id, other_id: int, detail: str) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO flags (kind, individual_id, sighting_id, other_id, detail, created_at)"
            " VALUES (:k, :i, :s, :o, :d, :t)"
        ),
        {
            "k": kind,
            "i": individual_id,
            "s": sighting_id,
            "o": other_id,
            "d": detail,
            "t": dt.datetime.now(dt.UTC),
        },
    )
    if sighting_id is not None:
        conn.execute(sa.text("UPDATE sightings SET flag = :d WHERE id = :s"), {"d": detail, "s": sighting_id})


def _flag_photos(conn) -> None:
    """Each sighting whose photo an earlier sighting has: ``duplicate_photo`` under the same individual,
    ``photo_elsewhere`` under another (naming the first sighting of that photo)."""
    rows = conn.execute(
        sa.text(
            "SELECT s.id, s.individual_id, s.photo_sha256, i.name FROM sightings s"
            " JOIN individuals i ON i.id = s.individual_id"
            " WHERE s.photo_sha256 IN (SELECT photo_sha256 FROM sightings GROUP BY photo_sha256 HAVING count(*) > 1)"
            " ORDER BY s.id"
        )
    ).all()
    seen: dict[str, list[tuple[int, int, str]]] = {}
    for sid, iid, sha, name in rows:
        earlier = seen.setdefault(sha, [])
        same = [e for e in earlier if e[1] == iid]
        if same:
            _add_flag(
                conn,
                "duplicate_photo",
                iid,
                sid,
                same[0][0],
                f"same photo as sighting {same[0][0]} of {name}",
            )
        elif earlier:
            first = earlier[0]
            _add_flag(
                conn,
                "photo_elsewhere",
                iid,
                sid,
                first[0],
                f"same photo as sighting {first[0]} of {first[2]}",
            )
        earlier.append((sid, iid, name))


def _flag_names(conn) -> None:
    """Each individual whose species has an earlier one of the same name (any case): ``duplicate_name``."""
    first: dict[tuple[str, str], tuple[int, str]] = {}
    for iid, name, species in conn.execute(sa.text("SELECT id, name, species FROM individuals ORDER BY id")):
        key = (species, _key(name))
        if key in first:
            other, other_name = first[key]
            detail = f"another {species} is also named {other_name} (individual {other})"
            _add_flag(conn, "duplicate_name", iid, None, other, detail)
        else:
            first[key] = (iid, name)


def downgrade() -> None:
    with op.batch_alter_table("sightings") as batch:
        batch.drop_index("ix_sightings_photo_sha256")
        batch.drop_index("ix_sightings_encounter_id")
        batch.drop_constraint("fk_sightings_encounter_id", type_="foreignkey")
        for name in ("flag", "created_by", "notes", "observer", "viewpoint", "site", "lon", "lat", "taken_at",
                     "encounter_id"):  # fmt: skip
            batch.drop_column(name)
    for table in ("flags", "changes", "individual_aliases", "encounters"):
        op.drop_table(table)
