"""The transport contract: ONE suite that every transport must pass (memory and Kafka).

Each test gets fresh topic names and group ids. Waiting is always "poll until a predicate
holds, with a deadline"; to prove that nothing else arrives, a sentinel record is produced
after the others and reading stops at it (per-partition order makes that exact).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bridge._errors import TransportError
from bridge._kafka import KafkaTransport
from bridge._memory import MemoryTransport
from bridge._transport import Consumer, Producer, Record, Transport

# Generous: a group join or rebalance takes seconds on a loaded 2-core CI machine, and a
# deadline only costs time when the test fails anyway.
DEADLINE = 30.0


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.kafka)])
def transport(request: pytest.FixtureRequest) -> Iterator[Transport]:
    if request.param == "memory":
        yield MemoryTransport()
        return
    from bridge._kafka import KafkaTransport

    bootstrap = request.getfixturevalue("kafka_bootstrap")
    # Rebalances are announced with heartbeats: a short interval keeps group tests fast.
    kafka = KafkaTransport({"bootstrap.servers": bootstrap, "heartbeat.interval.ms": 500})
    yield kafka
    kafka.close()


@pytest.fixture
def created_topics(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """Names of the topics a test made; deleted afterwards on Kafka."""
    kafka = request.node.callspec.params["transport"] == "kafka"
    admin = request.getfixturevalue("kafka_admin") if kafka else None
    created: list[str] = []
    yield created
    if admin is not None and created:
        for future in admin.delete_topics(created, operation_timeout=10).values():
            future.result(timeout=30)


@pytest.fixture
def new_topic(transport: Transport, created_topics: list[str]) -> Callable[..., str]:
    """Factory: a fresh topic with ``partitions`` partitions, created through the transport."""

    def make(partitions: int = 1) -> str:
        name = f"contract-{uuid.uuid4().hex[:12]}"
        created_topics.append(name)
        transport.ensure_topics([name], partitions, timeout=DEADLINE)
        return name

    return make


@pytest.fixture
def producer(transport: Transport) -> Iterator[Producer]:
    p = transport.producer()
    yield p
    p.close(5)


@pytest.fixture
def consumers(transport: Transport) -> Iterator[Callable[..., Consumer]]:
    """Factory for consumers that are closed after the test (closing twice is fine)."""
    made: list[Consumer] = []

    def make(group: str, topics: list[str], **kwargs: Any) -> Consumer:
        consumer = transport.consumer(group, topics, **kwargs)
        made.append(consumer)
        return consumer

    yield make
    for consumer in made:
        consumer.close()


def group_id() -> str:
    return f"group-{uuid.uuid4().hex[:12]}"


def until(
    consumers: list[Consumer],
    done: Callable[[], bool],
    what: str,
    sink: dict[int, list[Record]] | None = None,
    timeout: float = DEADLINE,
) -> dict[int, list[Record]]:
    """Poll every consumer in turn until ``done()``; return the records each one read
    (by position in ``consumers``). Fails the test after ``timeout`` seconds."""
    got = sink if sink is not None else {i: [] for i in range(len(consumers))}
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; got {got}")
        for i, consumer in enumerate(consumers):
            record = consumer.poll(0.05)
            if record is not None:
                got[i].append(record)
    return got


def ready(*consumers: Consumer, records: list[Record] | None = None) -> None:
    """Poll until every consumer is ready. Records read meanwhile go to ``records``;
    without it, none may arrive."""
    got = until(list(consumers), lambda: all(c.is_ready() for c in consumers), "readiness")
    if records is None:
        assert not any(got.values()), f"records before anything was produced: {got}"
    else:
        records.extend(r for rs in got.values() for r in rs)


def read_until(consumer: Consumer, stop: Callable[[list[Record]], bool], what: str) -> list[Record]:
    records: list[Record] = []
    until([consumer], lambda: stop(records), what, sink={0: records})
    return records


def values(records: list[Record]) -> list[bytes | None]:
    return [r.value for r in records]


def produce_all(
    producer: Producer, topic: str, items: list[tuple[bytes | None, bytes]]
) -> list[Record]:
    """Produce ``(key, value)`` items, flush, return their delivery reports in order."""
    reports: list[tuple[Exception | None, Record]] = []
    for key, value in items:
        producer.produce(topic, value, key, on_delivery=lambda e, r: reports.append((e, r)))
    assert producer.flush(DEADLINE) == 0
    assert len(reports) == len(items)
    assert all(error is None for error, _ in reports), reports
    by_value = {r.value: r for _, r in reports}
    return [by_value[value] for _, value in items]


def keys_per_partition(producer: Producer, topic: str, partitions: int) -> dict[int, bytes]:
    """Find a key for each partition by producing probes (their values start with ``probe``)."""
    found: dict[int, bytes] = {}
    n = 0
    while len(found) < partitions:
        batch = [(f"key-{n + i}".encode(), f"probe-{n + i}".encode()) for i in range(16)]
        for record in produce_all(producer, topic, batch):
            found.setdefault(record.partition, record.key or b"")
        n += 16
        assert n < 1000, "keys never reached every partition"
    return found


# -- the contract ----------------------------------------------------------------------


def test_round_trip_keeps_key_value_and_headers(new_topic, producer, consumers):
    topic = new_topic()
    consumer = consumers(group_id(), [topic])
    ready(consumer)
    value = bytes(range(256))
    headers = [("a", b"1"), ("bin", b"\x00\xff\x80"), ("a", b"2"), ("empty", b"")]

    producer.produce(topic, value, b"\x00key\xff", headers)
    assert producer.flush(DEADLINE) == 0
    [record] = read_until(consumer, lambda rs: len(rs) >= 1, "the record")

    assert (record.topic, record.partition, record.offset) == (topic, 0, 0)
    assert record.key == b"\x00key\xff"
    assert record.value == value
    assert list(record.headers) == list(headers)
    assert record.header("a") == b"2"
    assert record.header("missing") is None
    assert record.timestamp_ms is not None
    assert abs(record.timestamp_ms / 1000 - time.time()) < 60


def test_same_key_same_partition_and_order_kept(new_topic, producer, consumers):
    topic = new_topic(3)
    consumer = consumers(group_id(), [topic])
    ready(consumer)
    keys = [f"entity-{i}".encode() for i in range(6)]
    items = [(keys[n % len(keys)], f"{n}".encode()) for n in range(60)]

    reports = produce_all(producer, topic, items)
    records = read_until(consumer, lambda rs: len(rs) >= len(items), "all records")

    for key in keys:
        mine = [r for r in records if r.key == key]
        assert len({r.partition for r in mine}) == 1, f"{key!r} spread over partitions"
        assert [int(r.value or b"") for r in mine] == [
            n for n, (k, _) in enumerate(items) if k == key
        ]
        offsets = [r.offset for r in mine]
        assert offsets == sorted(offsets)
        assert {r.partition for r in reports if r.key == key} == {mine[0].partition}
    assert len({r.partition for r in records}) > 1, "six keys all hashed to one partition"


def test_delivery_callback_reports_success_with_position(new_topic, producer):
    topic = new_topic(2)
    reports: list[tuple[Exception | None, Record]] = []
    headers = [("h", b"v")]

    producer.produce(topic, b"value", b"key", headers, lambda e, r: reports.append((e, r)))
    assert producer.flush(DEADLINE) == 0

    [(error, record)] = reports
    assert error is None
    assert record.topic == topic
    assert record.partition in (0, 1)
    assert record.offset == 0
    assert (record.key, record.value, record.headers) == (b"key", b"value", tuple(headers))


def test_flush_returns_zero_once_everything_is_delivered(new_topic, producer):
    topic = new_topic()
    served: list[Exception | None] = []
    for n in range(100):
        producer.produce(topic, b"%d" % n, on_delivery=lambda e, r: served.append(e))
    producer.produce(topic, b"no callback")

    assert producer.flush(DEADLINE) == 0
    assert served == [None] * 100
    assert producer.flush(0) == 0
    assert producer.poll(0) == 0  # nothing left to serve


def test_two_groups_each_see_every_record(new_topic, producer, consumers):
    topic = new_topic(2)
    first, second = consumers(group_id(), [topic]), consumers(group_id(), [topic])
    ready(first, second)
    items = [(b"k%d" % n, b"v%d" % n) for n in range(20)]

    produce_all(producer, topic, items)

    for consumer in (first, second):
        records = read_until(consumer, lambda rs: len(rs) >= 20, "all records")
        assert sorted(values(records)) == sorted(v for _, v in items)


def test_ready_then_produce_is_read_with_latest_reset(new_topic, producer, consumers):
    topic = new_topic()
    produce_all(producer, topic, [(None, b"before the group existed")])
    consumer = consumers(group_id(), [topic])
    ready(consumer)

    produce_all(producer, topic, [(None, b"after ready")])

    records = read_until(consumer, lambda rs: len(rs) >= 1, "the record produced after ready")
    assert values(records) == [b"after ready"]


def test_from_beginning_reads_older_records(new_topic, producer, consumers):
    topic = new_topic()
    produce_all(producer, topic, [(None, b"old")])
    consumer = consumers(group_id(), [topic], from_beginning=True)
    records = read_until(consumer, lambda rs: len(rs) >= 1, "the old record")
    assert values(records) == [b"old"]


def test_committed_offsets_are_where_the_group_resumes(new_topic, producer, consumers):
    topic, group = new_topic(), group_id()
    first = consumers(group, [topic])
    ready(first)
    produce_all(producer, topic, [(None, b"a"), (None, b"b")])
    for record in read_until(first, lambda rs: len(rs) >= 2, "a and b"):
        first.store(record)
    first.commit()
    first.close()
    # Produced while no member is running: only a committed offset makes them visible
    # to the next member (with no commit it would start at the end and miss them).
    produce_all(producer, topic, [(None, b"c"), (None, b"d")])

    second = consumers(group, [topic])
    records = read_until(second, lambda rs: b"d" in values(rs), "c and d")
    assert values(records) == [b"c", b"d"]


def test_unstored_records_are_redelivered_after_restart(new_topic, producer, consumers):
    topic, group = new_topic(), group_id()
    first = consumers(group, [topic])
    ready(first)
    produce_all(producer, topic, [(None, b"a"), (None, b"b"), (None, b"c")])
    records = read_until(first, lambda rs: len(rs) >= 3, "a, b, c")
    first.store(records[0])  # b and c were read but not processed
    first.close()  # commits what was stored

    second = consumers(group, [topic])
    early: list[Record] = []
    ready(second, records=early)
    produce_all(producer, topic, [(None, b"end")])
    records = read_until(second, lambda rs: b"end" in values(early + rs), "the sentinel")
    assert values(early + records) == [b"b", b"c", b"end"]


def test_store_without_commit_is_committed_on_close(new_topic, producer, consumers):
    topic, group = new_topic(), group_id()
    first = consumers(group, [topic])
    ready(first)
    produce_all(producer, topic, [(None, b"a"), (None, b"b")])
    for record in read_until(first, lambda rs: len(rs) >= 2, "a and b"):
        first.store(record)
    first.close()
    first.close()  # idempotent

    second = consumers(group, [topic])
    ready(second)
    produce_all(producer, topic, [(None, b"end")])
    assert values(read_until(second, lambda rs: len(rs) >= 1, "end")) == [b"end"]


def test_commit_with_nothing_stored_is_a_no_op(new_topic, consumers):
    consumer = consumers(group_id(), [new_topic()])
    ready(consumer)
    consumer.commit()
    consumer.commit()


def test_ensure_topics_creates_and_list_topics_shows_partitions(transport, created_topics):
    names = [f"contract-{uuid.uuid4().hex[:12]}" for _ in range(2)]
    created_topics.extend(names)
    assert not set(names) & set(transport.list_topics(timeout=DEADLINE))

    transport.ensure_topics(names, 3, timeout=DEADLINE)
    transport.ensure_topics(names, 3, timeout=DEADLINE)  # existing: nothing to do

    listed = transport.list_topics(timeout=DEADLINE)
    assert {name: listed.get(name) for name in names} == dict.fromkeys(names, 3)


def test_group_members_share_partitions_and_take_over_on_close(new_topic, producer, consumers):
    topic, group = new_topic(2), group_id()
    key = keys_per_partition(producer, topic, 2)  # probes land before the group starts
    revoked: list[list[tuple[str, int]]] = []
    one = consumers(group, [topic], on_revoke=revoked.append)
    two = consumers(group, [topic])
    members = [one, two]
    until(
        members,
        lambda: (
            all(c.is_ready() for c in members)
            and len(one.assignment()) == 1
            and len(two.assignment()) == 1
        ),
        "one partition each",
    )
    assert sorted(one.assignment() + two.assignment()) == [(topic, 0), (topic, 1)]
    [(_, p_one)] = one.assignment()
    [(_, p_two)] = two.assignment()

    items = [(key[p_one], b"one-%d" % n) for n in range(3)]
    items += [(key[p_two], b"two-%d" % n) for n in range(3)]
    produce_all(producer, topic, items)
    got: dict[int, list[Record]] = {0: [], 1: []}
    until(members, lambda: len(got[0]) + len(got[1]) >= 6, "six records", sink=got)
    assert values(got[0]) == [b"one-0", b"one-1", b"one-2"]
    assert values(got[1]) == [b"two-0", b"two-1", b"two-2"]
    one.store(got[0][0])  # one processed one-0 only
    for record in got[1]:
        two.store(record)

    one.close()
    assert revoked[-1] == [(topic, p_one)]
    taken = until([two], lambda: len(two.assignment()) == 2, "two takes over both partitions")
    produce_all(producer, topic, [(key[p_one], b"end-one"), (key[p_two], b"end-two")])
    rest = read_until(
        two, lambda rs: {b"end-one", b"end-two"} <= set(values(taken[0] + rs)), "both sentinels"
    )
    seen = taken[0] + rest
    assert sorted(values(seen)) == [b"end-one", b"end-two", b"one-1", b"one-2"]
    assert values([r for r in seen if r.partition == p_one]) == [b"one-1", b"one-2", b"end-one"]


def test_closed_producer_and_consumer_refuse_work(transport, new_topic):
    topic = new_topic()
    producer = transport.producer()
    producer.close(5)
    producer.close(5)  # idempotent
    with pytest.raises(TransportError):
        producer.produce(topic, b"late")
    consumer = transport.consumer(group_id(), [topic])
    consumer.close()
    with pytest.raises(TransportError):
        consumer.poll(0)


def test_lag_counts_records_behind_the_end(new_topic, producer, consumers):
    topic = new_topic(1)
    consumer = consumers(group_id(), [topic])
    ready(consumer)
    produce_all(producer, topic, [(None, f"{n}".encode()) for n in range(5)])
    [first] = read_until(consumer, lambda rs: len(rs) >= 1, "the first record")
    assert first.value == b"0"
    deadline = time.monotonic() + DEADLINE
    while consumer.lag() != 4:  # the end offsets arrive with fetch responses
        assert time.monotonic() < deadline, f"lag is {consumer.lag()}, expected 4"
        time.sleep(0.01)


def test_failures_only_producer_reports_failures_and_nothing_else(transport, new_topic):
    topic = new_topic()
    failures: list[tuple[Exception, Record]] = []
    producer = transport.producer(on_failure=lambda e, r: failures.append((e, r)))
    try:
        with pytest.raises(ValueError, match="no on_delivery"):
            producer.produce(topic, b"x", on_delivery=lambda e, r: None)
        for n in range(20):
            producer.produce(topic, b"%d" % n, b"k", [("h", b"v")])
        assert producer.flush(DEADLINE) == 0
        assert producer.in_flight() == 0
        assert failures == []  # delivered: no report at all
    finally:
        producer.close(DEADLINE)

    # A record that cannot be delivered: injected (memory), no broker to take it (Kafka).
    if isinstance(transport, MemoryTransport):
        transport.broker.fail_next(1)
        failing = transport.producer(on_failure=lambda e, r: failures.append((e, r)))
    else:
        unreachable = KafkaTransport(
            {"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 200}
        )
        failing = unreachable.producer(on_failure=lambda e, r: failures.append((e, r)))
    try:
        failing.produce(topic, b"lost", b"k2", [("h", b"v")])
        assert failing.flush(DEADLINE) == 0
    finally:
        failing.close(DEADLINE)
    [(error, record)] = failures
    assert isinstance(error, TransportError)
    assert (record.topic, record.offset, record.key, record.value) == (topic, -1, b"k2", b"lost")
    assert record.headers == ()  # failure reports of this producer carry no headers
    assert failing.in_flight() == 0


def test_position_and_watermarks(transport, new_topic, producer, consumers):
    topic, group = new_topic(2), group_id()
    keys = keys_per_partition(producer, topic, 2)
    consumer = consumers(group, [topic], from_beginning=True)
    early: list[Record] = []
    ready(consumer, records=early)
    marks = transport.watermarks(topic, DEADLINE)
    assert sorted(marks) == [0, 1] and all(low == 0 for low, _ in marks.values())
    ends = {p: high for p, (_, high) in marks.items()}
    assert sum(ends.values()) >= 2
    assert consumer.position(topic, 0) is not None
    assert consumer.position("no-such-topic", 0) is None
    records = read_until(consumer, lambda rs: len(early + rs) >= sum(ends.values()), "every probe")
    for p in (0, 1):
        assert consumer.position(topic, p) == ends[p]
    produce_all(producer, topic, [(keys[1], b"more")])
    assert transport.watermarks(topic, DEADLINE)[1] == (0, ends[1] + 1)
    assert len(early + records) == sum(ends.values())
    with pytest.raises(TransportError):
        transport.watermarks(f"no-such-topic-{uuid.uuid4().hex}", 2.0)


def test_delete_records_moves_the_first_offset(transport, new_topic, producer, consumers):
    topic = new_topic()
    produce_all(producer, topic, [(None, b"a"), (None, b"b"), (None, b"c")])
    transport.delete_records(topic, {0: 2}, DEADLINE)
    assert transport.watermarks(topic, DEADLINE) == {0: (2, 3)}
    consumer = consumers(group_id(), [topic], from_beginning=True)
    early: list[Record] = []
    ready(consumer, records=early)
    assert values(early + read_until(consumer, lambda rs: len(early + rs) >= 1, "c")) == [b"c"]


def test_seek_rewinds_a_paused_partition_to_a_record(new_topic, producer, consumers):
    topic, group = new_topic(2), group_id()
    keys = keys_per_partition(producer, topic, 2)
    consumer = consumers(group, [topic])
    ready(consumer)
    produce_all(producer, topic, [(keys[0], b"a0"), (keys[0], b"b0"), (keys[0], b"c0")])
    first = read_until(consumer, lambda rs: len(rs) >= 2, "a0, b0")
    assert values(first[:2]) == [b"a0", b"b0"]
    consumer.pause([(topic, 0)])
    consumer.seek(first[1])  # b0 (and c0, if fetched) come again after resume
    produce_all(producer, topic, [(keys[1], b"x1"), (keys[0], b"d0"), (keys[1], b"end1")])
    other = read_until(consumer, lambda rs: b"end1" in values(rs), "partition 1 while 0 is paused")
    assert [v for v in values(other) if v.endswith(b"0")] == []  # partition 0 waits
    consumer.resume([(topic, 0)])
    again = read_until(consumer, lambda rs: b"d0" in values(rs), "partition 0 after resume")
    assert values(again) == [b"b0", b"c0", b"d0"]
    consumer.seek(again[0])  # not paused: b0 comes at once
    assert values(read_until(consumer, lambda rs: b"d0" in values(rs), "b0 again")) == [
        b"b0",
        b"c0",
        b"d0",
    ]


def test_pause_stops_a_partition_and_resume_continues_after_the_last_record(
    new_topic, producer, consumers
):
    topic = new_topic(2)
    key = keys_per_partition(producer, topic, 2)
    consumer = consumers(group_id(), [topic])
    ready(consumer)
    produce_all(producer, topic, [(key[0], b"a0"), (key[1], b"b0")])
    read_until(consumer, lambda rs: len(rs) >= 2, "one record of each partition")

    consumer.pause([(topic, 0)])
    items = [(key[0], b"a%d" % n) for n in range(1, 4)] + [(key[1], b"b1"), (key[1], b"end")]
    produce_all(producer, topic, items)
    while_paused = read_until(consumer, lambda rs: b"end" in values(rs), "the sentinel")
    assert values(while_paused) == [b"b1", b"end"]  # nothing of the paused partition

    consumer.resume([(topic, 0)])
    after = read_until(consumer, lambda rs: len(rs) >= 3, "the paused partition's records")
    assert values(after) == [b"a1", b"a2", b"a3"]  # none skipped, none repeated


def test_offsets_stored_in_on_revoke_are_committed(new_topic, producer, consumers):
    topic, group = new_topic(1), group_id()
    holder: list[Consumer] = []
    read: list[Record] = []
    revoked: list[list[tuple[str, int]]] = []

    def on_revoke(partitions: list[tuple[str, int]]) -> None:
        revoked.append(partitions)
        holder[0].store(read[0])  # finished during the revocation: must be committed

    one = consumers(group, [topic], on_revoke=on_revoke)
    holder.append(one)
    ready(one)
    produce_all(producer, topic, [(None, b"first"), (None, b"second")])
    read.extend(read_until(one, lambda rs: len(rs) >= 2, "two records"))
    one.close()
    assert revoked == [[(topic, 0)]]

    two = consumers(group, [topic])
    again = read_until(two, lambda rs: len(rs) >= 1, "the record not committed")
    assert values(again) == [b"second"]
