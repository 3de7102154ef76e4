"""The change log: one ``changes`` row per change to the catalogue, written in the change's own transaction.

It is both the audit log (who, when, what, the values before and after, as JSON) and the replicas' change log:
``seq`` increases in commit order, so a replica that has seen ``seq`` N has seen every change up to N
(:mod:`animal_reid.serve.changes`). Two things make that true:

- every write transaction starts with :func:`lock` (:func:`write_session` does it): on PostgreSQL a transaction
  advisory lock (:data:`LOCK_KEY`) held until commit, so seqs are handed out, and committed, one writer at a
  time; on SQLite ``BEGIN IMMEDIATE`` (SQLite has one writer at a time; this makes a read-then-write, like the
  name check, part of it). :func:`record` takes the lock too when the transaction has not.
- on PostgreSQL :func:`record` sends ``NOTIFY animal_reid_changes, '<seq>'``, delivered at commit (dropped on
  rollback): the other replicas' wake-up.

Kinds are ``thing.verb`` (``individual.create``, ``sighting.add``, ``review.decide``, ``calibration.fit``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from animal_reid.serve.changes import CHANNEL
from animal_reid.serve.schema import Change, change_dict, now

#: the PostgreSQL advisory lock every catalogue write transaction holds (any constant; "animalre" in ASCII)
LOCK_KEY = 0x616E696D616C7265
KIND_RE = re.compile(r"^[a-z_]+\.[a-z_]+$")
_LOCKED = "animal_reid_write_lock"


def lock(session: Session) -> None:
    """Make ``session``'s transaction the catalogue's only writer until it ends (see the module doc). Call it
    first in a transaction that reads before it writes; calling it again in the same transaction is free."""
    tx = session.get_transaction()
    if tx is not None and session.info.get(_LOCKED) is tx:
        return
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
    elif conn.dialect.name == "sqlite" and not conn.connection.dbapi_connection.in_transaction:
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # waits (busy_timeout) for another writer to finish
    session.info[_LOCKED] = session.get_transaction()


@contextmanager
def write_session(engine: sa.Engine) -> Iterator[Session]:
    """A session in a write transaction holding the catalogue's write lock; commits on leaving, rolls back on
    an exception."""
    with Session(engine) as s, s.begin():
        lock(s)
        yield s


def _jsonable(value: Any) -> Any:
    return None if value is None else json.loads(json.dumps(value, default=str))


def record(
    session: Session,
    actor: str,
    kind: str,
    individual_id: int | None = None,
    sighting_id: int | None = None,
    other_id: int | None = None,
    before: Any = None,
    after: Any = None,
) -> int:
    """Append one change to the log in ``session``'s transaction; its seq. ``before``/``after``: what the thing
    was and became (JSON-able values; dates become text)."""
    if not KIND_RE.fullmatch(kind):
        raise ValueError(f"change kind {kind!r}: expected 'thing.verb' like 'sighting.add'")
    lock(session)
    row = Change(
        at=now(), actor=str(actor), kind=kind, individual_id=individual_id, sighting_id=sighting_id,
        other_id=other_id, before=_jsonable(before), after=_jsonable(after),
    )  # fmt: skip
    session.add(row)
    session.flush()
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": str(row.seq)})
    return row.seq


def last_seq(session: Session) -> int:
    """The newest change's seq (0 for an empty log)."""
    return int(session.scalar(sa.select(sa.func.coalesce(sa.func.max(Change.seq), 0))))


def list_changes(
    session: Session,
    after_seq: int = 0,
    limit: int = 100,
    individual_id: int | None = None,
    upto: int | None = None,
) -> list[dict]:
    """Changes with seq > ``after_seq`` (and <= ``upto``), oldest first, at most ``limit``; only those naming
    ``individual_id`` (as the individual, or as the one merged into another) when given."""
    q = sa.select(Change).where(Change.seq > after_seq).order_by(Change.seq).limit(limit)
    if upto is not None:
        q = q.where(Change.seq <= upto)
    if individual_id is not None:
        merged = (Change.kind == "individual.merge") & (Change.other_id == individual_id)
        q = q.where((Change.individual_id == individual_id) | merged)
    return [change_dict(c) for c in session.scalars(q)]
