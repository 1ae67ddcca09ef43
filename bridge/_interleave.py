"""Partition fairness: records read ahead from the consumer, handed out partition by
partition in turn.

librdkafka's queue holds what each fetch response brought, one partition's chunk after
another (up to ``max.partition.fetch.bytes`` of each, and whole producer batches), so a
consumer that takes records in queue order drains thousands of one partition before it
sees the next: with a slow handler, the other partitions wait for minutes. ``Interleaved``
reads ahead into one queue per partition (a batch; while all it holds is of one
partition, others are assigned and the handlers are slow, up to ``LOOKAHEAD`` records
or ``LOOKAHEAD_BYTES`` of values) and hands each batch out in shares: every partition
with records gets an equal part of the batch, and the partition served first rotates.
Order within a partition is kept, so the offset stored for a partition still covers only
records done. "Slow": fewer than ``SLOW_BELOW`` records a second went out over the last
``PACE_WINDOW`` (or none was measured yet); a faster consumer drains a chunk within a
second anyway, and thousands of records kept alive would cost it garbage collections.

A record read ahead is not handed to anyone yet: when the bridge stops, or its
partition is revoked or rewound (``seek``), it is dropped and read again from the
committed (or rewound) offset. A paused partition keeps what was read ahead of it and
hands none of it out until resumed (librdkafka then fetches after it).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from itertools import groupby
from operator import itemgetter
from typing import TypeAlias

from ._transport import Consumer, Record

__all__ = ["LOOKAHEAD", "LOOKAHEAD_BYTES", "PACE_WINDOW", "SLOW_BELOW", "Interleaved"]

Partition: TypeAlias = tuple[str, int]
LOOKAHEAD = 5_000
"""Records read ahead at most (``batch_size`` more when that is larger)."""
LOOKAHEAD_BYTES = 16 * 1024 * 1024
"""Bytes of record values read ahead at most (estimated from the records seen)."""
PACE_WINDOW = 0.1
"""Seconds over which the pace of the records handed out is measured."""
SLOW_BELOW = 5_000
"""Records handed out per second below which reading far ahead is worth it: a faster
consumer drains a fetched chunk in well under a second anyway, and thousands of records
kept alive would cost it full garbage collections (docs/performance.md)."""

_partition_of = itemgetter(0, 1)


class _Queue:
    """The records of one partition read ahead: a list and the index of the next one
    (taking slices of a list is much cheaper than popping a deque record by record)."""

    __slots__ = ("head", "records")

    def __init__(self, records: list[Record]) -> None:
        self.records = records
        self.head = 0

    def __len__(self) -> int:
        return len(self.records) - self.head

    def add(self, records: Iterable[Record]) -> None:
        if self.head:
            del self.records[: self.head]
            self.head = 0
        self.records.extend(records)

    def take(self, most: int) -> list[Record]:
        head = self.head
        taken = self.records[head : head + most]
        self.head = head + len(taken)
        return taken


class Interleaved(Consumer):
    """``consumer`` whose ``consume`` hands out the records of its partitions in turn
    (see the module docstring); every other method is the consumer's. The consumer
    thread only."""

    def __init__(
        self, consumer: Consumer, batch_size: int, *, slow_below: float = SLOW_BELOW
    ) -> None:
        self.consumer = consumer
        self.slow_below = slow_below
        self.batch_size = batch_size
        self.lookahead = max(LOOKAHEAD, batch_size)
        self._queues: dict[Partition, _Queue] = {}
        self._count = 0  # records read ahead
        self._paused: set[Partition] = set()
        self._turn = 0  # rotates the partition served first
        self._record_bytes = 0.0  # mean value size seen, for the bytes bound
        self._dropped: set[Partition] = set()  # revoked during the current fill
        self._handed = 0  # records handed out in this window of the pace
        self._window_at = time.monotonic()
        self._rate: float | None = None  # records handed out per second, last window

    # -- reading ahead and handing out ---------------------------------------------------

    def consume(self, max_records: int, timeout: float) -> list[Record]:
        """Up to ``max_records`` records, in shares of the partitions that have some (not
        paused); reads ahead first, waiting up to ``timeout`` only when none are here."""
        if not self._count and len(self.consumer.assignment()) <= 1:
            records = self.consumer.consume(max_records, timeout)  # nothing to interleave
            self._pace(len(records))
            return records
        room = self._room()
        available = self._available()
        if room > 0:
            self._fill(room, timeout if not available else 0.0)
        elif not available:  # full of paused partitions: still serve the consumer, and wait
            self._fill(1, timeout)
        taken = self._take(max_records)
        self._pace(len(taken))
        return taken

    def _pace(self, handed: int) -> None:
        """Count records handed out; at the end of each ``PACE_WINDOW``, the rate."""
        self._handed += handed
        now = time.monotonic()
        elapsed = now - self._window_at
        if elapsed >= PACE_WINDOW:
            self._rate = self._handed / elapsed
            self._handed = 0
            self._window_at = now

    def _room(self) -> int:
        """How many more records to read ahead: a batch; up to ``lookahead``, to find the
        other partitions' records behind one partition's chunk, while all those here are
        of one partition, others are assigned, and records go out slower than
        ``slow_below`` a second (or their pace is not known yet)."""
        rate = self._rate if self.slow_below != float("inf") else 0.0
        if (
            (rate is not None and rate >= self.slow_below)
            or len(self._queues) > 1
            or len(self.consumer.assignment()) <= 1
        ):
            target = self.batch_size
        else:
            target = self.lookahead
        room = target - self._count
        if self._record_bytes > 0:
            room = min(room, int(LOOKAHEAD_BYTES / self._record_bytes) - self._count)
        return room

    def _available(self) -> bool:
        if not self._paused:
            return self._count > 0
        return any(tp not in self._paused for tp in self._queues)

    def _fill(self, room: int, timeout: float) -> None:
        self._dropped.clear()
        records = self.consumer.consume(room, timeout)
        if not records:
            return
        if self._dropped:  # revoked inside this call: read by the partition's new owner
            gone = self._dropped - set(self.consumer.assignment())
            records = [r for r in records if (r.topic, r.partition) not in gone]
        # The bytes bound needs no precision: a sample, not a pass over every record.
        first, last = records[0].value, records[-1].value
        size = (len(first) if first else 0) + (len(last) if last else 0)
        mean = self._record_bytes
        self._record_bytes = size / 2 if not mean else 0.8 * mean + 0.1 * size
        queues = self._queues
        for tp, run in groupby(records, _partition_of):
            queue = queues.get(tp)
            if queue is None:
                queues[tp] = _Queue(list(run))
            else:
                queue.add(run)
        self._count += len(records)

    def _take(self, most: int) -> list[Record]:
        queues = self._queues
        if not queues or most <= 0:
            return []
        if len(queues) == 1 and not self._paused:  # one partition: in order, no shares
            [(tp, queue)] = queues.items()
            taken = queue.take(most)
            if not queue:
                del queues[tp]
            self._count -= len(taken)
            return taken
        ready = [tp for tp in queues if tp not in self._paused]
        if not ready:
            return []
        turn = self._turn % len(ready)
        self._turn += 1
        ready = ready[turn:] + ready[:turn]
        taken = []
        while ready and most > 0:
            share = max(1, most // len(ready))
            left = []
            for tp in ready:
                queue = queues[tp]
                part = queue.take(min(share, most))
                taken += part
                most -= len(part)
                if not queue:
                    del queues[tp]
                else:
                    left.append(tp)
                if most <= 0:
                    break
            ready = left
        self._count -= len(taken)
        return taken

    def drop(self, partitions: Sequence[Partition]) -> None:
        """Forget what was read ahead of ``partitions`` (revoked: their new owner reads
        them from the committed offset)."""
        for tp in partitions:
            self._dropped.add(tp)
            self._paused.discard(tp)
            queue = self._queues.pop(tp, None)
            if queue is not None:
                self._count -= len(queue)

    def waiting(self) -> int:
        """Records read ahead, not handed out yet."""
        return self._count

    # -- the consumer's own methods, kept in step ------------------------------------------

    def poll(self, timeout: float) -> Record | None:
        records = self.consume(1, timeout)
        return records[0] if records else None

    def pause(self, partitions: Sequence[Partition]) -> None:
        self.consumer.pause(partitions)
        self._paused.update(partitions)

    def resume(self, partitions: Sequence[Partition]) -> None:
        self.consumer.resume(partitions)
        self._paused.difference_update(partitions)

    def seek(self, record: Record) -> None:
        """Rewind the consumer; drop what was read ahead of the partition from ``record``
        on (it comes again)."""
        self.consumer.seek(record)
        tp = (record.topic, record.partition)
        queue = self._queues.get(tp)
        if queue is not None:
            every = queue.take(len(queue))
            kept = [r for r in every if r.offset < record.offset]
            self._count -= len(every) - len(kept)
            if kept:
                self._queues[tp] = _Queue(kept)
            else:
                del self._queues[tp]

    def position(self, topic: str, partition: int) -> int | None:
        """The offset of the next record handed out from the partition."""
        queue = self._queues.get((topic, partition))
        if queue:
            return queue.records[queue.head].offset
        return self.consumer.position(topic, partition)

    def lag(self) -> int | None:
        """The consumer's lag, plus the records read ahead (not handled either)."""
        lag = self.consumer.lag()
        return None if lag is None else lag + self._count

    def store(self, record: Record) -> None:
        self.consumer.store(record)

    def commit(self) -> None:
        self.consumer.commit()

    def is_ready(self) -> bool:
        return self.consumer.is_ready()

    def assignment(self) -> list[Partition]:
        return self.consumer.assignment()

    def close(self) -> None:
        self.consumer.close()
