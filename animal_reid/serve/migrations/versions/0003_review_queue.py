"""The review queue: uploaded batches, queue items (one per encounter) with their photos and pending embeddings,
and the groups discovery proposes as new individuals.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"

_WHEN = sa.DateTime(timezone=True)


def _text(name: str, n: int = 200) -> sa.Column:
    return sa.Column(name, sa.String(n), nullable=True)


def upgrade() -> None:
    op.create_table(
        "review_batches",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("species", sa.String(64), nullable=False, index=True),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("upload", sa.String(255), nullable=False, server_default=""),
        sa.Column("n_photos", sa.Integer, nullable=False, server_default="0"),
        sa.Column("n_encounters", sa.Integer, nullable=False, server_default="0"),
        sa.Column("n_items", sa.Integer, nullable=False, server_default="0"),
        sa.Column("skipped", sa.JSON, nullable=False),
        _text("observer"),
        _text("site"),
        sa.Column("gap_min", sa.Float, nullable=False, server_default="60"),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
    )
    op.create_table(
        "review_groups",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("batch_id", sa.Integer, sa.ForeignKey("review_batches.id"), nullable=False, index=True),
        sa.Column("species", sa.String(64), nullable=False, index=True),
        sa.Column("status", sa.String(16), nullable=False, server_default="proposed"),
        sa.Column("proposed_name", sa.String(200), nullable=False),
        sa.Column("individual_id", sa.Integer, nullable=True),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        _text("updated_by"),
        sa.Column("updated_at", _WHEN, nullable=True),
        sa.Column("created_at", _WHEN, nullable=False),
    )
    op.create_table(
        "queue_items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("batch_id", sa.Integer, sa.ForeignKey("review_batches.id"), nullable=False, index=True),
        sa.Column("species", sa.String(64), nullable=False, index=True),
        sa.Column("status", sa.String(16), nullable=False, index=True, server_default="waiting"),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        _text("started_at", 40),
        _text("ended_at", 40),
        _text("site"),
        sa.Column("lat", sa.Float, nullable=True),
        sa.Column("lon", sa.Float, nullable=True),
        _text("observer"),
        sa.Column("notes", sa.Text, nullable=False, server_default=""),
        sa.Column("band", sa.String(16), nullable=True),
        sa.Column("band_reason", sa.Text, nullable=False, server_default=""),
        sa.Column("best_score", sa.Float, nullable=True),
        sa.Column("group_id", sa.Integer, sa.ForeignKey("review_groups.id"), nullable=True, index=True),
        sa.Column("decision", sa.JSON, nullable=True),
        _text("updated_by"),
        sa.Column("updated_at", _WHEN, nullable=True),
        sa.Column("created_at", _WHEN, nullable=False),
    )
    op.create_table(
        "queue_photos",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("item_id", sa.Integer, sa.ForeignKey("queue_items.id"), nullable=False, index=True),
        sa.Column("position", sa.Integer, nullable=False, server_default="0"),
        sa.Column("file", sa.String(1000), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("n_bytes", sa.Integer, nullable=False),
        sa.Column("box", sa.JSON, nullable=True),
        sa.Column("theta", sa.Float, nullable=False, server_default="0"),
        _text("taken_at", 40),
        sa.Column("lat", sa.Float, nullable=True),
        sa.Column("lon", sa.Float, nullable=True),
        _text("site"),
        _text("camera"),
        _text("viewpoint", 64),
        sa.Column("notes", sa.Text, nullable=False, server_default=""),
        sa.Column("embedding", sa.LargeBinary, nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("model_id", sa.String(64), nullable=False),
        sa.Column("preprocessing_key", sa.String(64), nullable=False),
        sa.Column("sighting_id", sa.Integer, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("queue_photos")
    op.drop_table("queue_items")
    op.drop_table("review_groups")
    op.drop_table("review_batches")
