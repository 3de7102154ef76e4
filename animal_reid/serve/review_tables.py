"""The review queue's tables (Alembic revision 0003): batches, queue items (one per encounter), their photos with
pending embeddings, and the groups discovery proposes as new individuals.

They live in the catalogue's database beside the catalogue's own tables and refer to individuals and sightings
by id only (no foreign key into them): a decision undone, an individual merged or deleted elsewhere, never blocks
or cascades into the queue's history.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: an item's states: waiting for a reviewer, skipped as unsure (still in the queue), filed, or not an animal
STATUSES = ("waiting", "unsure", "decided", "rejected")
OPEN = ("waiting", "unsure")
#: a group's states
GROUP_STATUSES = ("proposed", "accepted", "merged")


class ReviewBase(DeclarativeBase):
    pass


class Batch(ReviewBase):
    __tablename__ = "review_batches"
    id: Mapped[int] = mapped_column(primary_key=True)
    species: Mapped[str] = mapped_column(sa.String(64), index=True)
    source: Mapped[str] = mapped_column(sa.String(32))  # photos | megadetector | camtrapdp
    upload: Mapped[str] = mapped_column(sa.String(255), default="")
    n_photos: Mapped[int] = mapped_column(default=0)
    n_encounters: Mapped[int] = mapped_column(default=0)
    n_items: Mapped[int] = mapped_column(default=0)
    skipped: Mapped[list] = mapped_column(sa.JSON, default=list)
    observer: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    site: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    gap_min: Mapped[float] = mapped_column(default=60.0)
    created_by: Mapped[str] = mapped_column(sa.String(200))
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))


class Group(ReviewBase):
    __tablename__ = "review_groups"
    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[int] = mapped_column(sa.ForeignKey("review_batches.id"), index=True)
    species: Mapped[str] = mapped_column(sa.String(64), index=True)
    status: Mapped[str] = mapped_column(sa.String(16), default="proposed")
    proposed_name: Mapped[str] = mapped_column(sa.String(200))
    individual_id: Mapped[int | None] = mapped_column(nullable=True)
    version: Mapped[int] = mapped_column(default=1)
    updated_by: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    updated_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))


class QueueItem(ReviewBase):
    __tablename__ = "queue_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[int] = mapped_column(sa.ForeignKey("review_batches.id"), index=True)
    species: Mapped[str] = mapped_column(sa.String(64), index=True)
    status: Mapped[str] = mapped_column(sa.String(16), index=True, default="waiting")
    version: Mapped[int] = mapped_column(default=1)
    started_at: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)  # ISO 8601 as given
    ended_at: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)
    site: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    lat: Mapped[float | None] = mapped_column(nullable=True)
    lon: Mapped[float | None] = mapped_column(nullable=True)
    observer: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    notes: Mapped[str] = mapped_column(sa.Text, default="")
    band: Mapped[str | None] = mapped_column(sa.String(16), nullable=True)  # at upload
    band_reason: Mapped[str] = mapped_column(sa.Text, default="")
    best_score: Mapped[float | None] = mapped_column(nullable=True)
    group_id: Mapped[int | None] = mapped_column(sa.ForeignKey("review_groups.id"), nullable=True, index=True)
    decision: Mapped[dict | None] = mapped_column(sa.JSON, nullable=True)
    updated_by: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    updated_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))


class QueuePhoto(ReviewBase):
    __tablename__ = "queue_photos"
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(sa.ForeignKey("queue_items.id"), index=True)
    position: Mapped[int] = mapped_column(default=0)
    file: Mapped[str] = mapped_column(sa.String(1000))
    sha256: Mapped[str] = mapped_column(sa.String(64))
    format: Mapped[str] = mapped_column(sa.String(16))
    width: Mapped[int]
    height: Mapped[int]
    n_bytes: Mapped[int]
    box: Mapped[list | None] = mapped_column(sa.JSON, nullable=True)
    theta: Mapped[float] = mapped_column(default=0.0)
    taken_at: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)
    lat: Mapped[float | None] = mapped_column(nullable=True)
    lon: Mapped[float | None] = mapped_column(nullable=True)
    site: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    camera: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    viewpoint: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    notes: Mapped[str] = mapped_column(sa.Text, default="")
    embedding: Mapped[bytes] = mapped_column(sa.LargeBinary)
    dim: Mapped[int]
    model_id: Mapped[str] = mapped_column(sa.String(64))
    preprocessing_key: Mapped[str] = mapped_column(sa.String(64))
    sighting_id: Mapped[int | None] = mapped_column(nullable=True)  # the sighting it was filed as


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
