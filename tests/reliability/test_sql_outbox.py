"""Faults of the SQL outbox: PostgreSQL restarts, the broker stops, a long stream.

Each test commits orders with their events from a thread while the fault happens, then
checks that every committed event reached the topic (duplicates are allowed and counted:
the relay is at-least-once) and that the outbox table is empty at the end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sa = pytest.importorskip("sqlalchemy", reason="the [sql] extra is not installed")

from sqlalchemy.exc import SQLAlchemyError  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from bridge import Bridge, KafkaTransport, Route, SqlOutbox  # noqa: E402
from eventbus import EventBus  # noqa: E402
from tests.bridge.helpers import wait_for  # noqa: E402
from tests.bridge.sql_helpers import drop_outbox, payloads, unique_table  # noqa: E402
from tests.reliability.broker import PrivateBroker  # noqa: E402
from tests.reliability.conftest import scaled  # noqa: E402
from tests.reliability.postgres import PrivatePostgres  # noqa: E402

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.postgres]
RATE = 200  # transactions per second, before, during and after a fault
OUTAGE = scaled(20.0, 3.0)  # seconds the broker is frozen
EVENTS = scaled(100_000, 5000)  # the long stream
KEYS = 8


class OrderStream:
    """Commits one order event per transaction at RATE from a thread until stopped.

    ``committed``: the numbers whose transaction committed; ``in_doubt``: those whose
    commit raised (the database went away: it may or may not have committed)."""

    def __init__(self, engine: sa.Engine, outbox: SqlOutbox, bus: EventBus) -> None:
        self.engine, self.outbox, self.bus = engine, outbox, bus
        self.committed: list[int] = []
        self.in_doubt: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        start, n = time.monotonic(), 0
        while not self._stop.is_set():
            try:
                with Session(self.engine) as session, session.begin(), self.outbox.bind(session):
                    self.bus.emit("order.placed", id=n % KEYS, n=n)
            except SQLAlchemyError:
                self.in_doubt.add(n)
                self._stop.wait(0.05)
            else:
                self.committed.append(n)
            n += 1
            self._stop.wait(max(0.0, start + n / RATE - time.monotonic()))

    def __enter__(self) -> OrderStream:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def check_delivered(stream: OrderStream, got: list[dict[str, Any]]) -> int:
    """Every committed event arrived, nothing else did, each key in order; the duplicates."""
    numbers = [p["n"] for p in got]
    assert set(stream.committed) <= set(numbers), "committed events were lost"
    assert set(numbers) <= set(stream.committed) | stream.in_doubt, "rolled-back events sent"
    for k in range(KEYS):
        firsts = list(dict.fromkeys(p["n"] for p in got if p["id"] == k))
        assert firsts == sorted(firsts), f"key {k} out of order"
    return len(numbers) - len(set(numbers))


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    yield server
    server.stop()


def test_postgres_restart_during_the_relay(
    private_postgres: PrivatePostgres,
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    figures: Callable[..., None],
) -> None:
    topic = make_topic()
    engine = sa.create_engine(private_postgres.start(), pool_pre_ping=True)
    outbox = SqlOutbox(engine, retry_backoff=0.05, max_retry_backoff=0.5)
    bus = EventBus()
    bridge = Bridge(
        bus,
        transport=KafkaTransport({"bootstrap.servers": kafka_bootstrap}),
        service="orders",
        routes=[Route.outbound("order.*", topic=topic, key="id")],
        outbox=outbox,
        create_topics=False,
    )
    try:
        with bridge:
            with OrderStream(engine, outbox, bus) as stream:
                wait_for(lambda: bridge.stats.delivered >= RATE, what="1 s of delivered events")
                before = len(stream.committed)
                private_postgres.restart()
                wait_for(
                    lambda: len(stream.committed) >= before + RATE,
                    timeout=60,
                    what="1 s of commits after the restart",
                )
            # The stream stopped: the relay catches up and empties the table.
            wait_for(lambda: outbox.pending() == 0, timeout=60, what="the outbox table empty")
    finally:
        engine.dispose()
    duplicates = check_delivered(stream, payloads(kafka_bootstrap, topic))
    figures(committed=len(stream.committed), in_doubt=len(stream.in_doubt), duplicates=duplicates)


def test_broker_outage(
    postgres_url: str,
    private_broker: PrivateBroker,
    figures: Callable[..., None],
) -> None:
    table, topic = unique_table(), f"sql-outage-{unique_table()}"
    engine = sa.create_engine(postgres_url)
    outbox = SqlOutbox(engine, table=table)
    bus = EventBus()
    bridge = Bridge(
        bus,
        transport=KafkaTransport({"bootstrap.servers": private_broker.bootstrap}),
        service="orders",
        routes=[Route.outbound("order.*", topic=topic, key="id")],
        outbox=outbox,
    )
    try:
        with bridge:
            with OrderStream(engine, outbox, bus) as stream:
                wait_for(lambda: bridge.stats.delivered >= RATE, what="1 s of delivered events")
                private_broker.freeze()
                try:
                    time.sleep(OUTAGE)  # the outage itself: deliberate
                    committed_in_outage = len(stream.committed)
                finally:
                    private_broker.thaw()
                wait_for(lambda: len(stream.committed) >= committed_in_outage + RATE, timeout=60)
            wait_for(lambda: outbox.pending() == 0, timeout=120, what="the outbox table empty")
        duplicates = check_delivered(stream, payloads(private_broker.bootstrap, topic))
        assert not stream.in_doubt  # the database was up all along
        figures(outage_s=OUTAGE, committed=len(stream.committed), duplicates=duplicates)
    finally:
        drop_outbox(engine, table)
        engine.dispose()


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


def test_long_stream_leaves_the_table_empty(
    postgres_url: str,
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    figures: Callable[..., None],
) -> None:
    """EVENTS events in transactions of 100; the relay keeps up, memory stays flat."""
    topic = make_topic()
    table = unique_table()
    engine = sa.create_engine(postgres_url)
    outbox = SqlOutbox(engine, table=table)
    bus = EventBus()
    bridge = Bridge(
        bus,
        transport=KafkaTransport({"bootstrap.servers": kafka_bootstrap}),
        service="orders",
        routes=[Route.outbound("order.*", topic=topic, key="id")],
        outbox=outbox,
        create_topics=False,
    )
    rss: list[int] = []
    peak = 0
    try:
        with bridge:
            for start in range(0, EVENTS, 100):
                with Session(engine) as session, session.begin(), outbox.bind(session):
                    for n in range(start, min(start + 100, EVENTS)):
                        bus.emit("order.placed", id=n % KEYS, n=n)
                if start % (EVENTS // 4 // 100 * 100 or 100) == 0:
                    rss.append(_rss())
                peak = max(peak, outbox.pending()) if start % 1000 == 0 else peak
            wait_for(lambda: bridge.stats.delivered >= EVENTS, timeout=120, what="all delivered")
            wait_for(lambda: outbox.pending() == 0, timeout=60, what="the outbox table empty")
        got = payloads(kafka_bootstrap, topic)
        assert sorted(p["n"] for p in got) == list(range(EVENTS))
        figures(events=EVENTS, peak_pending=peak, rss_mib=[r >> 20 for r in rss])
    finally:
        drop_outbox(engine, table)
        engine.dispose()
