"""Durable outbox of webhook deliveries: a SQLite database in WAL mode with ``synchronous=FULL``.

Table ``outbox`` contains one row per (endpoint, event): the event JSON, its ``alert_id`` and
``sequence``, the number of delivery attempts, the time of the next attempt, the last error
and, once delivered, ``delivered_at``. A row with ``delivered_at IS NULL`` is pending. A row
that fails for good moves to table ``dead_letters`` with its last error and keeps its id, so
a retry puts it back at its place in the delivery order.

``UNIQUE(endpoint, alert_id, sequence)`` in both tables makes adding an event idempotent. The
daemon delivers at least once and its events are deterministic. So the events that it
re-emits after a crash are ignored here instead of being delivered twice, until the
delivered or dead rows are purged.

Times are Unix seconds (wall clock), because they must survive a restart.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

logger = logging.getLogger(__name__)

_COLUMNS = "id, endpoint, alert_id, sequence, event, created_at, attempts, next_attempt_at, last_error"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint TEXT NOT NULL,
    alert_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    event TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    delivered_at REAL,
    UNIQUE (endpoint, alert_id, sequence)
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (endpoint, id) WHERE delivered_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_delivered ON outbox (delivered_at) WHERE delivered_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    endpoint TEXT NOT NULL,
    alert_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    event TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL,
    dead_at REAL NOT NULL,
    UNIQUE (endpoint, alert_id, sequence)
);
"""


class OutboxError(RuntimeError):
    """The outbox database cannot be opened, read or written."""


@dataclass(frozen=True)
class OutboxRow:
    """One delivery of one event to one endpoint, pending, delivered or dead."""

    id: int
    endpoint: str
    alert_id: str
    sequence: int
    event: str
    created_at: float
    attempts: int
    next_attempt_at: float
    last_error: str | None
    delivered_at: float | None = None
    dead_at: float | None = None

    def event_dict(self) -> dict:
        return json.loads(self.event)


def event_key(event: dict) -> tuple[str, int]:
    """Return ``(alert_id, sequence)`` of an incident event; raise ValueError when one is missing."""
    try:
        alert_id = event["alert_id"]
        sequence = event["sequence"]
    except KeyError as error:
        raise ValueError(f"incident event has no {error.args[0]!r}; the outbox needs alert_id and sequence") from None
    if isinstance(sequence, bool) or not isinstance(sequence, int):
        raise ValueError(f"incident event {alert_id!r} has sequence {sequence!r}; expected an integer")
    return str(alert_id), sequence


class Outbox:
    """The outbox database at ``path``, created when missing; safe to share between threads.

    Every method runs in its own transaction and is serialised by a lock, because the
    connection is shared by the stream thread and the sender threads. Other processes, e.g.
    ``streamad alerts``, may open the same file: SQLite's locking serialises their writes,
    and a writer waits up to ``busy_timeout_s`` for the lock.
    """

    def __init__(self, path: str | Path, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        if self.path.parent and not self.path.parent.is_dir():
            raise OutboxError(f"outbox directory {str(self.path.parent)!r} not found; create it or pass another --outbox path")
        self._lock = threading.Lock()
        try:
            self._connection = sqlite3.connect(
                str(self.path), timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            mode = self._connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(f"outbox {str(self.path)!r} cannot use WAL mode (got {mode!r}); put it on a local file system")
            self._connection.execute("PRAGMA synchronous=FULL")
            self._connection.executescript(_SCHEMA)
        except sqlite3.Error as error:
            if isinstance(error, sqlite3.DatabaseError) and not isinstance(error, sqlite3.OperationalError):
                # A corrupt file or one that is not SQLite, as opposed to a missing directory or a lock.
                raise OutboxError(
                    f"outbox {str(self.path)!r} cannot be opened: {error}; move the file aside and restart, which starts "
                    "an empty outbox (the events pending in the old file are lost unless recovered with sqlite3)"
                ) from error
            raise OutboxError(f"outbox {str(self.path)!r} cannot be opened: {error}") from error

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def _run(self, function):
        """Run ``function(connection)`` in one write transaction and return its result."""
        with self._lock:
            try:
                self._connection.execute("BEGIN IMMEDIATE")
                try:
                    result = function(self._connection)
                except BaseException:
                    self._connection.execute("ROLLBACK")
                    raise
                self._connection.execute("COMMIT")
                return result
            except sqlite3.Error as error:
                raise OutboxError(f"outbox {str(self.path)!r}: {error}") from error

    def _query(self, sql: str, parameters: Sequence = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._connection.execute(sql, parameters).fetchall()
            except sqlite3.Error as error:
                raise OutboxError(f"outbox {str(self.path)!r}: {error}") from error

    def add(self, rows: Iterable[tuple[str, dict]], now: float | None = None) -> int:
        """Insert ``(endpoint, event)`` rows in one transaction; return how many were new.

        A row whose (endpoint, alert_id, sequence) is already in the outbox or the dead
        letters is ignored.
        """
        now = time.time() if now is None else now
        prepared = []
        for endpoint, event in rows:
            alert_id, sequence = event_key(event)
            prepared.append((endpoint, alert_id, sequence, json.dumps(event, sort_keys=True), now, endpoint, alert_id, sequence))

        def insert(connection):
            before = connection.total_changes
            connection.executemany(
                "INSERT OR IGNORE INTO outbox (endpoint, alert_id, sequence, event, created_at) "
                "SELECT ?, ?, ?, ?, ? WHERE NOT EXISTS "
                "(SELECT 1 FROM dead_letters WHERE endpoint = ? AND alert_id = ? AND sequence = ?)",
                prepared,
            )
            return connection.total_changes - before

        return self._run(insert) if prepared else 0

    def pending(self, endpoint: str, limit: int = 100) -> list[OutboxRow]:
        """Return the first ``limit`` pending rows of ``endpoint`` in insertion order."""
        rows = self._query(
            f"SELECT {_COLUMNS} FROM outbox WHERE endpoint = ? AND delivered_at IS NULL ORDER BY id LIMIT ?",
            (endpoint, limit),
        )
        return [OutboxRow(*row) for row in rows]

    def backlog(self, endpoint: str | None = None) -> int:
        """Return the number of pending rows, of one endpoint or of all."""
        if endpoint is None:
            return self._query("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL")[0][0]
        return self._query("SELECT COUNT(*) FROM outbox WHERE endpoint = ? AND delivered_at IS NULL", (endpoint,))[0][0]

    def dead_count(self, endpoint: str | None = None) -> int:
        """Return the number of dead letters, of one endpoint or of all."""
        if endpoint is None:
            return self._query("SELECT COUNT(*) FROM dead_letters")[0][0]
        return self._query("SELECT COUNT(*) FROM dead_letters WHERE endpoint = ?", (endpoint,))[0][0]

    def backlog_by_endpoint(self) -> dict[str, int]:
        rows = self._query("SELECT endpoint, COUNT(*) FROM outbox WHERE delivered_at IS NULL GROUP BY endpoint")
        return dict(rows)

    def mark_delivered(self, ids: Sequence[int], now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._run(
            lambda connection: connection.executemany(
                "UPDATE outbox SET delivered_at = ?, attempts = attempts + 1 WHERE id = ?", [(now, id_) for id_ in ids]
            )
        )

    def mark_failed(self, ids: Sequence[int], error: str, next_attempt_at: float) -> None:
        """Count a failed attempt of each row and schedule the next one."""
        self._run(
            lambda connection: connection.executemany(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? WHERE id = ?",
                [(error, next_attempt_at, id_) for id_ in ids],
            )
        )

    def move_to_dead(self, ids: Sequence[int], error: str, count_attempt: bool = True, now: float | None = None) -> None:
        """Move rows to the dead letters with ``error``, counting a failed attempt unless ``count_attempt`` is False."""
        now = time.time() if now is None else now
        increment = 1 if count_attempt else 0

        def move(connection):
            for id_ in ids:
                connection.execute(
                    "INSERT OR REPLACE INTO dead_letters "
                    "(id, endpoint, alert_id, sequence, event, created_at, attempts, next_attempt_at, last_error, dead_at) "
                    "SELECT id, endpoint, alert_id, sequence, event, created_at, attempts + ?, next_attempt_at, ?, ? "
                    "FROM outbox WHERE id = ? AND delivered_at IS NULL",
                    (increment, error, now, id_),
                )
                connection.execute("DELETE FROM outbox WHERE id = ? AND delivered_at IS NULL", (id_,))

        self._run(move)

    def retry(self, ids: Sequence[int] | None = None, now: float | None = None) -> int:
        """Move dead rows back to pending with no attempts and a new age; ``ids=None`` moves all. Return the count.

        A row keeps its id, so it is delivered before the rows of its endpoint that were
        added after it.
        """
        now = time.time() if now is None else now

        def move(connection):
            if ids is None:
                selected = [row[0] for row in connection.execute("SELECT id FROM dead_letters ORDER BY id")]
            else:
                selected = list(ids)
            moved = 0
            for id_ in selected:
                cursor = connection.execute(
                    "INSERT INTO outbox (id, endpoint, alert_id, sequence, event, created_at, attempts, next_attempt_at, last_error) "
                    "SELECT id, endpoint, alert_id, sequence, event, ?, 0, 0, last_error FROM dead_letters WHERE id = ?",
                    (now, id_),
                )
                if cursor.rowcount:
                    connection.execute("DELETE FROM dead_letters WHERE id = ?", (id_,))
                    moved += 1
            return moved

        return self._run(move)

    def purge(self, delivered: bool, dead: bool, older_than_s: float = 0.0, now: float | None = None) -> dict[str, int]:
        """Delete delivered and/or dead rows older than ``older_than_s``; pending rows are never deleted.

        A purged row no longer blocks the same event from being added again, so keep delivered
        rows for longer than a crashed daemon can take to re-emit its events.
        """
        now = time.time() if now is None else now
        cutoff = now - older_than_s

        def delete(connection):
            counts = {"delivered": 0, "dead": 0}
            if delivered:
                counts["delivered"] = connection.execute(
                    "DELETE FROM outbox WHERE delivered_at IS NOT NULL AND delivered_at <= ?", (cutoff,)
                ).rowcount
            if dead:
                counts["dead"] = connection.execute("DELETE FROM dead_letters WHERE dead_at <= ?", (cutoff,)).rowcount
            return counts

        return self._run(delete)

    def rows(self, state: str = "pending", endpoint: str | None = None, limit: int | None = None) -> list[OutboxRow]:
        """Return the rows in ``state`` (pending, delivered or dead) in id order."""
        filters = []
        parameters: list = []
        if state == "dead":
            sql = f"SELECT {_COLUMNS}, NULL, dead_at FROM dead_letters"
        elif state in ("pending", "delivered"):
            sql = f"SELECT {_COLUMNS}, delivered_at, NULL FROM outbox"
            filters.append("delivered_at IS NULL" if state == "pending" else "delivered_at IS NOT NULL")
        else:
            raise ValueError(f"outbox state {state!r} is unknown; use pending, delivered or dead")
        if endpoint is not None:
            filters.append("endpoint = ?")
            parameters.append(endpoint)
        if filters:
            sql += " WHERE " + " AND ".join(filters)
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            parameters.append(limit)
        return [OutboxRow(*row) for row in self._query(sql, parameters)]

    def counts(self) -> dict[str, int]:
        """Return the number of pending, delivered and dead rows."""
        pending, delivered = self._query(
            "SELECT COALESCE(SUM(delivered_at IS NULL), 0), COALESCE(SUM(delivered_at IS NOT NULL), 0) FROM outbox"
        )[0]
        dead = self._query("SELECT COUNT(*) FROM dead_letters")[0][0]
        return {"pending": pending, "delivered": delivered, "dead": dead}
