"""Following the writes of other processes on the same catalogue (several replicas on one PostgreSQL).

Each replica keeps an in-memory index and name cache built from the store; its own writes update them at once
(:class:`~animal_reid.serve.service.Service`), and a :class:`ChangeFollower` thread brings in everyone else's:

- **wake-up**: on PostgreSQL every change written through a :class:`~animal_reid.serve.store.Catalogue` appends a
  row to the change log and sends ``NOTIFY animal_reid_changes, '<seq>'`` in its transaction (delivered at
  commit, dropped on rollback; :mod:`animal_reid.serve.changelog`); the follower listens on a connection of its
  own, made again (and followed by a look) when it drops. Everywhere, it also wakes every ``poll_s`` seconds,
  which covers a lost listening connection and writes made by other tools (psql, a restore).
- **did anything change** (:class:`ChangeToken`, one cheap query): the change log's newest ``seq`` (it increases
  in commit order: writers hold one lock from their first statement to their commit), with a check for writes
  that bypass the log: on SQLite ``PRAGMA data_version`` of a connection kept for it (it changes whenever another
  connection commits); on PostgreSQL the catalogue's content digest (:func:`digest_sql`).
- **what changed**: when the token moved, :meth:`Service.sync` is given the seq this replica has followed. In
  one snapshot it reads the change log's rows after it (their ids only), the current state of the sightings
  and individuals they name (a merged or deleted individual's sightings with them) and the content digest,
  applies the difference to the index and caches (new sightings, their embeddings read for them alone;
  deleted ones; moved ones; renamed individuals), then checks the digest against one computed from its own
  index and individuals (:func:`content_digest`). So a replica that was down catches up by reading what it
  missed. A full look (every sighting's individual and species and every individual, no embeddings; the same
  difference) is made instead at the first look, when the digests differ (a write by another tool: psql, a
  restore, even one landing beside logged writes), when the stretch of the log cannot be read (it went back,
  rows are missing, too many of them), and at least every ``Service.full_sync_every_s``.

The token is read *before* the state it stands for, so a commit that lands in between moves it again and is
picked up at the next wake-up: nothing is missed, at worst looked at twice.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import Any

import sqlalchemy as sa

logger = logging.getLogger(__name__)

CHANNEL = "animal_reid_changes"
RETRY_S = 1.0  # after a failure (catalogue unreachable), look again this soon (or every poll_s if shorter)


_SEQ = "SELECT coalesce(max(seq), 0) FROM changes"  # the token's first field, everywhere
_P = 65521  # a prime: sightings' ids and individual ids are paired modulo it in the digest
HASH_FN = "animal_reid_h32"  # the digest's hash of an individual on SQLite (a function registered here)
_ROW_HASH = {
    "postgresql": "('x' || substr(md5(id || ':' || species || ':' || name), 1, 8))::bit(32)::bigint",
    "sqlite": f"{HASH_FN}(id || ':' || species || ':' || name)",
}


def digest_sql(dialect: str) -> str | None:
    """One statement (one snapshot) reading the change log's newest seq and the catalogue's content digest:
    the count and sums of the sightings' ids and individual ids (and of their pairs), the number of
    individuals and the sum of a hash of each one's id, species and name. None for a database other than
    PostgreSQL or SQLite."""
    if dialect not in _ROW_HASH:
        return None
    return (
        f"SELECT ({_SEQ}), (SELECT count(*) FROM sightings), (SELECT coalesce(sum(id), 0) FROM sightings),"
        " (SELECT coalesce(sum(individual_id), 0) FROM sightings),"
        f" (SELECT coalesce(sum(CAST(id % {_P} AS BIGINT) * (individual_id % {_P})), 0) FROM sightings),"
        f" (SELECT count(*) FROM individuals), (SELECT coalesce(sum({_ROW_HASH[dialect]}), 0) FROM individuals)"
    )


def row_hash(text: str) -> int:
    """The digest's hash of an individual's ``id:species:name`` (the first 32 bits of its md5)."""
    return int(hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()[:8], 16)


def register_sqlite_functions(dbapi_conn) -> None:
    """Make :data:`HASH_FN` callable on a SQLite connection (for :func:`digest_sql`)."""
    dbapi_conn.create_function(HASH_FN, 1, row_hash, deterministic=True)


def content_digest(sightings: dict[int, tuple[int, str]], individuals: dict[int, tuple[str, str]]) -> tuple:
    """What :func:`digest_sql` reads (but the seq), computed from a replica's own view: ``sightings``
    {id: (individual id, species)}, ``individuals`` {id: (species, name)}."""
    pairs = [(sid, iid) for sid, (iid, _) in sightings.items()]
    return (
        len(pairs), sum(s for s, _ in pairs), sum(i for _, i in pairs),
        sum((s % _P) * (i % _P) for s, i in pairs), len(individuals),
        sum(row_hash(f"{i}:{species}:{name}") for i, (species, name) in individuals.items()),
    )  # fmt: skip


_PG_TOKEN = sa.text(digest_sql("postgresql"))

_PORTABLE_TOKEN = (
    f"SELECT ({_SEQ}), (SELECT count(*) FROM sightings), (SELECT sum(id) FROM sightings),"
    " (SELECT sum(individual_id) FROM sightings), (SELECT count(*) FROM individuals),"
    " (SELECT sum(id) FROM individuals), (SELECT sum(length(name) + length(species)) FROM individuals)"
)


class ChangeToken:
    """A value that changes whenever the catalogue's sightings or individuals change (see the module doc): a
    tuple whose first field is the change log's newest seq."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self._sqlite = None  # the connection whose data_version is read (it must be the same one every time)

    def read(self) -> Any:
        if self.engine.dialect.name == "sqlite":
            if self._sqlite is None:  # ours, not the pool's: data_version counts other connections' commits
                self._sqlite = dbapi_connect(self.engine, check_same_thread=False)
            cur = self._sqlite.cursor()
            try:
                version = cur.execute("PRAGMA data_version").fetchone()[0]
                return cur.execute(_SEQ).fetchone()[0], version
            finally:
                cur.close()
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "postgresql":
                return tuple(conn.execute(_PG_TOKEN).one())
            return tuple(conn.execute(sa.text(_PORTABLE_TOKEN)).one())

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None


def dbapi_connect(engine: sa.Engine, **extra) -> Any:
    """A DBAPI connection to ``engine``'s database made as the engine makes them, but outside its pool."""
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    return engine.dialect.loaded_dbapi.connect(*cargs, **{**cparams, **extra})


class Listener:
    """``LISTEN`` on a PostgreSQL connection of its own (autocommit); :meth:`wait` returns at a notification
    or after ``timeout_s``."""

    def __init__(self, engine: sa.Engine):
        self._conn = dbapi_connect(engine, autocommit=True)
        self._conn.execute(f"LISTEN {CHANNEL}")

    def wait(self, timeout_s: float, stop: threading.Event) -> int | None:
        """The newest seq notified (0 for a notification without one) at a notification, those already queued
        taken with it; None after ``timeout_s`` or once ``stop`` is set (looked at twice a second)."""
        deadline = time.monotonic() + timeout_s
        while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
            got = list(self._conn.notifies(timeout=min(left, 0.5), stop_after=1))
            if got:
                got += list(self._conn.notifies(timeout=0.0))  # a transaction of many changes sends many
                return max(int(n.payload) if n.payload.isdigit() else 0 for n in got)
        return None

    def close(self) -> None:
        self._conn.close()  # psycopg: also fine on a broken connection


class ChangeFollower:
    """A daemon thread calling ``sync()`` whenever the catalogue behind ``engine`` changed (module doc)."""

    def __init__(self, engine: sa.Engine, sync, poll_s: float, what: str = "catalogue"):
        self.engine, self.sync, self.poll_s, self.what = engine, sync, poll_s, what
        self._token = ChangeToken(engine)
        self._seen: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.syncs = 0

    @property
    def seq(self) -> int | None:
        """The change log's newest seq at the last look (None before the first)."""
        return None if self._seen is None else int(self._seen[0])

    def prime(self) -> None:
        """Read the token now: call before building the index, so a commit after this is looked at later."""
        self._seen = self._token.read()

    def check(self, force: bool = False) -> bool:
        """``sync(after_seq)`` if the catalogue changed since the last look (or ``force``), with the seq looked
        at last (None at the first look); True when it synced. That seq is recorded only once ``sync`` has
        applied what came after it."""
        token = self._token.read()
        if token == self._seen and not force:
            return False
        self.sync(None if self._seen is None else int(self._seen[0]))
        self._seen, self.syncs = token, self.syncs + 1
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="animal-reid-follow", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._token.close()

    def _run(self) -> None:
        listener, failing = None, False
        while not self._stop.is_set():
            try:
                notified = False
                if listener is None and self.engine.dialect.name == "postgresql":
                    listener = Listener(self.engine)  # then look at once: notifications may have been missed
                elif listener is not None:
                    notified = listener.wait(self.poll_s, self._stop) is not None
                else:
                    self._stop.wait(self.poll_s)
                if not self._stop.is_set():
                    self.check(force=notified)
                if failing:
                    logger.warning("%s: reachable again; following other replicas' writes", self.what)
                failing = False
            except Exception as err:  # noqa: BLE001  (a database outage must not end the thread)
                if not failing:
                    reason = (str(err).splitlines() or [type(err).__name__])[0]
                    logger.warning(
                        "%s: cannot follow other replicas' writes (retrying): %s", self.what, reason
                    )
                failing = True
                if listener is not None:
                    listener.close()
                    listener = None
                self._stop.wait(min(self.poll_s, RETRY_S))
        if listener is not None:
            listener.close()
