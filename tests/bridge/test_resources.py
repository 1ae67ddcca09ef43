"""Resources a bridge holds are released: a bridge stopped before it started lets go of
its outbox and dedup store, the dedup store is closed on stop, transports, producers and
consumers close as context managers, and ``create_topics=False`` creates nothing."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest

from bridge import Bridge, ConfigError, KafkaTransport, MemoryTransport, Route, TransportError
from bridge._outbox import Outbox
from eventbus import EventBus
from tests.bridge.helpers import wait_for


def _bridge(tmp_path: Path, **options: object) -> Bridge:
    return Bridge(
        EventBus(),
        transport=MemoryTransport(),
        service="svc",
        routes=[Route.outbound("a.*", topic="a")],
        **options,  # type: ignore[arg-type]
    )


def test_stop_before_start_releases_the_outbox(tmp_path: Path) -> None:
    path = str(tmp_path / "outbox.db")
    never_started = _bridge(tmp_path, outbox=path)
    with pytest.raises(ConfigError, match="in use by another bridge"):
        Outbox(path)  # held, as it should be while the bridge may still start
    never_started.stop()
    Outbox(path).stop(0)  # released at once, not at garbage collection
    assert never_started is not None  # (still referenced: no collection helped)


@pytest.mark.parametrize("started", [True, False], ids=["after-start", "never-started"])
def test_the_sqlite_dedup_store_is_closed_on_stop(tmp_path: Path, started: bool) -> None:
    bridge = _bridge(tmp_path, dedup_path=str(tmp_path / "dedup.db"))
    if started:
        bridge.start()
    bridge.stop()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        bridge._dedup.seen("x")  # type: ignore[attr-defined]


def test_transports_producers_and_consumers_are_context_managers() -> None:
    with MemoryTransport() as transport:
        with transport.producer() as producer:
            producer.produce("t", b"v")
        with pytest.raises(TransportError):
            producer.produce("t", b"v")
        with transport.consumer("g", ["t"]) as consumer:
            consumer.poll(0)
        assert consumer.assignment() == []


@pytest.mark.kafka
def test_create_topics_false_creates_nothing_even_where_the_broker_would(
    kafka_bootstrap: str,
) -> None:
    """The test broker has auto.create.topics.enable=true: a producer's metadata request
    (the warm-up, the first produce) would create the topic if the bridge let it."""
    missing = f"never-created-{uuid.uuid4().hex[:8]}"
    bus = EventBus()
    failures: list[object] = []
    with KafkaTransport({"bootstrap.servers": kafka_bootstrap, "message.timeout.ms": 3000}) as t:
        with Bridge(
            bus,
            transport=t,
            service="svc",
            routes=[Route.outbound("a.*", topic=missing)],
            create_topics=False,
            on_delivery_failure=failures.append,
        ) as bridge:
            bus.emit("a.b", n=1)
            wait_for(lambda: bridge.stats.delivery_failed == 1, timeout=30, what="the failure")
        assert missing not in t.list_topics(timeout=10)
    assert len(failures) == 1
