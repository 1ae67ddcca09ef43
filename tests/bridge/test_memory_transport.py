"""MemoryTransport behaviours beyond the shared contract: queue bounds, test hooks,
blocking polls, isolation of clusters."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from bridge._errors import QueueFullError, TransportError
from bridge._memory import MemoryTransport
from bridge._transport import Consumer, Record

Report = tuple[Exception | None, Record]


def ready_consumer(transport: MemoryTransport, topic: str, group: str = "g") -> Consumer:
    """A consumer positioned at the end of ``topic`` (created first: a topic auto-created
    by a produce would be assigned after that record, at its end, and the record missed)."""
    transport.ensure_topics([topic])
    consumer = transport.consumer(group, [topic])
    assert consumer.poll(0) is None
    assert consumer.is_ready()
    return consumer


def test_delivery_reports_wait_for_poll_not_produce():
    transport = MemoryTransport()
    producer = transport.producer()
    reports: list[Report] = []

    producer.produce("t", b"v", on_delivery=lambda e, r: reports.append((e, r)))
    assert reports == []
    assert producer.poll(0) == 1
    assert reports[0][0] is None
    assert reports[0][1].offset == 0


def test_full_queue_raises_queue_full_after_the_timeout():
    transport = MemoryTransport(queue_size=2, queue_full_timeout=0.2)
    producer = transport.producer()
    reports: list[Report] = []
    transport.broker.pause_delivery()  # nothing is delivered: the queue cannot drain
    producer.produce("t", b"1", on_delivery=lambda e, r: reports.append((e, r)))
    producer.produce("t", b"2", on_delivery=lambda e, r: reports.append((e, r)))

    started = time.monotonic()
    with pytest.raises(QueueFullError):
        producer.produce("t", b"3")
    assert 0.15 < time.monotonic() - started < 2
    assert producer.flush(0) == 2

    transport.broker.resume_delivery()
    assert producer.flush(1) == 0
    assert [(e, r.value, r.offset) for e, r in reports] == [(None, b"1", 0), (None, b"2", 1)]


def test_full_queue_makes_room_by_serving_reports():
    """Like KafkaTransport (poll on BufferError), produce serves reports when full."""
    transport = MemoryTransport(queue_size=2, queue_full_timeout=0)
    producer = transport.producer()
    served: list[Report] = []
    for n in range(10):
        producer.produce("t", b"%d" % n, on_delivery=lambda e, r: served.append((e, r)))
    assert producer.flush(1) == 0
    assert [r.offset for _, r in served] == list(range(10))


def test_fail_next_injects_delivery_failures():
    transport = MemoryTransport()
    consumer = ready_consumer(transport, "t")
    producer = transport.producer()
    reports: list[Report] = []
    boom = TransportError("boom", retriable=True)
    transport.broker.fail_next(1, boom)

    for value in (b"lost", b"kept"):
        producer.produce("t", value, on_delivery=lambda e, r: reports.append((e, r)))
    assert producer.flush(1) == 0

    (error, failed), (ok, delivered) = reports
    assert error is boom
    assert (failed.value, failed.offset) == (b"lost", -1)
    assert ok is None
    assert (delivered.value, delivered.offset) == (b"kept", 0)
    record = consumer.poll(1)
    assert record is not None
    assert record.value == b"kept"
    assert consumer.poll(0) is None


def test_close_fails_records_still_held():
    transport = MemoryTransport()
    producer = transport.producer()
    reports: list[Report] = []
    transport.broker.pause_delivery()
    producer.produce("t", b"v", on_delivery=lambda e, r: reports.append((e, r)))

    producer.close(timeout=0.05)

    [(error, record)] = reports
    assert isinstance(error, TransportError)
    assert record.offset == -1


def test_consumer_poll_blocks_until_a_record_arrives():
    transport = MemoryTransport()
    consumer = ready_consumer(transport, "t")
    producer = transport.producer()
    timer = threading.Timer(0.2, producer.produce, ("t", b"late"))
    started = time.monotonic()
    timer.start()
    try:
        record = consumer.poll(10)
    finally:
        timer.join()
    elapsed = time.monotonic() - started
    assert record is not None
    assert record.value == b"late"
    assert 0.15 < elapsed < 5, elapsed  # it waited, and woke on the record, not the timeout


def test_consumer_poll_times_out_with_none():
    transport = MemoryTransport()
    consumer = ready_consumer(transport, "t")
    started = time.monotonic()
    assert consumer.poll(0.2) is None
    assert 0.15 < time.monotonic() - started < 2


def test_producer_poll_blocks_until_a_report_is_ready():
    transport = MemoryTransport()
    producer = transport.producer()
    served: list[Report] = []
    timer = threading.Timer(
        0.2, producer.produce, ("t", b"v"), {"on_delivery": lambda e, r: served.append((e, r))}
    )
    started = time.monotonic()
    timer.start()
    try:
        assert producer.poll(10) == 1
    finally:
        timer.join()
    assert 0.15 < time.monotonic() - started < 5
    assert len(served) == 1


def test_producing_to_a_missing_topic_creates_it_with_default_partitions():
    transport = MemoryTransport(default_partitions=4)
    producer = transport.producer()
    producer.produce("auto", b"v", b"k")
    assert transport.list_topics() == {"auto": 4}


def test_keyless_records_go_round_robin():
    transport = MemoryTransport()
    transport.ensure_topics(["t"], 3)
    producer = transport.producer()
    reports: list[Report] = []
    for _ in range(6):
        producer.produce("t", b"v", on_delivery=lambda e, r: reports.append((e, r)))
    producer.flush(1)
    assert [r.partition for _, r in reports] == [0, 1, 2, 0, 1, 2]


def test_transports_are_isolated_unless_they_share_a_broker():
    first, second = MemoryTransport(), MemoryTransport()
    shared = MemoryTransport(broker=first.broker)
    first.ensure_topics(["t"])
    assert "t" not in second.list_topics()
    consumer = ready_consumer(shared, "t")
    first.producer().produce("t", b"across")
    record = consumer.poll(1)
    assert record is not None
    assert record.value == b"across"


def test_earliest_reset_reads_from_the_start():
    transport = MemoryTransport(auto_offset_reset="earliest")
    producer = transport.producer()
    producer.produce("t", b"old")
    consumer = transport.consumer("g", ["t"])
    record = consumer.poll(1)
    assert record is not None
    assert record.value == b"old"


def test_subscription_to_a_topic_created_later_gets_its_partitions():
    transport = MemoryTransport()
    assigned: list[list[tuple[str, int]]] = []
    consumer = transport.consumer("g", ["later"], on_assign=assigned.append)
    assert consumer.poll(0) is None
    assert consumer.is_ready()
    assert assigned == [[]]  # the first assignment may be empty
    transport.ensure_topics(["later"], 2)
    assert consumer.poll(0) is None
    assert consumer.assignment() == [("later", 0), ("later", 1)]
    assert assigned[-1] == [("later", 0), ("later", 1)]


def test_revoked_partition_waits_for_its_owner_to_release_it():
    """The joining member gets a partition only after the owner committed and revoked it:
    records the owner stored are not read twice."""
    transport = MemoryTransport()
    transport.ensure_topics(["t"], 2)
    events: list[str] = []
    one = transport.consumer("g", ["t"], on_revoke=lambda ps: events.append(f"revoke {ps}"))
    assert one.poll(0) is None
    assert one.assignment() == [("t", 0), ("t", 1)]
    two = transport.consumer("g", ["t"], on_assign=lambda ps: events.append(f"assign {ps}"))
    assert two.poll(0) is None
    assert two.is_ready()
    assert two.assignment() == []  # one has not given anything up yet
    assert one.poll(0) is None
    assert two.poll(0) is None
    assert len(one.assignment()) == len(two.assignment()) == 1
    moved = two.assignment()
    assert events == ["assign []", f"revoke {moved}", f"assign {moved}"]


def test_store_of_a_revoked_partition_is_ignored():
    transport = MemoryTransport()
    transport.ensure_topics(["t"])
    producer = transport.producer()
    one = ready_consumer(transport, "t")
    producer.produce("t", b"v")
    record = one.poll(1)
    assert record is not None
    one.close()
    one.store(record)  # no longer assigned: the record will be read again
    assert transport.broker.committed("g", "t", 0) == 0  # the start, committed at assignment


def test_revocation_commits_offsets_stored_before_and_during_on_revoke():
    transport = MemoryTransport()
    transport.ensure_topics(["t"], 2)
    stored_in_revoke: list[Record] = []
    one = transport.consumer(
        "g", ["t"], on_revoke=lambda ps: [one.store(r) for r in stored_in_revoke]
    )
    assert one.poll(0) is None
    producer = transport.producer()
    for value in (b"p0-a", b"p1-a", b"p0-b", b"p1-b", b"p0-c", b"p1-c"):  # round-robin
        producer.produce("t", value)
    read = [one.poll(1) for _ in range(6)]
    p1 = [r for r in read if r is not None and r.partition == 1]
    assert [r.value for r in p1] == [b"p1-a", b"p1-b", b"p1-c"]
    one.store(p1[0])
    stored_in_revoke.append(p1[1])  # finished while the partition was being revoked

    two = transport.consumer("g", ["t"])  # joining moves partition 1 to two
    assert two.poll(0) is None
    assert one.poll(0) is None  # one gives partition 1 up (not closed)
    record = two.poll(1)

    assert transport.broker.committed("g", "t", 1) == 2
    assert two.assignment() == [("t", 1)]
    assert record is not None
    assert record.value == b"p1-c"


# -- deliver: testing an inbound route ----------------------------------------------------


def _quickstart_snippet(containing: str) -> str:
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "quickstart.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    [block] = [b for b in blocks if containing in b]
    return block


def test_the_quickstart_inbound_test_runs():
    """The documented test asserts right after ``deliver``: it fails unless deliver
    waits for the handler."""
    from eventbus import EventBus

    snippet = _quickstart_snippet("transport.deliver(")
    namespace: dict[str, Any] = {}
    exec(compile(snippet, "quickstart.md", "exec"), namespace)
    namespace["test_welcome_on_registration"](EventBus())


def test_deliver_writes_what_a_bridge_writes_and_waits_for_dead_letters_too():
    from bridge import Bridge, Route
    from eventbus import EventBus

    bus = EventBus()
    senders: list[object] = []

    @bus.on("order.placed")
    def handle(sender: object, *, n: int) -> None:
        senders.append(sender)
        if n < 0:
            raise ValueError("negative")

    transport = MemoryTransport()
    route = Route.inbound("order.*", topic="orders")
    with Bridge(bus, transport=transport, service="shop", routes=[route], backoff=0) as bridge:
        record = transport.deliver("orders", "order.placed", {"n": 1}, key="o-1", source="web")
        assert record.key == b"o-1"
        [sender] = senders
        assert (sender.source, sender.offset) == ("web", record.offset)  # type: ignore[attr-defined]
        transport.deliver("orders", "order.placed", {"n": -1})
        assert bridge.stats.dead_lettered == 1  # done once its dead letter is written
        [letter] = _read_all(transport, "orders.dlq")
        assert letter.value == transport.broker._logs["orders"][0][1].value


def _read_all(transport: MemoryTransport, topic: str) -> list[Record]:
    with transport.broker._cond:
        return [r for log in transport.broker._logs[topic] for r in log]


def test_deliver_times_out_naming_the_group_that_did_not_finish():
    transport = MemoryTransport()
    transport.ensure_topics(["t"])
    consumer = transport.consumer("idle", ["t"])
    consumer.poll(0)  # assigned, never handles anything
    with pytest.raises(TimeoutError, match="idle"):
        transport.deliver("t", "a.b", {}, timeout=0.05)
    consumer.close()
    # no group reads the topic any more: nothing to wait for
    assert transport.deliver("t", "a.b", {}).offset == 1
