"""CloudEvents batch mode (``application/cloudevents-batch+json``) on a ``cloudevents``
inbound route, on MemoryTransport and the real broker.

The CloudEvents Python SDK (2.x) writes no batch mode, so a batch is built as the JSON
event format specifies it (a JSON array of structured-mode events), each event written
by the SDK's ``JSONFormat``. One record carries several events: each is handled like a
record of its own, in order (own id for dedup); a failed one is retried and
dead-lettered alone, as a structured-mode record of that one event; the batch record's
offset is stored once every event is done.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from confluent_kafka import Consumer, TopicPartition

from bridge import Bridge, KafkaTransport, MemoryTransport, Remote, Route, Transport
from bridge._formats import MAX_BATCH_EVENTS
from eventbus import EventBus
from tests.bridge.helpers import read, unique, wait_for

BATCH = b"application/cloudevents-batch+json"


def sdk_event(ce_type: str, order_id: int, ce_id: str | None = None) -> CloudEvent:
    return CloudEvent(
        attributes={"type": ce_type, "source": "/sdk/batch", "id": ce_id or str(uuid.uuid4())},
        data={"order_id": order_id},
    )


def batch_of(*events: CloudEvent | bytes) -> bytes:
    parts = [e if isinstance(e, bytes) else JSONFormat().write(e) for e in events]
    return b"[" + b",".join(parts) + b"]"


def produce(transport: Transport, topic: str, *values: bytes) -> None:
    producer = transport.producer()
    for value in values:
        producer.produce(topic, value, b"k", [("content-type", BATCH), ("x-app", b"shop")])
    assert producer.flush(30) == 0
    producer.close()


def committed(transport: Transport, group: str, topic: str) -> int | None:
    """The offset committed by ``group`` on partition 0 of ``topic``."""
    if isinstance(transport, MemoryTransport):
        return transport.broker.committed(group, topic, 0)
    assert isinstance(transport, KafkaTransport)
    consumer = Consumer(
        {"bootstrap.servers": transport.config["bootstrap.servers"], "group.id": group}
    )
    try:
        [tp] = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        return tp.offset if tp.offset >= 0 else None
    finally:
        consumer.close()


@pytest.mark.parametrize("concurrency", [1, 4])
def test_events_of_a_batch_in_order_a_failed_one_retried_and_dead_lettered_alone(
    transport: Transport, concurrency: int
) -> None:
    topic = unique("batch")
    bus = EventBus()
    calls: list[tuple[int, str]] = []

    @bus.on("order.**")
    def on_order(sender: Remote, order_id: int) -> None:
        calls.append((order_id, sender.id))
        if order_id == 2:
            raise ConnectionError("payment service down")

    first = sdk_event("order.placed", 1)
    failing = sdk_event("order.placed", 2)
    batch = batch_of(
        first,
        failing,
        sdk_event("order.paid", 3),
        sdk_event("com.example/audit:logged", 4),  # no route: skipped
        sdk_event("order.placed", 5, ce_id=first.get_id()),  # a duplicate of the first
    )
    too_long = batch_of(*(b'{"n":%d}' % n for n in range(MAX_BATCH_EVENTS + 1)))
    not_events = b'[{"specversion": "1.0"}, "text"]'
    route = Route.inbound("order.**", topic=topic, retry_delays=[0.2])
    with Bridge(
        bus,
        transport=transport,
        service="orders",
        routes=[route],
        max_attempts=1,
        concurrency=concurrency,
    ) as bridge:
        produce(transport, topic, batch, too_long, not_events)
        wait_for(lambda: bridge.stats.dead_lettered == 3, 30, "three dead letters")
    assert calls == [(1, first.get_id()), (2, failing.get_id()), (3, calls[2][1]), (2, calls[1][1])]
    assert bridge.stats.retries_scheduled == 1
    assert committed(transport, "orders", topic) == 3  # committed at stop

    [retried] = read(transport, route.retry_topics[0], 1)
    dead = {
        int(dict(r.headers)["eventbus-dlq-offset"]): r for r in read(transport, f"{topic}.dlq", 3)
    }
    for record in (retried, dead[0]):  # the failed event alone, in structured mode
        headers = dict(record.headers)
        assert headers["content-type"] == b"application/cloudevents+json"
        assert headers["x-app"] == b"shop" and record.key == b"k"
        message = ce_kafka.KafkaMessage(headers=headers, key=record.key, value=record.value)
        event = ce_kafka.from_structured(message, JSONFormat())
        assert event.get_id() == failing.get_id() and event.get_data() == {"order_id": 2}
    assert b"payment service down" in dict(dead[0].headers)["eventbus-dlq-reason"]
    reason = dict(dead[1].headers)["eventbus-dlq-reason"]
    assert f"at most {MAX_BATCH_EVENTS} per record".encode() in reason
    assert dead[1].value == too_long  # the whole record: it was never split
    assert b"a batch item is not a JSON object" in dict(dead[2].headers)["eventbus-dlq-reason"]


def test_a_batch_is_committed_only_when_all_its_events_are_done(
    transport: Transport, tmp_path: Path
) -> None:
    """Stopped while an event of the batch waits for its retry: the offset stays; the
    batch comes again, and the event handled before is skipped by its id."""
    topic = unique("batch-stop")
    events = [sdk_event("order.placed", n) for n in (1, 2, 3)]
    failed = threading.Event()
    calls: list[int] = []
    bus = EventBus()

    @bus.on("order.placed")
    def flaky(sender: Remote, order_id: int) -> None:
        calls.append(order_id)
        if order_id == 2:
            failed.set()
            raise ConnectionError("down")

    options: dict[str, Any] = {
        "transport": transport,
        "service": "orders",
        "routes": [Route.inbound("order.*", topic=topic)],
        "dedup_path": str(tmp_path / "dedup.sqlite"),
    }
    with Bridge(bus, max_attempts=2, backoff=60, drain_timeout=0.5, **options):
        produce(transport, topic, batch_of(*events))
        assert failed.wait(30)  # event 2 waits 60 s for its second attempt: stop now
    assert calls == [1, 2]
    assert not committed(transport, "orders", topic)

    again: list[int] = []
    bus2 = EventBus()
    bus2.on("order.placed")(lambda sender, order_id: again.append(order_id))
    with Bridge(bus2, **options):
        wait_for(lambda: again == [2, 3], 30, "events 2 and 3 of the batch, again")
    assert again == [2, 3]  # event 1 was handled before: a duplicate by its id
    assert committed(transport, "orders", topic) == 1


def test_a_batch_on_an_event_loop(transport: Transport) -> None:
    """The asyncio mode: async handlers awaited one event after the other."""
    topic = unique("batch-async")
    order: list[int] = []

    async def run() -> None:
        bus = EventBus()

        @bus.on("order.placed")
        async def handle(sender: Remote, order_id: int) -> None:
            await asyncio.sleep(0.01 * (3 - order_id))  # the first takes longest
            order.append(order_id)

        route = Route.inbound("order.*", topic=topic)
        async with Bridge(bus, transport=transport, service="a", routes=[route], concurrency=4):
            produce(transport, topic, batch_of(*(sdk_event("order.placed", n) for n in (1, 2, 3))))
            while len(order) < 3:
                await asyncio.sleep(0.01)

    asyncio.run(asyncio.wait_for(run(), 30))
    assert order == [1, 2, 3]
