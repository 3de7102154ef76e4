"""Following the writes of other processes on the same catalogue (several replicas on one PostgreSQL).

Each replica keeps an in-memory index and name cache built from the store; its own writes update them at once
(:class:`~animal_reid.serve.service.Service`), and a :class:`ChangeFollower` thread brings in everyone else's:

- **wake-up**: on PostgreSQL every statement that writes (INSERT, UPDATE, DELETE), whoever runs it through a
  :class:`~animal_reid.serve.store.Catalogue`, also sends ``NOTIFY animal_reid_changes`` in its transaction
  (delivered at commit, dropped on rollback); the follower listens on a connection of its own, made again (and
  followed by a look) when it drops. Everywhere, it also wakes every ``poll_s`` seconds, which covers a lost
  listening connection and writes made by other tools (psql, a restore).
- **did anything change** (:class:`ChangeToken`, one cheap query): on SQLite ``PRAGMA data_version`` of a
  connection kept for it (it changes whenever another connection commits); on PostgreSQL the count and sums of
  the sightings' ids and individual ids plus an md5 of every individual's id, species and name (sums could in
  principle coincide after a mix of changes by another tool between two looks; a NOTIFY, which every write
  through a Catalogue sends, is followed by a sync whatever the token says).
- **what changed**: when the token moved, :meth:`Service.sync` reads every sighting's (individual, species) and
  every name (no embeddings) and applies the difference to the index: new sightings (their embeddings read
  for them alone), deleted ones, moved ones (merges, species edits), renamed individuals. So a replica that
  was down catches up like one that was not: the difference does not depend on what it missed.

The token is read *before* the state it stands for, so a commit that lands in between moves it again and is
picked up at the next wake-up: nothing is missed, at worst looked at twice.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import sqlalchemy as sa

logger = logging.getLogger(__name__)

CHANNEL = "animal_reid_changes"
RETRY_S = 1.0  # after a failure (catalogue unreachable), look again this soon (or every poll_s if shorter)
_WRITES = ("INSERT", "UPDATE", "DELETE")


def notify_on_write(engine: sa.Engine) -> None:
    """On PostgreSQL, make every writing statement on ``engine`` also ``NOTIFY`` the replicas' channel."""
    if engine.dialect.name != "postgresql":
        return

    def _after(_conn, cursor, statement: str, _params, _context, _many) -> None:
        if statement.lstrip()[:6].upper() in _WRITES:
            # same DBAPI connection, same transaction: delivered when it commits, folded into one per transaction
            cursor.connection.execute(f"NOTIFY {CHANNEL}")

    sa.event.listen(engine, "after_cursor_execute", _after)


_PG_TOKEN = sa.text(
    "SELECT (SELECT count(*) || ':' || coalesce(sum(id), 0) || ':' || coalesce(sum(individual_id), 0) || ':'"
    " || coalesce(sum((id % 65521) * (individual_id % 65521)), 0) FROM sightings),"
    " (SELECT md5(coalesce(string_agg(id || ':' || species || ':' || name, '/' ORDER BY id), ''))"
    " FROM individuals)"
)


_PORTABLE_TOKEN = (
    "SELECT (SELECT count(*) FROM sightings), (SELECT sum(id) FROM sightings),"
    " (SELECT sum(individual_id) FROM sightings), (SELECT count(*) FROM individuals),"
    " (SELECT sum(id) FROM individuals), (SELECT sum(length(name) + length(species)) FROM individuals)"
)


class ChangeToken:
    """A value that changes whenever the catalogue's sightings or individuals change (see the module doc)."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self._sqlite = None  # the connection whose data_version is read (it must be the same one every time)

    def read(self) -> Any:
        if self.engine.dialect.name == "sqlite":
            if self._sqlite is None:  # ours, not the pool's: data_version counts other connections' commits
                self._sqlite = dbapi_connect(self.engine, check_same_thread=False)
            cur = self._sqlite.cursor()
            try:
                return cur.execute("PRAGMA data_version").fetchone()[0]
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

    def wait(self, timeout_s: float, stop: threading.Event) -> bool:
        """True at a notification; False after ``timeout_s`` or once ``stop`` is set (looked at twice a second)."""
        deadline = time.monotonic() + timeout_s
        while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
            if list(self._conn.notifies(timeout=min(left, 0.5), stop_after=1)):
                return True
        return False

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

    def prime(self) -> None:
        """Read the token now: call before building the index, so a commit after this is looked at later."""
        self._seen = self._token.read()

    def check(self, force: bool = False) -> bool:
        """``sync()`` if the catalogue changed since the last look (or ``force``); True when it synced."""
        token = self._token.read()
        if token == self._seen and not force:
            return False
        self.sync()
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
                    notified = listener.wait(self.poll_s, self._stop)
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
