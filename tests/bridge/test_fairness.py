"""Partition fairness: a backlog in one partition does not hold the others back.

librdkafka hands records out one fetched chunk after another (hundreds to thousands of
one partition); the bridge reads ahead and hands them to the handlers partition by
partition in turn (``bridge._interleave``), in order within each partition.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from bridge import Record, Route, Transport
from bridge._interleave import Interleaved
from bridge._transport import Consumer
from eventbus import EventBus
from tests.bridge.helpers import make_bridge as bridge
from tests.bridge.helpers import unique, wait_for

PER_KEY = 50
KEYS = 20  # on 2 partitions: each gets several keys (hashing them) of certain


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_backlog_in_one_partition_does_not_hold_back_the_other(
    transport: Transport, concurrency: int
) -> None:
    topic = unique("fair")
    out, inbound = EventBus(), EventBus()
    lock = threading.Lock()
    order: list[int] = []  # the partition of each record handled, in order
    seqs: dict[int, list[int]] = {}

    @inbound.on("acct.moved")
    def handle(sender: Any, *, acct: int, seq: int) -> None:
        # Slow (below SLOW_BELOW records/s even with 4 at once): fairness matters, and
        # librdkafka has fetched both partitions meanwhile.
        time.sleep(0.002)
        with lock:
            order.append(sender.partition)
            seqs.setdefault(acct, []).append(seq)

    route = Route.inbound("acct.*", topic=topic)
    options: dict[str, Any] = {"partitions": 2, "concurrency": concurrency}
    with bridge(inbound, transport, "ledger", route, **options):
        pass  # the group's start is fixed (committed) before the backlog is written
    with bridge(out, transport, "api", Route.outbound("acct.*", topic=topic, key="acct")) as b:
        for seq in range(PER_KEY):
            for acct in range(KEYS):
                out.emit("acct.moved", acct=acct, seq=seq)
        wait_for(lambda: b.stats.produced == PER_KEY * KEYS, what="the backlog written")
    total = PER_KEY * KEYS
    with bridge(inbound, transport, "ledger", route, **options) as b:
        wait_for(lambda: len(order) == total, timeout=60, what=f"{total} records handled")
        wait_for(lambda: b.stats.handled == total, what="the counters")
    assert set(order) == {0, 1}
    backlog = min(order.count(0), order.count(1))
    first_switch = next(i for i, p in enumerate(order) if p != order[0])
    # Today's batch (100) plus a share of the next at most: a small fraction of the
    # first partition's backlog, not all of it.
    assert first_switch <= 150 < backlog, (first_switch, backlog)
    assert seqs == {acct: list(range(PER_KEY)) for acct in range(KEYS)}  # order per key


# -- Interleaved over a scripted consumer (our logic only) -------------------------------


class Scripted(Consumer):
    """Returns the records it is given, in the order given (librdkafka's chunks)."""

    def __init__(self, records: Sequence[Record]) -> None:
        self.records = list(records)
        self.paused: set[tuple[str, int]] = set()
        self.sought: list[Record] = []

    def consume(self, max_records: int, timeout: float) -> list[Record]:
        taken = [r for r in self.records if (r.topic, r.partition) not in self.paused]
        taken = taken[:max_records]
        for r in taken:
            self.records.remove(r)
        return taken

    def poll(self, timeout: float) -> Record | None:
        raise NotImplementedError

    def store(self, record: Record) -> None:
        pass

    def commit(self) -> None:
        pass

    def pause(self, partitions: Sequence[tuple[str, int]]) -> None:
        self.paused.update(partitions)

    def resume(self, partitions: Sequence[tuple[str, int]]) -> None:
        self.paused.difference_update(partitions)

    def is_ready(self) -> bool:
        return True

    def assignment(self) -> list[tuple[str, int]]:
        return [("t", 0), ("t", 1), ("t", 2)]

    def position(self, topic: str, partition: int) -> int | None:
        return None

    def seek(self, record: Record) -> None:
        self.sought.append(record)

    def close(self) -> None:
        pass


SLOW = float("inf")  # as slow a consumer as it gets: it always reads far ahead


def chunk(partition: int, offsets: range) -> list[Record]:
    return [Record("t", partition, o, None, b"v", (), None) for o in offsets]


def drain(source: Interleaved, batch: int) -> list[list[Record]]:
    batches = []
    while records := source.consume(batch, 0):
        batches.append(records)
    return batches


def test_batches_take_equal_shares_of_each_partition_in_order() -> None:
    source = Interleaved(
        Scripted(chunk(0, range(1000)) + chunk(1, range(50))), 100, slow_below=SLOW
    )
    batches = drain(source, 100)
    first = batches[0]
    assert {r.partition for r in first} == {0, 1}
    assert sum(r.partition == 1 for r in first) == 50  # half the batch
    every = [r for b in batches for r in b]
    for p in (0, 1):
        offsets = [r.offset for r in every if r.partition == p]
        assert offsets == sorted(offsets) and len(offsets) == len(set(offsets))
    assert len(every) == 1050


def test_the_partition_served_first_rotates() -> None:
    source = Interleaved(Scripted(chunk(0, range(10)) + chunk(1, range(10))), 100, slow_below=SLOW)
    firsts = [source.consume(2, 0)[0].partition for _ in range(4)]
    assert firsts in ([0, 1, 0, 1], [1, 0, 1, 0])


def test_a_paused_partition_keeps_what_was_read_ahead_and_hands_none_out() -> None:
    consumer = Scripted(chunk(0, range(10)) + chunk(1, range(10)))
    source = Interleaved(consumer, 100, slow_below=SLOW)
    source.consume(2, 0)  # reads everything ahead
    source.pause([("t", 0)])
    rest = drain(source, 4)
    assert {r.partition for b in rest for r in b} == {1}
    source.resume([("t", 0)])
    zero = [r.offset for b in drain(source, 4) for r in b]
    assert zero == list(range(1, 10))  # offset 0 went out in the first batch


def test_revoked_and_rewound_partitions_drop_what_was_read_ahead() -> None:
    consumer = Scripted(chunk(0, range(10)) + chunk(1, range(10)) + chunk(2, range(10)))
    source = Interleaved(consumer, 100, slow_below=SLOW)
    first = source.consume(3, 0)
    assert source.waiting() == 27
    source.drop([("t", 1)])  # revoked: its new owner reads it from the committed offset
    held = next(r for r in first if r.partition == 2)
    source.seek(Record("t", 2, held.offset + 3, None, b"v", (), None))
    rest = [r for b in drain(source, 10) for r in b]
    assert {r.partition for r in rest} == {0, 2}
    assert [r.offset for r in rest if r.partition == 2] == [1, 2]  # before the rewind
    assert consumer.sought  # the consumer itself was rewound
    assert source.waiting() == 0


def test_a_full_read_ahead_of_paused_partitions_still_polls_the_consumer() -> None:
    consumer = Scripted(chunk(0, range(150)) + chunk(1, range(150)))
    source = Interleaved(consumer, 100, slow_below=SLOW)
    source.consume(1, 0)  # reads all of it ahead: more than a batch
    source.pause([("t", 0), ("t", 1)])  # (a busy scheduler)
    consumer.records += chunk(2, range(5))  # a partition assigned meanwhile
    taken = [r for b in drain(source, 10) for r in b]
    assert [r.offset for r in taken] == list(range(5)) and {r.partition for r in taken} == {2}


def test_a_fast_consumer_reads_ahead_a_batch_only() -> None:
    """Thousands of records kept alive would cost a fast consumer full collections; it
    drains a fetched chunk quickly anyway."""
    consumer = Scripted(chunk(0, range(3000)) + chunk(1, range(3000)))
    source = Interleaved(consumer, 100)
    source._rate = 1e6  # handed out as fast as this loop takes them
    most = 0
    while source.consume(100, 0):
        most = max(most, source.waiting())
    assert most <= 100
    slow = Interleaved(Scripted(chunk(0, range(3000)) + chunk(1, range(3000))), 100)
    slow.consume(100, 0)
    slow._rate = 10.0  # ten records a second so far
    slow.consume(100, 0)
    assert slow.waiting() > 3000  # read past partition 0's chunk
