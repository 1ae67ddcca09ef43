"""Helpers of the fault suite: emit a stream through a bridge, read a topic back."""

from __future__ import annotations

import time
import uuid
from typing import Any

from bridge import Bridge, KafkaTransport, Route
from eventbus import EventBus
from tests.bridge.helpers import wait_for


def emit_events(bootstrap: str, topic: str, n: int, name: str = "load.item") -> None:
    """Emit ``n`` events ``name`` with payload ``{"n": i, "key": i % 16}`` and wait until
    the broker acknowledged all of them."""
    bus = EventBus()
    with Bridge(
        bus,
        transport=KafkaTransport({"bootstrap.servers": bootstrap}),
        service="load",
        routes=[Route.outbound(name, topic=topic, key="key")],
        create_topics=False,
    ) as b:
        for i in range(n):
            bus.emit(name, n=i, key=i % 16)
        wait_for(lambda: b.stats.produced >= n, timeout=120, what=f"{n} events delivered")
    assert b.stats.delivered == n


def read_all(bootstrap: str, topic: str, timeout: float = 60.0) -> list[Any]:
    """Every record of ``topic`` up to its current end (confluent ``Message`` objects)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        ends = {}
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while ends:
            assert time.monotonic() < deadline, f"{topic}: partitions {ends} not read to the end"
            for m in consumer.consume(1000, 0.5):
                if m.error() is None:
                    records.append(m)
                    if m.offset() + 1 >= ends.get(m.partition(), 0):
                        ends.pop(m.partition(), None)
        return records
    finally:
        consumer.close()
