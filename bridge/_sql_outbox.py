"""A transactional outbox: outbound events are rows in the application's own SQL database.

The dual-write problem: an application that commits an order and then emits
``order.placed`` makes two writes that can disagree (the order committed and the event
lost when the process dies between them; the event sent for an order that rolled back).
Here the event is a row written in the application's transaction, so it commits with the
order or not at all; a relay then produces committed rows to Kafka and deletes each one
once the broker acknowledged it.

How an emit finds the transaction: ``with outbox.bind(session):`` (a SQLAlchemy
``Session``, an ``AsyncSession`` or a Core ``Connection``). Emits inside the block belong
to that session's transaction, whoever commits it and whenever. An emit outside any
``bind`` raises ``BridgeError`` (through the bus's error policy: ``EmitError`` by
default): it is never sent outside a transaction, and never silently.

Sessions (sync and asyncio): the rows are kept with the session and inserted, in emit
order, by one statement just before the outermost commit; a rollback (of the
transaction, or of the savepoint the emit happened in) drops them. A Core ``Connection``
gets the row inserted at the emit, in its current transaction.

The relay: on PostgreSQL one relay per table leads, chosen by a session advisory lock;
the others wait as standbys and one takes over within ``standby_interval`` once the
leader's connection ends (crash, stop, network). The leader reads committed rows in id
order in batches, produces them, waits for the broker's reports, deletes the delivered
rows, and repeats; ``LISTEN``/``NOTIFY`` (a trigger on the table) wakes it as soon as a
transaction commits rows, ``poll_interval`` is the fallback. Why a leader and not
``FOR UPDATE SKIP LOCKED`` per key: see docs/decisions.md. On SQLite (no advisory
locks, no notifications) run one relay per database; it polls, and commits in its own
process wake it at once.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, SessionTransaction, scoped_session

from ._codec import headers_from_msgpack, headers_to_msgpack
from ._errors import BridgeError, ConfigError, TransportError
from ._outbox_base import BaseOutbox
from ._transport import DeliveryCallback, Producer, Record

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

log = logging.getLogger("bridge.sql_outbox")

__all__ = ["SqlOutbox", "outbox_dead_letter_table", "outbox_notify_ddl", "outbox_table"]

_Row = dict[str, Any]


def outbox_table(
    metadata: sa.MetaData, name: str = "eventbus_outbox", schema: str | None = None
) -> sa.Table:
    """The outbox table in ``metadata`` (for ``create_all`` or Alembic's autogenerate).

    The primary key is the only index the relay needs (it reads ``ORDER BY id``). On
    PostgreSQL a statement trigger (created with the table by ``create_all``) sends a
    ``NOTIFY`` named after the table when rows are inserted; see docs/reliability.md for
    the DDL and an Alembic migration.
    """
    table = sa.Table(
        name,
        metadata,
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(),
            primary_key=True,
        ),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("key", sa.LargeBinary(), nullable=True),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column("headers", sa.LargeBinary(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema=schema,
        sqlite_autoincrement=True,  # ids never reused, even after the table empties
    )
    for statement in outbox_notify_ddl(name, schema):
        ddl = sa.DDL(statement).execute_if(dialect="postgresql")  # type: ignore[no-untyped-call]
        event.listen(table, "after_create", ddl)
    return table


def outbox_dead_letter_table(
    metadata: sa.MetaData, name: str = "eventbus_outbox", schema: str | None = None
) -> sa.Table:
    """The dead-letter table of outbox ``name`` (``<name>_dead``) in ``metadata``.

    The relay moves a row here when the broker refused it for good (too large for the
    topic, an invalid or unauthorized topic), with the reason in ``error``: it then holds
    back nothing. The columns of the outbox table, ``id`` the row's id, plus ``error``
    and ``refused_at``.
    """
    return sa.Table(
        f"{name}_dead",
        metadata,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("key", sa.LargeBinary(), nullable=True),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column("headers", sa.LargeBinary(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column(
            "refused_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema=schema,
    )


def outbox_notify_ddl(name: str, schema: str | None = None) -> list[str]:
    """PostgreSQL: the function and statement trigger that ``NOTIFY`` the relay."""
    qualified = f'"{schema}"."{name}"' if schema else f'"{name}"'
    function = f'"{schema}"."{name}_notify"' if schema else f'"{name}_notify"'
    return [
        f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN PERFORM pg_notify('{name}', ''); RETURN NULL; END $$",
        f'CREATE OR REPLACE TRIGGER "{name}_notify" AFTER INSERT ON {qualified} '
        f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
    ]


_PENDING = "eventbus.sql_outbox"  # session.info key: {outbox: [(transaction, row), ...]}
_listening: list[bool] = []  # [True] once the listeners are registered
_listening_lock = threading.Lock()


def _listen_to_sessions() -> None:
    """Listen once, on the ``Session`` class (so on every session, the sync sessions of
    ``AsyncSession`` too): cheaper than per-session listeners, and a session that never
    emitted pays one dict lookup per transaction event."""
    with _listening_lock:
        if not _listening:
            event.listen(Session, "before_commit", _before_commit)
            event.listen(Session, "after_commit", _after_commit)
            event.listen(Session, "after_soft_rollback", _after_rollback)
            event.listen(Session, "after_transaction_end", _after_transaction_end)
            _listening.append(True)


def _before_commit(session: Session) -> None:
    pending: dict[SqlOutbox, list[tuple[Any, _Row]]] | None = session.info.get(_PENDING)
    if not pending or session.in_nested_transaction():
        return  # nothing emitted, or a savepoint is released: its rows wait for the outer commit
    del session.info[_PENDING]
    for outbox, rows in pending.items():
        if rows:
            session.connection().execute(outbox._insert, [row for _, row in rows])
    session.info[(_PENDING, "wrote")] = list(pending)


def _after_commit(session: Session) -> None:
    wrote: list[SqlOutbox] | None = session.info.pop((_PENDING, "wrote"), None)
    for outbox in wrote or ():
        outbox._wake.set()


def _after_rollback(session: Session, previous: SessionTransaction) -> None:
    pending: dict[SqlOutbox, list[tuple[Any, _Row]]] | None = session.info.get(_PENDING)
    for rows in (pending or {}).values():
        rows[:] = [(txn, row) for txn, row in rows if not _within(txn, previous)]


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the outermost ended: nothing of it may stay
        session.info.pop(_PENDING, None)
        session.info.pop((_PENDING, "wrote"), None)


class _SessionBinding:
    """Emits into a session: rows wait in ``session.info`` for its outermost commit."""

    __slots__ = ("outbox", "session")

    def __init__(self, outbox: SqlOutbox, session: Session) -> None:
        self.outbox = outbox
        self.session = session

    def add(self, row: _Row) -> None:
        session = self.session
        pending: dict[SqlOutbox, list[tuple[Any, _Row]]] | None = session.info.get(_PENDING)
        if pending is None:
            pending = session.info[_PENDING] = {}
        rows = pending.get(self.outbox)
        if rows is None:
            rows = pending[self.outbox] = []
        # The innermost transaction: a rollback of it (or of one around it) drops the row.
        transaction = session.get_nested_transaction() or session.get_transaction()
        if transaction is None:
            # An emit writes to the session: begin its transaction as any statement would
            # (autobegin, no I/O yet), or a rollback before anything else ran would find
            # no transaction, fire no event, and leave the row for the next commit.
            transaction = session._autobegin_t()
        rows.append((transaction, row))


class _ConnectionBinding:
    """Emits into a Core connection: the row is inserted at once, in its transaction."""

    __slots__ = ("connection", "outbox")

    def __init__(self, outbox: SqlOutbox, connection: Connection) -> None:
        self.outbox = outbox
        self.connection = connection

    def add(self, row: _Row) -> None:
        self.connection.execute(self.outbox._insert, [row])


def _within(transaction: SessionTransaction | None, ended: SessionTransaction) -> bool:
    """True if ``transaction`` is ``ended`` or nested in it."""
    while transaction is not None:
        if transaction is ended:
            return True
        transaction = transaction.parent
    return False


class SqlOutbox(BaseOutbox):
    """Outbound events as rows of a table in the application's database (SQLAlchemy 2).

    ``engine``: a sync ``Engine`` (or URL) of the database the relay reads; for an
    asyncio application, a sync engine on the same database (with psycopg 3 the same
    ``postgresql+psycopg://`` URL serves both). ``table``/``schema``: the outbox table's
    name. ``batch_size``: the most rows the relay produces before it waits for their
    reports and deletes them. ``poll_interval``: how often the relay looks for rows when
    nothing woke it. ``standby_interval``: how often a standby relay tries to take the
    lead (PostgreSQL). ``lock_id``: the advisory lock's key (default: derived from the
    table's name). ``retry_backoff``/``max_retry_backoff``: the wait after a failed
    delivery or a database error (doubling). ``create_table``: create the table (and the
    trigger) at construction if missing; off when migrations own the schema.

    Thread safe; ``bind`` is per thread and per asyncio task (a context variable).
    """

    def __init__(
        self,
        engine: Engine | str,
        *,
        table: str = "eventbus_outbox",
        schema: str | None = None,
        batch_size: int = 5000,
        poll_interval: float = 1.0,
        standby_interval: float = 1.0,
        lock_id: int | None = None,
        retry_backoff: float = 0.1,
        max_retry_backoff: float = 5.0,
        create_table: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ConfigError("sql outbox batch_size must be at least 1")
        if min(poll_interval, standby_interval, retry_backoff, max_retry_backoff) < 0:
            raise ConfigError("sql outbox intervals and backoffs must not be negative")
        self.engine = sa.create_engine(engine) if isinstance(engine, str) else engine
        self.postgres = self.engine.dialect.name == "postgresql"
        metadata = sa.MetaData()
        self.table = outbox_table(metadata, table, schema)
        self.dead_table = outbox_dead_letter_table(metadata, table, schema)
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.standby_interval = standby_interval
        if lock_id is None:
            digest = hashlib.sha256(f"eventbus-outbox:{schema}.{table}".encode()).digest()
            lock_id = int.from_bytes(digest[:8], "big", signed=True)
        self.lock_id = lock_id
        self.retry_backoff = retry_backoff
        self.max_retry_backoff = max_retry_backoff
        self.retries = 0
        """Records whose delivery failed and that the relay sends again (relay thread)."""
        self.refused = 0
        """Records the broker refused for good, moved to the dead-letter table."""
        self.leading = False
        """True while this relay holds the lead (always, once running, on SQLite)."""
        self._insert = self.table.insert().inline()  # no RETURNING: an emit needs no id
        self._bound: contextvars.ContextVar[_SessionBinding | _ConnectionBinding | None] = (
            contextvars.ContextVar(f"outbox-{table}", default=None)
        )
        self._problem: str | None = None
        self._wake = threading.Event()  # a commit in this process wrote rows
        self._stopping = threading.Event()
        self._stop_deadline = 0.0
        self._thread: threading.Thread | None = None
        _listen_to_sessions()
        if create_table:
            try:
                self.table.create(self.engine, checkfirst=True)
                self.dead_table.create(self.engine, checkfirst=True)
            except SQLAlchemyError as exc:
                raise ConfigError(f"cannot create the outbox table {table!r}: {exc}") from exc

    def __repr__(self) -> str:
        return f"SqlOutbox({self.engine.url.render_as_string()!r}, table={self.table.name!r})"

    # -- emitting (any thread or task) --------------------------------------------------

    @contextlib.contextmanager
    def bind(
        self, target: Session | scoped_session[Session] | AsyncSession | Connection
    ) -> Iterator[None]:
        """Within the block, emits of this thread or task go into ``target``'s transaction.

        ``target``: an ORM ``Session`` (or a ``scoped_session``: its current session), an
        ``AsyncSession`` or a Core ``Connection``.
        The events are stored when, and only if, that transaction commits (the commit may
        come after the block). Use one bind per unit of work::

            with Session(engine) as session, session.begin(), outbox.bind(session):
                session.add(order)
                bus.emit("order.placed", id=order.id)
        """
        binding: _SessionBinding | _ConnectionBinding
        if isinstance(target, scoped_session):
            target = target()  # the registry's session of this thread or scope
        if isinstance(target, Session):
            binding = _SessionBinding(self, target)
        elif isinstance(target, Connection):
            binding = _ConnectionBinding(self, target)
        elif isinstance(getattr(target, "sync_session", None), Session):  # AsyncSession
            binding = _SessionBinding(self, target.sync_session)
        else:
            raise ConfigError(
                f"outbox.bind needs a Session, an AsyncSession or a Connection, not "
                f"{type(target).__name__} (an AsyncConnection: bind AsyncSession(bind=conn))"
            )
        token = self._bound.set(binding)
        try:
            yield
        finally:
            self._bound.reset(token)

    def append(
        self, topic: str, value: bytes, key: bytes | None, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        """Add one record to the bound transaction; raise ``BridgeError`` if none is bound."""
        binding = self._bound.get()
        if binding is None:
            raise BridgeError(
                f"an event for topic {topic!r} was emitted outside `with outbox.bind(...)`: "
                f"with the SQL outbox (table {self.table.name!r}) events are written in the "
                "application's transaction, so bind the session or connection the emit "
                "belongs to (the event was not stored)"
            )
        binding.add(
            {
                "topic": topic,
                "key": key,
                "value": bytes(value),
                "headers": headers_to_msgpack(headers),
            }
        )

    # -- the relay ----------------------------------------------------------------------

    def pending(self) -> int:
        """The number of rows in the outbox table (committed, not yet delivered)."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).select_from(self.table)).scalar_one()
            )

    def dead_letters(self) -> int:
        """The number of rows in the dead-letter table (refused for good)."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).select_from(self.dead_table)).scalar_one()
            )

    @property
    def problem(self) -> str | None:
        """The database error the relay is retrying, None while it works."""
        return self._problem

    def start(self, producer: Producer, on_delivery: DeliveryCallback) -> None:
        """Start the relay thread (once). ``on_delivery(None, record)`` is called for each
        delivered record; failed deliveries are retried (logged, counted in ``retries``).
        A row the broker refuses for good (``TransportError.permanent``), also when sent
        alone, moves to the dead-letter table (``outbox_dead_letter_table``), logged,
        counted in ``refused`` and reported as ``on_delivery(error, record)``."""
        if self._thread is not None:
            raise RuntimeError("an outbox starts once")
        relay = _Relay(self, producer, on_delivery)
        self._thread = threading.Thread(target=relay.run, name="bridge-sql-outbox", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """True while the relay thread runs (leading or standing by)."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float) -> None:
        """Stop the relay after trying up to ``timeout`` seconds to deliver what it has
        read; undelivered rows stay for the next relay. Idempotent."""
        self._stop_deadline = time.monotonic() + timeout
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()


class _Relay:
    """The relay thread: lead (or stand by), then rounds of read, produce, confirm, delete."""

    def __init__(self, box: SqlOutbox, producer: Producer, on_delivery: DeliveryCallback) -> None:
        self.box = box
        self.producer = producer
        self.on_delivery = on_delivery
        table = box.table
        self.select = (
            sa.select(table.c.id, table.c.topic, table.c.key, table.c.value, table.c.headers)
            .order_by(table.c.id)
            .limit(box.batch_size)
        )
        if box.postgres:  # one array parameter: cheaper than thousands of IN parameters
            ids = sa.bindparam("ids", type_=ARRAY(sa.BigInteger()))
            self.delete = table.delete().where(table.c.id == sa.any_(ids))
        else:
            self.delete = table.delete().where(table.c.id.in_(sa.bindparam("ids", expanding=True)))
        self.delivered: list[int] = []  # ids delivered, not yet deleted
        self.refused: list[tuple[int, str]] = []  # (id, reason) to move to the dead table
        self.send_alone = False  # after a refusal: the next round sends one row alone
        self.park = sa.insert(box.dead_table).from_select(
            ["id", "topic", "key", "value", "headers", "error"],
            sa.select(
                table.c.id,
                table.c.topic,
                table.c.key,
                table.c.value,
                table.c.headers,
                sa.bindparam("error", type_=sa.Text()),
            ).where(
                table.c.id == sa.bindparam("row_id"),
                # Idempotent: a park whose delete was lost (the connection died) is redone.
                ~sa.exists().where(box.dead_table.c.id == sa.bindparam("row_id")),
            ),
        )
        self.delete_one = table.delete().where(table.c.id == sa.bindparam("row_id"))
        self.backoff = box.retry_backoff
        self._cond = threading.Condition()
        self._reports: list[tuple[Exception | None, Record, int]] = []

    def run(self) -> None:
        box = self.box
        try:
            while not box._stopping.is_set():
                try:
                    self._connected()
                except SQLAlchemyError as exc:
                    box.leading = False
                    box._problem = f"outbox {box.table.name}: {str(exc).splitlines()[0]}"
                    log.warning(
                        "outbox %s: database error (%s); reconnecting in %.1f s",
                        box.table.name,
                        str(exc).splitlines()[0],
                        self.backoff,
                    )
                    self._pause()
        except BaseException:  # never die silently: the rows would wait forever
            log.exception("outbox %s: the relay stopped", box.table.name)
        finally:
            box.leading = False

    def _pause(self) -> None:
        self.box._stopping.wait(self.backoff)
        self.backoff = min(self.backoff * 2, self.box.max_retry_backoff)

    def _connected(self) -> None:
        box = self.box
        conn = box.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            if not self._lead(conn):
                return
            box.leading = True
            if box.postgres:
                # A lost delete (the server crashed before flushing it) only means the
                # row is sent again, which at-least-once allows: the relay's commits need
                # not wait for the WAL flush, nor compete with the application's.
                conn.exec_driver_sql("SET synchronous_commit TO off")
                conn.exec_driver_sql(f'LISTEN "{box.table.name}"')
            log.info("outbox %s: relay leading", box.table.name)
            self._serve(conn)
        finally:
            box.leading = False
            # Close the connection itself: that ends the lead (a session advisory lock
            # would survive a return to the pool) and the LISTEN.
            with contextlib.suppress(SQLAlchemyError):
                conn.invalidate()
            conn.close()

    def _lead(self, conn: Connection) -> bool:
        """Take the lead (PostgreSQL: the advisory lock); False if stopped first."""
        box = self.box
        if not box.postgres:
            return True
        lock = sa.text("SELECT pg_try_advisory_lock(:key)")
        while not box._stopping.is_set():
            if conn.execute(lock, {"key": box.lock_id}).scalar():
                return True
            box._stopping.wait(box.standby_interval)
        return False

    def _serve(self, conn: Connection) -> None:
        box = self.box
        self._delete(conn)  # delivered before a lost connection
        while True:
            stopping = box._stopping.is_set()
            if stopping and time.monotonic() >= box._stop_deadline:
                return
            box._wake.clear()
            rows = conn.execute(self.select).all()
            box._problem = None  # the database answers
            if self.send_alone:
                rows = rows[:1]
            if not rows:
                if stopping:
                    return
                self._wait(conn)
                continue
            complete = self._send(rows)
            self._delete(conn)
            if complete:
                self.backoff = box.retry_backoff
            elif not stopping:
                self._pause()

    def _wait(self, conn: Connection) -> None:
        """Until a commit wrote rows, ``poll_interval`` passed, or the relay stops."""
        box = self.box
        deadline = time.monotonic() + box.poll_interval
        if not box.postgres:
            box._wake.wait(box.poll_interval)
            return
        driver = conn.connection.driver_connection
        assert driver is not None
        while not box._stopping.is_set() and not box._wake.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for _ in driver.notifies(timeout=min(left, 0.2), stop_after=1):
                return

    def _report(self, row_id: int, error: Exception | None, record: Record) -> None:
        # Any thread serving the producer's reports may run this.
        with self._cond:
            self._reports.append((error, record, row_id))
            if error is None:
                self.delivered.append(row_id)
            self._cond.notify()

    def _send(self, rows: Sequence[Any]) -> bool:
        """Produce ``rows`` and wait for their reports; True if all were delivered (or
        refused for good)."""
        box = self.box
        alone = self.send_alone
        self.send_alone = False
        produced = 0
        for row_id, topic, key, value, headers in rows:
            try:
                self.producer.produce(
                    topic, value, key, headers_from_msgpack(headers), partial(self._report, row_id)
                )
            except TransportError as exc:
                if exc.permanent:  # the client refuses it (over message.max.bytes, say)
                    record = Record(topic, -1, -1, key, value, headers_from_msgpack(headers))
                    self._refuse(row_id, exc, record)
                    continue
                # queue full or producer closed: later
                log.warning("outbox %s: cannot produce row %d: %s", box.table.name, row_id, exc)
                break
            produced += 1
        served = 0
        failed = produced < len(rows)
        while served < produced:
            if box._stopping.is_set() and time.monotonic() >= box._stop_deadline:
                return False  # the rest stay in the table: sent again by the next relay
            # The bridge's poller thread usually serves the reports and ``_report``
            # notifies: wait on that, not inside poll (which would block its whole timeout
            # when the other thread served the report first: +50 ms per idle commit).
            try:
                self.producer.poll(0)
            except TransportError as exc:
                log.error("outbox %s: serving delivery reports failed: %s", box.table.name, exc)
            with self._cond:
                if served + len(self._reports) < produced:
                    self._cond.wait(0.005)
                reports, self._reports = self._reports, []
            served += len(reports)
            for error, record, row_id in reports:
                if error is None:
                    self._tell(None, record)
                elif getattr(error, "permanent", False) and alone:
                    self._refuse(row_id, error, record)
                else:
                    if getattr(error, "permanent", False):
                        # A refused batch fails every record in it: the next round sends
                        # the first row alone, refused for good only if it fails alone.
                        self.send_alone = True
                    box.retries += 1
                    if not failed:
                        log.warning(
                            "outbox %s: a record to %r was not delivered (%s); it is resent",
                            box.table.name,
                            record.topic,
                            error,
                        )
                    failed = True
        return not failed

    def _tell(self, error: Exception | None, record: Record) -> None:
        try:
            self.on_delivery(error, record)
        except Exception:
            log.exception("outbox %s: the delivery callback raised", self.box.table.name)

    def _refuse(self, row_id: int, error: Exception, record: Record) -> None:
        """The broker refused row ``row_id`` for good: move it aside, report it, go on."""
        log.error(
            "outbox %s: row %d to %r refused for good (%s); moved to %s, the rows after it go on",
            self.box.table.name,
            row_id,
            record.topic,
            error,
            self.box.dead_table.name,
        )
        with self._cond:
            self.refused.append((row_id, str(error)))
        self.box.refused += 1
        self._tell(error, record)

    def _delete(self, conn: Connection) -> None:
        with self._cond:
            ids = list(self.delivered)
            refused = list(self.refused)
        if refused:
            for row_id, reason in refused:  # copy, then delete (autocommit: each its own)
                conn.execute(self.park, {"row_id": row_id, "error": reason})
                conn.execute(self.delete_one, {"row_id": row_id})
            with self._cond:
                self.refused = self.refused[len(refused) :]
        if ids:
            conn.execute(self.delete, {"ids": ids})
            with self._cond:
                self.delivered = self.delivered[len(ids) :]
