"""A durable outbox: outbound records are stored in SQLite before they go to the broker.

``append`` returns once the record is in the database; a relay thread then produces the
stored records in the order they were appended and deletes each one once the broker has
acknowledged it. Records therefore survive a broker outage of any length and a crash of
the process; after a crash the ones not yet acknowledged are sent again on the next
``start`` (at-least-once: receivers drop the duplicates by ``ce_id``).

Storage: one SQLite file in WAL mode, opened with an exclusive lock (one outbox, one
owner). ``synchronous="NORMAL"`` (default) writes each commit to the WAL without fsync:
it survives a crash or ``kill -9`` of the process (the OS keeps the written pages), not a
power cut or a kernel crash. ``synchronous="FULL"`` fsyncs every commit and survives those
too, at the price of one fsync per commit. Concurrent ``append`` calls share commits
(group commit): while one batch is being written, the next one collects.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Sequence
from functools import partial
from typing import Literal

from ._errors import BridgeError, ConfigError, QueueFullError, TransportError
from ._outbox_base import BaseOutbox, pack_headers, unpack_headers
from ._transport import DeliveryCallback, Producer, Record

log = logging.getLogger("bridge.outbox")

__all__ = ["Outbox"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    -- AUTOINCREMENT: ids never go back, not even after the newest rows were deleted. With
    -- max + 1 a commit landing after the relay deleted the tail reused ids at or below
    -- the relay's cursor, and rows after them (above it) were sent first: out of order.
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key BLOB,
    value BLOB NOT NULL,
    headers BLOB NOT NULL
)
"""
_DEAD_SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_letters (
    -- Records the broker refused for good (too large, an invalid or unauthorized topic),
    -- moved out of the queue so that they hold back nothing: inspect, fix, re-emit.
    id INTEGER PRIMARY KEY,  -- the outbox row's id
    topic TEXT NOT NULL,
    key BLOB,
    value BLOB NOT NULL,
    headers BLOB NOT NULL,
    error TEXT NOT NULL,
    refused_at REAL NOT NULL  -- Unix time
)
"""
_PARK = (
    "INSERT OR REPLACE INTO dead_letters "
    "SELECT id, topic, key, value, headers, ?, ? FROM outbox WHERE id = ?"
)
_INSERT = "INSERT INTO outbox (topic, key, value, headers) VALUES (?, ?, ?, ?)"
_DELETE_BATCH = 2000  # delete delivered rows once this many are delivered,
_DELETE_INTERVAL = 0.05  # or this many seconds after the last delete
_SMALL_BATCH = 64  # after producing fewer rows than this, the relay waits
_LINGER = 0.002  # this many seconds for more to collect
_Row = tuple[str, bytes | None, bytes, bytes]


class _Batch:
    """Rows that one commit writes; appenders wait until ``done``."""

    __slots__ = ("done", "error", "rows")

    def __init__(self) -> None:
        self.rows: list[_Row] = []
        self.done = False
        self.error: BaseException | None = None


class Outbox(BaseOutbox):
    """A SQLite-backed queue of outbound records with a relay thread that produces them.

    ``path``: the database file (created if missing). ``max_events``: the most
    undelivered records it holds; ``append`` then waits up to ``full_timeout`` seconds
    for the relay to make room and raises ``QueueFullError``. ``synchronous``: "NORMAL"
    (survives a process crash) or "FULL" (also a power cut; fsync per commit).
    ``max_in_flight``: how many records the relay hands to the producer before it waits
    for their delivery reports. ``retry_backoff``/``max_retry_backoff``: the wait before
    resending after a failed delivery (doubling).

    Raises ``ConfigError`` if another outbox (in this or another process) has the file
    open. Thread safe: ``append`` may be called from any number of threads.
    """

    def __init__(
        self,
        path: str,
        *,
        max_events: int = 1_000_000,
        full_timeout: float = 5.0,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        max_in_flight: int = 10_000,
        retry_backoff: float = 0.1,
        max_retry_backoff: float = 5.0,
    ) -> None:
        if max_events < 1 or max_in_flight < 1:
            raise ConfigError("outbox max_events and max_in_flight must be at least 1")
        if synchronous not in ("NORMAL", "FULL"):
            raise ConfigError(f"outbox synchronous must be NORMAL or FULL, not {synchronous!r}")
        if full_timeout < 0 or retry_backoff < 0 or max_retry_backoff < 0:
            raise ConfigError("outbox timeouts and backoffs must not be negative")
        self.path = path
        self.max_events = max_events
        self.full_timeout = full_timeout
        self.max_in_flight = max_in_flight
        self.retry_backoff = retry_backoff
        self.max_retry_backoff = max_retry_backoff
        self.retries = 0
        """Records whose delivery failed and that the relay sends again (relay thread)."""
        self.refused = 0
        """Records the broker refused for good, moved to the ``dead_letters`` table."""
        self._problem: str | None = None
        self._db = self._open(path, synchronous)
        self._db_lock = threading.Lock()  # one connection, used by appenders and the relay
        (self._count,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        self._cond = threading.Condition()  # guards _count, _batch, _writing, _closed
        self._batch = _Batch()
        self._writing = False
        self._closed = False
        self._wake = threading.Event()  # new rows or delivery reports for the relay
        self._reports: deque[tuple[Exception | None, Record, int]] = deque()
        self._stopping = threading.Event()
        self._stop_deadline = 0.0
        self._thread: threading.Thread | None = None

    @staticmethod
    def _open(path: str, synchronous: str) -> sqlite3.Connection:
        db = sqlite3.connect(path, timeout=0, check_same_thread=False, isolation_level=None)
        try:
            # Exclusive: one owner, and no shared-memory index is needed for the WAL.
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous}")
            db.execute("PRAGMA journal_size_limit=67108864")  # truncate the WAL to 64 MiB
            db.execute("PRAGMA wal_autocheckpoint=4000")  # fewer, larger checkpoints
            db.execute(_SCHEMA)
            db.execute(_DEAD_SCHEMA)
            db.execute("BEGIN IMMEDIATE")  # take the write lock now, hold it until close
            db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            db.close()
            if "locked" in str(exc):
                raise ConfigError(f"outbox {path} is in use by another bridge") from exc
            raise ConfigError(f"cannot open outbox {path}: {exc}") from exc
        return db

    @property
    def problem(self) -> str | None:
        """The storage error the relay is retrying (disk full, say), None while it works."""
        return self._problem

    def dead_letters(self) -> int:
        """The number of records in the ``dead_letters`` table (refused for good)."""
        with self._db_lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()
        return int(count)

    def pending(self) -> int:
        """The number of stored records not yet acknowledged by the broker."""
        with self._cond:
            return int(self._count)

    # -- appending (any thread) -------------------------------------------------------

    def append(
        self, topic: str, value: bytes, key: bytes | None, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        """Store one record; return once it is committed to the database.

        Blocks while ``max_events`` undelivered records are stored, at most
        ``full_timeout`` seconds, then raises ``QueueFullError``. Raises ``BridgeError``
        if the database cannot be written (disk full) and after ``stop``.
        """
        row: _Row = (topic, key, bytes(value), pack_headers(headers))
        with self._cond:
            self._wait_for_room()
            batch = self._batch
            batch.rows.append(row)
            self._count += 1
            while not batch.done:
                if self._writing:
                    self._cond.wait()
                else:
                    self._write_open_batch()
        if batch.error is not None:
            raise BridgeError(
                f"outbox {self.path}: cannot store the record: {batch.error}"
            ) from batch.error
        self._wake.set()

    def _wait_for_room(self) -> None:
        deadline: float | None = None
        while not self._closed and self._count >= self.max_events:
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.full_timeout
            if now >= deadline:
                raise QueueFullError(
                    f"outbox {self.path} holds {self._count} undelivered events, its limit "
                    f"(outbox_max_events={self.max_events}), and none was delivered for "
                    f"{self.full_timeout:g} s: is the broker reachable?"
                )
            self._cond.wait(deadline - now)
        if self._closed:
            raise BridgeError(f"outbox {self.path} is closed")

    def _write_open_batch(self) -> None:
        """Commit the open batch as its leader (called with ``_cond`` held)."""
        self._writing = True
        batch, self._batch = self._batch, _Batch()
        self._cond.release()
        try:
            with self._db_lock:
                if len(batch.rows) == 1:  # autocommit: one statement, one transaction
                    self._db.execute(_INSERT, batch.rows[0])
                else:
                    try:
                        self._db.execute("BEGIN")
                        self._db.executemany(_INSERT, batch.rows)
                        self._db.execute("COMMIT")
                    except BaseException:
                        if self._db.in_transaction:
                            self._db.execute("ROLLBACK")
                        raise
        except BaseException as exc:
            batch.error = exc
        finally:
            self._cond.acquire()
            self._writing = False
            batch.done = True
            if batch.error is not None:
                self._count -= len(batch.rows)
            self._cond.notify_all()

    # -- the relay ----------------------------------------------------------------------

    def start(self, producer: Producer, on_delivery: DeliveryCallback) -> None:
        """Start the relay thread: produce stored records in order, delete delivered ones.

        Records left by an earlier run are sent first. ``on_delivery(None, record)`` is
        called (from the relay thread) for each delivered record. A failed delivery is
        not reported there, since it is not final: the relay logs it, counts it in
        ``retries``, waits for the records in flight, and resends from the first
        undelivered one, so records that were in flight after it may reach the broker
        twice. A record the broker refused for good (``TransportError.permanent``: too
        large for the topic, an invalid or unauthorized topic) is not resent: it moves to
        the ``dead_letters`` table, is logged once, counted in ``refused`` and reported
        as ``on_delivery(error, record)``; the records after it go on. A storage error
        (disk full) is retried with backoff; ``problem`` names it meanwhile. Starts once.
        """
        if self._thread is not None:
            raise RuntimeError("an outbox starts once")
        self._thread = threading.Thread(
            target=self._relay, args=(producer, on_delivery), name="bridge-outbox", daemon=True
        )
        self._thread.start()

    @property
    def alive(self) -> bool:
        """True while the relay thread runs (from ``start`` until ``stop`` or a crash)."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float) -> None:
        """Stop the relay after trying for up to ``timeout`` seconds to deliver everything
        stored; close the database. Undelivered records stay for the next ``start``.
        Idempotent; ``append`` raises afterwards."""
        self._stop_deadline = time.monotonic() + timeout
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            while self._writing:
                self._cond.wait()
        with self._db_lock:
            self._db.close()

    def _relay(self, producer: Producer, on_delivery: DeliveryCallback) -> None:
        try:
            _Relay(self, producer, on_delivery).run()
        except BaseException:  # never die silently: the records would wait forever
            log.exception(
                "outbox %s: the relay stopped; records wait for the next start", self.path
            )


class _Relay:
    """The relay thread's state: a cursor over the rows and the records in flight."""

    def __init__(self, outbox: Outbox, producer: Producer, on_delivery: DeliveryCallback) -> None:
        self.outbox = outbox
        self.producer = producer
        self.on_delivery = on_delivery
        self.cursor = 0  # the id of the last row handed to the producer
        self.in_flight = 0
        self.failed_at: int | None = None  # the smallest id whose delivery failed
        self.backoff = outbox.retry_backoff
        self.delivered: list[int] = []
        self.refused: list[tuple[int, str]] = []  # (row id, reason) to park
        self.send_alone = False  # after a refusal: produce the next row alone
        self.alone: int | None = None  # the row produced alone, until its report
        self.deleted_at = time.monotonic()
        self.storage_backoff = outbox.retry_backoff

    def run(self) -> None:
        box = self.outbox
        while True:
            try:
                if self._step():
                    return
            except sqlite3.Error as exc:
                # A full disk, say: keep what is known (delivered and refused ids stay
                # listed), wait, and try again; never end the relay, or stored records
                # would wait for a restart.
                if box._problem is None:
                    log.error(
                        "outbox %s: storage error (%s); the relay retries with backoff",
                        box.path,
                        exc,
                    )
                box._problem = f"outbox {box.path}: {exc}"
                if box._stopping.is_set():
                    return  # what is stored (delivered or not) waits for the next start
                box._stopping.wait(self.storage_backoff)
                self.storage_backoff = min(self.storage_backoff * 2, box.max_retry_backoff)
                continue
            if box._problem is not None and not self.delivered and not self.refused:
                log.warning("outbox %s: storage works again; the relay goes on", box.path)
                box._problem = None
                self.storage_backoff = box.retry_backoff

    def _step(self) -> bool:
        """One round of the relay; True when it is done (stopped)."""
        box = self.outbox
        box._wake.clear()  # set again by any append or report arriving from here on
        progressed = self._serve_reports()
        stopping = box._stopping.is_set()
        if self.refused or (
            self.delivered
            and (
                stopping
                or self.in_flight == 0
                or len(self.delivered) >= _DELETE_BATCH
                or time.monotonic() - self.deleted_at >= _DELETE_INTERVAL
            )
        ):
            self._delete_delivered()
        if stopping and (
            time.monotonic() >= box._stop_deadline
            or (self.in_flight == 0 and self.failed_at is None and box.pending() == 0)
        ):
            return True
        produced = 0
        if self.failed_at is not None:
            if self.in_flight == 0:
                self._rewind()
                progressed = True
        elif self.in_flight < box.max_in_flight and self.alone is None:
            produced = self._produce_more()
        if 0 < produced < _SMALL_BATCH and not stopping:
            box._stopping.wait(_LINGER)  # let appends collect: fewer, larger batches
        elif not (progressed or produced):
            box._wake.wait(0.05)
        return False

    def _report(self, row_id: int, error: Exception | None, record: Record) -> None:
        # Any thread that serves delivery reports may run this; the relay does the rest.
        reports = self.outbox._reports
        reports.append((error, record, row_id))
        if len(reports) == 1:  # the relay takes them all at once: wake it for the first
            self.outbox._wake.set()

    def _serve_reports(self) -> bool:
        try:
            self.producer.poll(0)
        except TransportError as exc:
            log.error("outbox %s: serving delivery reports failed: %s", self.outbox.path, exc)
        reports = self.outbox._reports
        served = 0
        while reports:
            error, record, row_id = reports.popleft()
            served += 1
            self.in_flight -= 1
            alone = row_id == self.alone
            if alone:
                self.alone = None
            if error is None:
                self.delivered.append(row_id)
                self.backoff = self.outbox.retry_backoff
                self._tell(None, record)
            elif getattr(error, "permanent", False) and alone:
                self._refuse(row_id, error, record)
            else:
                if getattr(error, "permanent", False):
                    # A refusal of a batch refuses every record in it (librdkafka does not
                    # split a batch the broker found too large): resend the first failed
                    # row alone, and refuse it for good only if it fails alone too.
                    self.send_alone = True
                self.outbox.retries += 1
                if self.failed_at is None:
                    log.warning(
                        "outbox %s: record %d to %r not delivered (%s); resending from it",
                        self.outbox.path,
                        row_id,
                        record.topic,
                        error,
                    )
                if self.failed_at is None or row_id < self.failed_at:
                    self.failed_at = row_id
        return served > 0

    def _tell(self, error: Exception | None, record: Record) -> None:
        try:
            self.on_delivery(error, record)
        except Exception:
            log.exception("outbox %s: the delivery callback raised", self.outbox.path)

    def _refuse(self, row_id: int, error: Exception, record: Record) -> None:
        """The broker refused row ``row_id`` for good: park it, report it, go on."""
        log.error(
            "outbox %s: record %d to %r refused for good (%s); moved to the dead_letters "
            "table, the records after it go on",
            self.outbox.path,
            row_id,
            record.topic,
            error,
        )
        self.refused.append((row_id, str(error)))
        self.outbox.refused += 1
        self._tell(error, record)

    def _delete_delivered(self) -> None:
        box = self.outbox
        ids = sorted(self.delivered)
        refused = list(self.refused)
        ranges: list[tuple[int, int]] = []  # runs of consecutive ids: usually one
        for i in ids:
            if ranges and ranges[-1][1] == i - 1:
                ranges[-1] = (ranges[-1][0], i)
            else:
                ranges.append((i, i))
        now = time.time()
        ranges += [(i, i) for i, _ in refused]
        with box._db_lock:
            try:
                box._db.execute("BEGIN")
                box._db.executemany(_PARK, [(reason, now, i) for i, reason in refused])
                box._db.executemany("DELETE FROM outbox WHERE id BETWEEN ? AND ?", ranges)
                box._db.execute("COMMIT")
            except BaseException:
                if box._db.in_transaction:
                    box._db.execute("ROLLBACK")
                raise
        # Forgotten only once committed: after a storage error the next round retries.
        self.delivered = self.delivered[len(ids) :]
        self.refused = self.refused[len(refused) :]
        self.deleted_at = time.monotonic()
        with box._cond:
            box._count -= len(ids) + len(refused)
            box._cond.notify_all()

    def _rewind(self) -> None:
        """After a failure, all in flight settled: resend from the first undelivered row."""
        assert self.failed_at is not None
        self.cursor = self.failed_at - 1
        self.failed_at = None
        if self.outbox._stopping.wait(self.backoff):
            return
        self.backoff = min(self.backoff * 2, self.outbox.max_retry_backoff)

    def _produce_more(self) -> int:
        """Produce the next stored rows; return how many."""
        box = self.outbox
        limit = 1 if self.send_alone else min(box.max_in_flight - self.in_flight, 1000)
        with box._db_lock:
            rows = box._db.execute(
                "SELECT id, topic, key, value, headers FROM outbox WHERE id > ? ORDER BY id "
                "LIMIT ?",
                (self.cursor, limit),
            ).fetchall()
        for row_id, topic, key, value, headers in rows:
            try:
                self.producer.produce(
                    topic, value, key, unpack_headers(headers), partial(self._report, row_id)
                )
            except TransportError as exc:
                if exc.permanent:  # the client refuses it (over message.max.bytes, say)
                    self.cursor = row_id
                    refused = Record(topic, -1, -1, key, value, unpack_headers(headers))
                    self._refuse(row_id, exc, refused)
                    continue
                # queue full or producer closed: try again later
                log.warning("outbox %s: cannot produce record %d: %s", box.path, row_id, exc)
                box._stopping.wait(self.backoff)
                return 0
            self.cursor = row_id
            self.in_flight += 1
            if self.send_alone:
                self.send_alone = False
                self.alone = row_id
        if not rows and self.in_flight == 0:
            # Everything produced was delivered and deleted. A file made before ids were
            # AUTOINCREMENT reuses ids once the table empties: start over from the
            # beginning (a no-op cost for newer files).
            self.cursor = 0
        return len(rows)
