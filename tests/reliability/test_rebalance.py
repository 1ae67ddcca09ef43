"""Fault 5: a second replica joins and then leaves the consumer group during a stream.

Both rebalances move partitions while records flow; no event is lost (duplicates are
allowed: at-least-once, and each replica only dedups what it saw itself)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from bridge import Bridge, KafkaTransport, Route
from eventbus import EventBus
from tests.bridge.helpers import wait_for
from tests.reliability.conftest import scaled

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
PHASE = scaled(10.0, 1.5)  # seconds of stream before the join, with two, after the leave
RATE = 1000  # events per second


def replica(bootstrap: str, topic: str, handled: Counter[int], lock: threading.Lock) -> Bridge:
    bus = EventBus()

    @bus.on("load.item")
    def handle(sender: Any, *, n: int, key: int) -> None:
        with lock:
            handled[n] += 1

    return Bridge(
        bus,
        transport=KafkaTransport({"bootstrap.servers": bootstrap}),
        service="replicas",
        routes=[Route.inbound("load.*", topic=topic)],
        create_topics=False,
    )


def test_a_replica_joins_and_leaves_during_a_stream(
    kafka_bootstrap: str, make_topic: Callable[..., str], figures: Callable[..., None]
) -> None:
    topic = make_topic(partitions=4)
    handled: Counter[int] = Counter()
    lock = threading.Lock()
    producer_bus = EventBus()
    producer = Bridge(
        producer_bus,
        transport=KafkaTransport({"bootstrap.servers": kafka_bootstrap}),
        service="stream",
        routes=[Route.outbound("load.*", topic=topic, key="key")],
        create_topics=False,
    )
    first = replica(kafka_bootstrap, topic, handled, lock)
    second = replica(kafka_bootstrap, topic, handled, lock)
    emitted = 0
    stop = threading.Event()

    def stream() -> None:
        nonlocal emitted
        start = time.monotonic()
        while not stop.is_set():
            producer_bus.emit("load.item", n=emitted, key=emitted % 64)
            emitted += 1
            stop.wait(max(0.0, start + emitted / RATE - time.monotonic()))

    def stream_for(seconds: float) -> None:
        target = emitted + int(seconds * RATE)
        wait_for(lambda: emitted >= target, timeout=seconds * 10, what=f"{seconds} s of stream")

    streamer = threading.Thread(target=stream)
    with first, producer:
        streamer.start()
        try:
            stream_for(PHASE)
            second.start()  # joins: partitions move to it
            wait_for(lambda: second.stats.handled, timeout=60, what="partitions moved")
            joined_at = emitted
            stream_for(PHASE)
            second.stop()  # leaves: its partitions move back
            left_at = emitted
            stream_for(PHASE)
        finally:
            stop.set()
            streamer.join()
        wait_for(lambda: producer.stats.produced == emitted, timeout=60, what="all delivered")
        wait_for(lambda: len(handled) == emitted, timeout=120, what="every event handled")

    figures(
        events=emitted,
        phase_s=PHASE,
        joined_at=joined_at,
        left_at=left_at,
        handled_by_first=first.stats.handled,
        handled_by_second=second.stats.handled,
        duplicates=sum(handled.values()) - len(handled),
    )
    assert set(handled) == set(range(emitted))
    assert second.stats.handled > 0 and first.stats.handled > 0
