"""Duplicate detection: the ids of handled events, kept in memory or in SQLite.

``MemoryDedup`` (the default) forgets on restart. With ``SqliteDedup`` a restarted
bridge does not run its handlers again for an event that was handled before the restart
and is delivered again (Kafka redelivers everything after the last committed offset):
effectively-once handling. The one gap: a crash after a handler
finished but before ``add`` recorded the id lets that one event run again.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import deque
from typing import Literal, Protocol

from ._errors import ConfigError

__all__ = ["DedupStore", "MemoryDedup", "SqliteDedup"]


class DedupStore(Protocol):
    """Remembers handled event ids (in memory, or in SQLite across restarts)."""

    def seen(self, event_id: str) -> bool: ...
    def add(self, event_id: str) -> None: ...
    def close(self) -> None: ...


class MemoryDedup:
    """Remembers recent event ids for ``window`` seconds, at most ``size`` of them.

    Thread safe: ``seen`` is one dictionary read, ``add`` two atomic operations, and
    eviction holds a lock.
    """

    __slots__ = ("_ids", "_lock", "_order", "size", "window")

    def __init__(self, window: float, size: int) -> None:
        self.window = window
        self.size = size
        self._ids: dict[str, float] = {}  # id -> when it was added
        self._order: deque[tuple[float, str]] = deque()  # (when, id), oldest first
        self._lock = threading.Lock()

    def seen(self, event_id: str) -> bool:
        at = self._ids.get(event_id)
        return at is not None and time.monotonic() - at < self.window

    def add(self, event_id: str) -> None:
        now = time.monotonic()
        self._ids[event_id] = now
        order = self._order
        order.append((now, event_id))
        if len(order) > self.size or len(order) & 255 == 0:
            self._evict(now)

    def _evict(self, now: float) -> None:
        # Beyond the size bound, and (checked now and then) past the window. An id added
        # again has an older entry in the order too: only its last one counts. One
        # evictor at a time; adds (two atomic operations) need no lock.
        with self._lock:
            ids, order, horizon = self._ids, self._order, now - self.window
            while order and (len(order) > self.size or order[0][0] <= horizon):
                at, old = order.popleft()
                if ids.get(old) == at:
                    del ids[old]

    def __len__(self) -> int:
        return len(self._ids)

    def close(self) -> None:
        """Nothing to release."""


_PRUNE_EVERY = 1000  # adds between two prunes of expired and surplus ids
_BUSY_TIMEOUT = 10.0  # seconds a process waits for another one's lock on the store


def _enable_wal(db: sqlite3.Connection) -> None:
    """Switch ``db`` to WAL, waiting (bounded) while another process creates the file.

    Two processes opening one fresh file race for the switch, and SQLite answers the loser
    "database is locked" at once, without its busy handler: retry until ``_BUSY_TIMEOUT``.
    """
    deadline = time.monotonic() + _BUSY_TIMEOUT
    delay = 0.001
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


class SqliteDedup:
    """Remembers handled event ids for ``window`` seconds (wall clock, so across
    restarts), about ``size`` of them (pruned every 1000 adds), in the SQLite file
    ``path`` (WAL mode).

    ``add`` commits before it returns, so an id added before the bridge stores the
    record's offset is on disk before the offset can be committed. ``synchronous``:
    "NORMAL" (default) survives a crash or ``kill -9`` of the process; "FULL" also a power
    cut, at one fsync per handled event. Several bridges (processes) may share one file.
    Thread safe: one connection, used under a lock.
    """

    def __init__(
        self,
        path: str,
        window: float,
        size: int,
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    ) -> None:
        if window < 0 or size < 0:
            raise ConfigError("the dedup window and size must not be negative")
        if synchronous not in ("NORMAL", "FULL"):
            raise ConfigError(f"dedup synchronous must be NORMAL or FULL, not {synchronous!r}")
        self.path = path
        self.window = window
        self.size = size
        try:
            self._db = sqlite3.connect(
                path, timeout=_BUSY_TIMEOUT, check_same_thread=False, isolation_level=None
            )
            _enable_wal(self._db)
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS handled (id TEXT PRIMARY KEY, at REAL NOT NULL)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS handled_at ON handled (at)")
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the dedup store {path}: {exc}") from exc
        self._adds = 0
        self._lock = threading.Lock()
        self.prune()

    def seen(self, event_id: str) -> bool:
        """True if ``event_id`` was added less than ``window`` seconds ago."""
        with self._lock:
            row = self._db.execute("SELECT at FROM handled WHERE id = ?", (event_id,)).fetchone()
        return row is not None and time.time() - row[0] < self.window

    def add(self, event_id: str) -> None:
        """Record ``event_id`` as handled now; committed when this returns."""
        if self.size == 0 or self.window == 0:
            return
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO handled (id, at) VALUES (?, ?)", (event_id, time.time())
            )
            self._adds += 1
            prune = self._adds % _PRUNE_EVERY == 0
        if prune:
            self.prune()

    def prune(self) -> None:
        """Forget ids older than the window and all but the newest ``size``."""
        with self._lock:
            self._db.execute("DELETE FROM handled WHERE at <= ?", (time.time() - self.window,))
            self._db.execute(
                "DELETE FROM handled WHERE at < (SELECT at FROM handled ORDER BY at DESC "
                "LIMIT 1 OFFSET ?)",
                (max(self.size - 1, 0),),
            )

    def __len__(self) -> int:
        """The number of ids remembered (expired ones until the next prune included)."""
        return int(self._db.execute("SELECT COUNT(*) FROM handled").fetchone()[0])

    def close(self) -> None:
        """Close the database. Idempotent."""
        self._db.close()
