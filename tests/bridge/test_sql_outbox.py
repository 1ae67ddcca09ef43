"""The SQL outbox on real PostgreSQL (and SQLite) and the real broker: an event commits with
the application's transaction or not at all, and the relays deliver it once, in key order."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sa = pytest.importorskip("sqlalchemy", reason="the [sql] extra is not installed")

from sqlalchemy.orm import Session  # noqa: E402

from bridge import Bridge, BridgeError, ConfigError, KafkaTransport, Route, SqlOutbox  # noqa: E402
from eventbus import EmitError, EventBus  # noqa: E402
from tests.bridge.helpers import wait_for  # noqa: E402
from tests.bridge.sql_helpers import (  # noqa: E402
    drop_outbox,
    event_ids,
    metadata,
    orders,
    outbound_bridge,
    payloads,
    unique_table,
)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.kafka


@pytest.fixture(params=["postgres", "sqlite"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLAlchemy URL: the test PostgreSQL server, or a SQLite file (the same API)."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite:///{tmp_path / 'app.db'}"


@pytest.fixture
def engine(database: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(database)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_engine(postgres_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(postgres_url)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def make_outbox() -> Iterator[Callable[..., SqlOutbox]]:
    """``make_outbox(engine, table=None, **options)``; tables are dropped afterwards."""
    made: list[tuple[sa.Engine, str]] = []

    def make(engine: sa.Engine, table: str | None = None, **options: Any) -> SqlOutbox:
        table = table or unique_table()
        made.append((engine, table))
        options.setdefault("standby_interval", 0.1)
        return SqlOutbox(engine, table=table, **options)

    yield make
    for engine, table in dict.fromkeys(made):
        drop_outbox(engine, table)


def place(session: Session, order_id: int, outbox: SqlOutbox, bus: EventBus) -> None:
    """The unit of work under test: an order row and its event, in one transaction."""
    with outbox.bind(session):
        session.execute(orders.insert().values(id=order_id, item=f"item-{order_id}"))
        bus.emit("order.placed", id=order_id)


def test_commit_delivers_once_rollback_never(
    engine: sa.Engine,
    make_outbox: Callable[..., SqlOutbox],
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
) -> None:
    topic = make_topic()
    outbox = make_outbox(engine)
    bus = EventBus()
    with outbound_bridge(bus, kafka_bootstrap, topic, outbox) as bridge:
        with Session(engine) as session, session.begin():
            place(session, 1, outbox, bus)
            place(session, 2, outbox, bus)
        with Session(engine) as session:  # rolled back: neither the order nor its event
            place(session, 3, outbox, bus)
            session.rollback()
        with Session(engine) as session, session.begin():
            place(session, 4, outbox, bus)
            savepoint = session.begin_nested()  # the event of a rolled-back savepoint
            place(session, 5, outbox, bus)
            savepoint.rollback()
            place(session, 6, outbox, bus)
        with Session(engine) as session:
            with outbox.bind(session):
                bus.emit("order.placed", id=7)  # closed without commit: rolled back
        wait_for(lambda: bridge.stats.delivered >= 4, what="4 events delivered")
        wait_for(lambda: outbox.pending() == 0, what="the outbox table empty")
    with engine.connect() as conn:
        committed = sorted(conn.execute(sa.select(orders.c.id)).scalars())
    assert committed == [1, 2, 4, 6]
    assert payloads(kafka_bootstrap, topic) == [{"id": i} for i in committed]
    ids = event_ids(kafka_bootstrap, topic)
    assert len(set(ids)) == len(ids) == 4  # once each
    assert bridge.stats.delivered == 4


def test_a_row_the_topic_refuses_moves_to_the_dead_table_and_the_rest_go_on(
    engine: sa.Engine,
    make_outbox: Callable[..., SqlOutbox],
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
) -> None:
    topic = make_topic(config={"max.message.bytes": "20000"})
    outbox = make_outbox(engine, batch_size=50)
    bus = EventBus()
    with outbound_bridge(bus, kafka_bootstrap, topic, outbox) as bridge:
        with Session(engine) as session, session.begin(), outbox.bind(session):
            bus.emit("order.placed", id=0, blob=b"x" * 60_000)  # the topic refuses it
            for i in range(1, 21):
                bus.emit("order.placed", id=i)
        wait_for(
            lambda: (outbox.pending(), bridge.stats.delivered, bridge.stats.refused) == (0, 20, 1),
            30,
            what="the outbox table empty, 20 delivered and one refused",
        )
        assert (bridge.stats.delivery_failed, bridge.stats.refused) == (1, 1)
        assert outbox.refused == 1 and outbox.dead_letters() == 1
    with engine.connect() as conn:
        (error,) = conn.execute(sa.select(outbox.dead_table.c.error)).scalars()
    assert "too large" in error.lower()
    assert [p["id"] for p in payloads(kafka_bootstrap, topic)] == list(range(1, 21))


def test_emit_outside_bind_raises_and_stores_nothing(
    engine: sa.Engine,
    make_outbox: Callable[..., SqlOutbox],
    kafka_bootstrap: str,
    kafka_topic: str,
) -> None:
    outbox = make_outbox(engine)
    bus = EventBus()
    with outbound_bridge(bus, kafka_bootstrap, kafka_topic, outbox):
        with pytest.raises(EmitError) as caught:
            bus.emit("order.placed", id=1)
        (error,) = caught.value.exceptions
        assert isinstance(error, BridgeError) and "outbox.bind" in str(error)
        assert outbox.pending() == 0
        with pytest.raises(ConfigError, match="Session, an AsyncSession or a Connection"):
            with outbox.bind(engine):  # type: ignore[arg-type]
                pass


def test_core_connection(
    engine: sa.Engine,
    make_outbox: Callable[..., SqlOutbox],
    kafka_bootstrap: str,
    kafka_topic: str,
) -> None:
    outbox = make_outbox(engine)
    bus = EventBus()
    with outbound_bridge(bus, kafka_bootstrap, kafka_topic, outbox) as bridge:
        with engine.connect() as conn:
            with outbox.bind(conn):
                bus.emit("order.placed", id=1)
            conn.rollback()
        with engine.begin() as conn, outbox.bind(conn):
            conn.execute(orders.insert().values(id=2, item="x"))
            bus.emit("order.placed", id=2)
        wait_for(lambda: bridge.stats.delivered >= 1, what="the committed event delivered")
        wait_for(lambda: outbox.pending() == 0, what="the outbox table empty")
    assert payloads(kafka_bootstrap, kafka_topic) == [{"id": 2}]


def test_asyncio_session(
    database: str,
    engine: sa.Engine,
    make_outbox: Callable[..., SqlOutbox],
    kafka_bootstrap: str,
    kafka_topic: str,
) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    outbox = make_outbox(engine)  # the relay's sync engine
    bus = EventBus()
    url = database.replace("sqlite://", "sqlite+aiosqlite://")

    async def app() -> None:
        aengine = create_async_engine(url)
        try:
            async with AsyncSession(aengine) as session, session.begin():
                with outbox.bind(session):
                    await session.execute(orders.insert().values(id=1, item="a"))
                    bus.emit("order.placed", id=1)

            async def rolled_back() -> None:
                async with AsyncSession(aengine) as session, session.begin():
                    with outbox.bind(session):
                        await session.execute(orders.insert().values(id=2, item="b"))
                        bus.emit("order.placed", id=2)
                        raise RuntimeError("the order fails")

            with pytest.raises(RuntimeError):
                await rolled_back()
            # Two tasks at once: each emit goes into its own task's session.
            await asyncio.gather(place_async(aengine, 3), place_async(aengine, 4))
        finally:
            await aengine.dispose()

    async def place_async(aengine: Any, order_id: int) -> None:
        async with AsyncSession(aengine) as session, session.begin():
            with outbox.bind(session):
                bus.emit("order.placed", id=order_id)
                await asyncio.sleep(0)  # let the other task run inside its own bind
                await session.execute(orders.insert().values(id=order_id, item="c"))

    with outbound_bridge(bus, kafka_bootstrap, kafka_topic, outbox) as bridge:
        asyncio.run(app())
        wait_for(lambda: bridge.stats.delivered >= 3, what="3 events delivered")
        wait_for(lambda: outbox.pending() == 0, what="the outbox table empty")
    got = payloads(kafka_bootstrap, kafka_topic)
    assert sorted(p["id"] for p in got) == [1, 3, 4]


def test_two_relays_deliver_everything_once_in_key_order(
    pg_engine: sa.Engine,
    make_outbox: Callable[..., SqlOutbox],
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
) -> None:
    """Two relays (two bridges, two connections) on one table; the leader stops midway."""
    topic = make_topic(partitions=4)
    table = unique_table()
    first, second = make_outbox(pg_engine, table), make_outbox(pg_engine, table)
    seen: list[tuple[int, int]] = []
    consumer_bus = EventBus()
    consumer_bus.on_event("order.placed")(lambda e: seen.append((e.payload["id"], e.payload["n"])))
    consumer = Bridge(
        consumer_bus,
        transport=KafkaTransport({"bootstrap.servers": kafka_bootstrap}),
        service="reader",
        routes=[Route.inbound("order.placed", topic=topic)],
        create_topics=False,
    )
    bus = EventBus()
    keys, per_key = 8, 150
    a = outbound_bridge(bus, kafka_bootstrap, topic, first, service="relay-a")
    b = outbound_bridge(EventBus(), kafka_bootstrap, topic, second, service="relay-b")
    with consumer, a, b:
        wait_for(lambda: first.leading or second.leading, what="a leader")
        leader = a if first.leading else b
        assert not (first.leading and second.leading)

        def emit_key(k: int) -> None:
            for n in range(per_key):
                with Session(pg_engine) as session, session.begin(), first.bind(session):
                    bus.emit("order.placed", id=k, n=n)

        threads = [threading.Thread(target=emit_key, args=(k,)) for k in range(keys)]
        for thread in threads:
            thread.start()
        wait_for(lambda: len(seen) >= keys * per_key // 3, timeout=60, what="a third handled")
        if leader is b:
            b.stop()  # the other relay takes over; the emitting bus stays on a
        else:
            # Stopping ``a`` would stop the emits; swap roles: a's relay steps down only.
            first.stop(10.0)
        wait_for(lambda: (second if leader is a else first).leading, what="the standby leads")
        for thread in threads:
            thread.join()
        wait_for(lambda: len(seen) >= keys * per_key, timeout=60, what="every event handled")
        wait_for(lambda: first.pending() == 0, what="the outbox table empty")
    assert sorted(seen) == [(k, n) for k in range(keys) for n in range(per_key)]  # once each
    for k in range(keys):
        assert [n for key, n in seen if key == k] == list(range(per_key)), f"key {k} out of order"
    # One relay sent at a time, and the handover was graceful: not even the topic holds a
    # duplicate (the inbound dedup above would hide one from the handlers).
    ids = event_ids(kafka_bootstrap, topic)
    assert len(ids) == len(set(ids)) == keys * per_key


CHILD = """
import sys
import sqlalchemy as sa
from sqlalchemy.orm import Session
from bridge import SqlOutbox
from eventbus import EventBus
from tests.bridge.sql_helpers import orders, outbound_bridge

url, bootstrap, topic, table = sys.argv[1:5]
engine = sa.create_engine(url)
outbox = SqlOutbox(engine, table=table, standby_interval=0.05)
bus = EventBus()
bridge = outbound_bridge(bus, bootstrap, topic, outbox)
bridge.start()
with Session(engine) as session, session.begin(), outbox.bind(session):
    session.execute(orders.insert().values(id=1, item="x"))
    bus.emit("order.placed", id=1)
print("committed", flush=True)
sys.stdin.read()  # killed here
"""


def test_kill_9_after_commit_before_relay_sent(
    pg_engine: sa.Engine,
    postgres_url: str,
    make_outbox: Callable[..., SqlOutbox],
    kafka_bootstrap: str,
    kafka_topic: str,
) -> None:
    table = unique_table()
    outbox = make_outbox(pg_engine, table)  # creates the table; its relay starts later
    # This test holds the relay's lock: the child's relay stands by, so its event is
    # committed but certainly not sent when the child dies.
    with pg_engine.connect() as holder:
        holder.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": outbox.lock_id})
        args = (kafka_topic, table)
        with subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(CHILD), postgres_url, kafka_bootstrap, *args],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        ) as child:
            try:
                assert child.stdout is not None
                assert child.stdout.readline() == b"committed\n"
            finally:
                child.send_signal(signal.SIGKILL)
                child.wait()
        holder.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": outbox.lock_id})
        holder.commit()
    assert outbox.pending() == 1
    assert payloads(kafka_bootstrap, kafka_topic) == []
    bus = EventBus()
    with outbound_bridge(bus, kafka_bootstrap, kafka_topic, outbox) as bridge:
        wait_for(lambda: bridge.stats.delivered >= 1, what="the event delivered after restart")
        wait_for(lambda: outbox.pending() == 0, what="the outbox table empty")
    assert payloads(kafka_bootstrap, kafka_topic) == [{"id": 1}]
