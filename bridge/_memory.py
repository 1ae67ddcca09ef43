"""An in-process broker behind the transport seam, for tests without infrastructure.

``MemoryTransport`` keeps topics, partitions, offsets and consumer groups in memory with
Kafka's semantics where the bridge relies on them:

* Topics have N partitions; producing to a missing topic creates it with
  ``default_partitions`` (like ``auto.create.topics.enable``).
* A keyed record goes to partition ``zlib.crc32(key) % partitions`` (librdkafka's
  ``consistent`` partitioner), so one key keeps one partition and its order. Keyless
  records go round-robin over the topic's partitions (Kafka picks a sticky random one).
* Delivery reports are queued and served from ``Producer.poll``/``flush`` in the calling
  thread, never inline in ``produce``; at most ``queue_size`` records may wait for their
  report to be served, then ``produce`` waits ``queue_full_timeout`` and raises
  ``QueueFullError``.
* Consumer groups: the partitions of the subscribed topics are spread round-robin over the
  members; joining or leaving rebalances the group. Rebalances are cooperative: a member
  gives up a partition inside its own ``poll`` (commit stored offsets, then ``on_revoke``)
  before the new owner receives it (``on_assign``), so nothing is read twice in between.
* Offsets are committed per (group, topic, partition) on ``commit()``, on revocation and on
  ``close()``; only stored offsets are committed. A partition without a committed offset
  starts at its end (at its start with ``from_beginning=True`` or
  ``auto_offset_reset="earliest"``), and that start is committed at once, as
  ``KafkaTransport`` does, so a restart resumes there.

Where it differs from Kafka:

* One node, no replication, no retention or compaction: the log grows for the life of the
  broker object. No transactions, no quotas, no ``max.poll.interval``/session timeout: a
  member that stops polling keeps its partitions until it polls or closes, and a member
  that is dropped without ``close()`` is never evicted.
* No periodic auto-commit: stored offsets are committed on ``commit()``, revocation and
  ``close()`` only (Kafka also commits them every ``auto.commit.interval.ms``).
* Delivery is immediate: a produced record is in the log (visible to consumers) before its
  delivery report is served. Test hooks on ``MemoryBroker`` simulate what can go wrong:
  ``fail_next`` (delivery failures) and ``pause_delivery``/``resume_delivery`` (an outage
  during which records wait in the producer's queue).
* ``store()`` of a record whose partition is no longer assigned is ignored (librdkafka
  refuses it); the record is redelivered to the partition's new owner.

Each ``MemoryTransport()`` is its own cluster; no global state. Several transports share
one cluster through ``MemoryTransport(broker=other.broker)``.
"""

from __future__ import annotations

import threading
import time
import weakref
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from ._errors import QueueFullError, TransportError
from ._transport import (
    Consumer,
    DeliveryCallback,
    FailureCallback,
    Headers,
    PartitionsCallback,
    Producer,
    Record,
    Transport,
)

TopicPartition = tuple[str, int]
# (error, record, callback); a failures-only producer's callback gets errors only.
_Report = tuple[Exception | None, Record, Callable[[Any, Record], None] | None]

__all__ = ["MemoryBroker", "MemoryTransport"]


class MemoryBroker:
    """The in-process cluster: topic logs, committed offsets and consumer groups.

    Thread safe. One condition variable guards all state; producers, consumers and
    waiting ``poll`` calls block on it (no busy-waiting). Callbacks never run under it.
    """

    def __init__(self, default_partitions: int = 1) -> None:
        if default_partitions < 1:
            raise ValueError("default_partitions must be >= 1")
        self.default_partitions = default_partitions
        self._cond = threading.Condition()
        self._logs: dict[str, list[list[Record]]] = {}
        self._low: dict[tuple[str, int], int] = {}  # first offset kept (delete_records)
        self._next_keyless: dict[str, int] = {}
        self._committed: dict[tuple[str, str, int], int] = {}
        self._groups: dict[str, list[_MemoryConsumer]] = {}
        self._owners: dict[tuple[str, str, int], _MemoryConsumer] = {}
        self._producers: weakref.WeakSet[_MemoryProducer] = weakref.WeakSet()
        self._failures: deque[Exception] = deque()
        self._paused = False

    # -- test hooks -----------------------------------------------------------------

    def fail_next(self, n: int = 1, error: Exception | None = None) -> None:
        """Make the next ``n`` produced records fail delivery with ``error``.

        Test-only. The records are not written; their delivery reports carry ``error``
        (default: a non-retriable ``TransportError``) and offset -1.
        """
        failure = error or TransportError("injected delivery failure", retriable=False)
        with self._cond:
            self._failures.extend([failure] * n)

    def pause_delivery(self) -> None:
        """Hold produced records in their producers' queues, as during an outage.

        Test-only: ``flush`` then reports them as remaining and a full queue makes
        ``produce`` raise ``QueueFullError``. ``resume_delivery`` delivers them in order.
        """
        with self._cond:
            self._paused = True

    def resume_delivery(self) -> None:
        """Deliver the records held since ``pause_delivery`` and accept new ones. Test-only."""
        with self._cond:
            self._paused = False
            for producer in list(self._producers):
                while producer._held:
                    producer._deliver(*producer._held.popleft())
            self._cond.notify_all()

    # -- inspection -----------------------------------------------------------------

    def committed(self, group: str, topic: str, partition: int) -> int | None:
        """The committed offset (next record to read) of a group, or None."""
        with self._cond:
            return self._committed.get((group, topic, partition))

    def end_offset(self, topic: str, partition: int) -> int:
        """The offset the next record written to the partition will get."""
        with self._cond:
            return len(self._logs[topic][partition])

    # -- internals (call with self._cond held) ---------------------------------------

    def _create(self, topic: str, partitions: int) -> None:
        if topic in self._logs:
            return
        self._logs[topic] = [[] for _ in range(partitions)]
        for group, members in self._groups.items():
            if any(topic in m.topics for m in members):
                self._rebalance(group)
        self._cond.notify_all()

    def _append(
        self, topic: str, key: bytes | None, value: bytes, headers: tuple[tuple[str, bytes], ...]
    ) -> tuple[Exception | None, Record]:
        logs = self._logs.get(topic)
        if logs is None:
            self._create(topic, self.default_partitions)
            logs = self._logs[topic]
        if key is None:
            partition = self._next_keyless.get(topic, 0) % len(logs)
            self._next_keyless[topic] = partition + 1
        else:
            partition = zlib.crc32(key) % len(logs)
        timestamp_ms = time.time_ns() // 1_000_000
        if self._failures:
            error = self._failures.popleft()
            return error, Record(topic, partition, -1, key, value, headers, timestamp_ms)
        log = logs[partition]
        record = Record(topic, partition, len(log), key, value, headers, timestamp_ms)
        log.append(record)
        self._cond.notify_all()
        return None, record

    def _unfinished(self, record: Record) -> list[str]:
        """The groups reading ``record``'s topic that have not stored or committed an
        offset past it."""
        tp = (record.topic, record.partition)
        waiting = []
        for group, members in self._groups.items():
            if not any(record.topic in m.topics for m in members):
                continue
            done = self._committed.get((group, *tp), 0)
            done = max([done, *(m._stored.get(tp, 0) for m in members)])
            if done <= record.offset:
                waiting.append(group)
        return waiting

    def _rebalance(self, group: str) -> None:
        """Spread the group's partitions round-robin over the members that subscribe to
        their topic; members apply the new target inside their next ``poll``."""
        members = self._groups.get(group, [])
        targets: dict[_MemoryConsumer, set[TopicPartition]] = {m: set() for m in members}
        topics = sorted({t for m in members for t in m.topics if t in self._logs})
        turn = 0
        for topic in topics:
            eligible = [m for m in members if topic in m.topics]
            for partition in range(len(self._logs[topic])):
                targets[eligible[turn % len(eligible)]].add((topic, partition))
                turn += 1
        for member, target in targets.items():
            member._target = frozenset(target)
        self._cond.notify_all()


class _MemoryProducer(Producer):
    def __init__(
        self,
        broker: MemoryBroker,
        queue_size: int,
        queue_full_timeout: float,
        on_failure: FailureCallback | None = None,
    ) -> None:
        self._broker = broker
        self._on_failure = on_failure
        self._cond = broker._cond
        self._queue_size = queue_size
        self._queue_full_timeout = queue_full_timeout
        self._queued = 0  # records whose delivery report was not served yet
        self._held: deque[tuple[str, bytes | None, bytes, Headers, DeliveryCallback | None]] = (
            deque()
        )
        self._reports: deque[_Report] = deque()
        self._closed = False
        with self._cond:
            broker._producers.add(self)

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: Headers = (),
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        if self._closed:
            raise TransportError("producer is closed")
        if self._on_failure is not None and on_delivery is not None:
            raise ValueError("a failures-only producer takes no on_delivery callbacks")
        deadline: float | None = None
        while True:
            with self._cond:
                if self._queued < self._queue_size:
                    self._queued += 1
                    if self._broker._paused:
                        self._held.append((topic, key, value, headers, on_delivery))
                    else:
                        self._deliver(topic, key, value, headers, on_delivery)
                    return
                reports = self._take_reports()
                if not reports:
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + self._queue_full_timeout
                    if now >= deadline:
                        raise QueueFullError(
                            f"produce queue full ({self._queue_size} records) for "
                            f"{self._queue_full_timeout}s"
                        )
                    self._cond.wait(deadline - now)
                    continue
            self._serve(reports)

    def _deliver(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Headers,
        on_delivery: DeliveryCallback | None,
    ) -> None:
        error, record = self._broker._append(topic, key, value, tuple(headers))
        if self._on_failure is None:
            self._reports.append((error, record, on_delivery))
        elif error is None:
            self._queued -= 1  # delivered: no report, as with librdkafka
        else:
            # Like librdkafka's, a failure report carries no headers.
            self._reports.append((error, record._replace(headers=()), self._on_failure))
        self._cond.notify_all()

    def _take_reports(self) -> list[_Report]:
        reports = list(self._reports)
        self._reports.clear()
        return reports

    def _serve(self, reports: list[_Report]) -> None:
        """Run the callbacks; only then are the records out of flight (as in librdkafka,
        whose queue length counts a report until it was served): a failed record is never
        seen as neither in flight nor failed."""
        if not reports:
            return
        try:
            for error, record, callback in reports:
                if callback is not None:
                    callback(error, record)
        finally:
            with self._cond:
                self._queued -= len(reports)
                self._cond.notify_all()  # producers waiting for room, flushes

    def in_flight(self) -> int:
        with self._cond:
            return self._queued

    def poll(self, timeout: float = 0.0) -> int:
        with self._cond:
            if not self._reports and timeout > 0:
                self._cond.wait_for(lambda: bool(self._reports), timeout)
            reports = self._take_reports()
        self._serve(reports)
        return len(reports)

    def flush(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                reports = self._take_reports()
                if not reports:
                    remaining = deadline - time.monotonic()
                    if self._queued == 0 or remaining <= 0:
                        return self._queued
                    self._cond.wait(remaining)
                    continue
            self._serve(reports)

    def close(self, timeout: float = 10.0) -> None:
        if self._closed:
            return
        self.flush(timeout)
        with self._cond:
            self._closed = True
            error = TransportError("producer closed before the record was delivered")
            while self._held:
                topic, key, value, headers, callback = self._held.popleft()
                record = Record(topic, -1, -1, key, value, tuple(headers))
                if self._on_failure is None:
                    self._reports.append((error, record, callback))
                else:
                    self._reports.append((error, record._replace(headers=()), self._on_failure))
            reports = self._take_reports()
        self._serve(reports)  # failures are reported, never silent


class _MemoryConsumer(Consumer):
    def __init__(
        self,
        broker: MemoryBroker,
        group: str,
        topics: Sequence[str],
        on_assign: PartitionsCallback | None,
        on_revoke: PartitionsCallback | None,
        earliest: bool,
    ) -> None:
        self._broker = broker
        self._cond = broker._cond
        self.group = group
        self.topics = frozenset(topics)
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._earliest = earliest
        self._target: frozenset[TopicPartition] = frozenset()  # set by the broker
        self._positions: dict[TopicPartition, int] = {}  # the assignment, next offsets
        self._stored: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._turn = 0
        self._ready = False
        self._closed = False
        with self._cond:
            broker._groups.setdefault(group, []).append(self)
            broker._rebalance(group)

    def _owner(self, tp: TopicPartition) -> _MemoryConsumer | None:
        return self._broker._owners.get((self.group, *tp))

    def _rebalance_pending(self) -> bool:
        if any(tp not in self._target for tp in self._positions):
            return True
        return any(tp not in self._positions and self._owner(tp) is None for tp in self._target)

    def _apply_rebalance(self) -> None:
        """Give up partitions no longer targeted, take free targeted ones; run callbacks."""
        broker = self._broker
        with self._cond:
            revoked = sorted(tp for tp in self._positions if tp not in self._target)
        if revoked and self._on_revoke is not None:
            self._on_revoke(revoked)  # may store offsets: committed just below
        with self._cond:
            if revoked:
                self._commit_locked(revoked)
                for tp in revoked:
                    del self._positions[tp]
                    self._paused.discard(tp)
            for tp in revoked:
                if self._owner(tp) is self:
                    del broker._owners[(self.group, *tp)]
            gained = sorted(
                tp for tp in self._target if tp not in self._positions and self._owner(tp) is None
            )
            for topic, partition in gained:
                broker._owners[(self.group, topic, partition)] = self
                committed = broker._committed.get((self.group, topic, partition))
                if committed is None:
                    # As KafkaTransport: the resolved start is committed at once.
                    committed = (
                        broker._low.get((topic, partition), 0)
                        if self._earliest
                        else len(broker._logs[topic][partition])
                    )
                    broker._committed[(self.group, topic, partition)] = committed
                self._positions[(topic, partition)] = committed
            if revoked:
                self._cond.notify_all()  # the new owners wait for these
        if (gained or not self._ready) and self._on_assign is not None:
            self._on_assign(gained)
        self._ready = True

    def _next_record_locked(self) -> Record | None:
        assigned = list(self._positions)
        for i in range(len(assigned)):
            tp = assigned[(self._turn + i) % len(assigned)]
            if tp in self._paused:
                continue
            position = self._positions[tp]
            low = self._broker._low.get(tp, 0)
            if position < low:  # deleted records: Kafka resets to the first one kept
                position = self._positions[tp] = low
            log = self._broker._logs[tp[0]][tp[1]]
            if position < len(log):
                self._positions[tp] = position + 1
                self._turn = (self._turn + i + 1) % len(assigned)
                return log[position]
        return None

    def poll(self, timeout: float) -> Record | None:
        if self._closed:
            raise TransportError("consumer is closed")
        deadline = time.monotonic() + timeout
        while True:
            if not self._ready or self._rebalance_pending():
                self._apply_rebalance()
            with self._cond:
                if self._rebalance_pending():
                    continue
                record = self._next_record_locked()
                if record is not None:
                    return record
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def store(self, record: Record) -> None:
        tp = (record.topic, record.partition)
        if tp in self._positions:
            self._stored[tp] = record.offset + 1

    def _commit_locked(self, partitions: Sequence[TopicPartition] | None = None) -> None:
        for tp in list(self._stored) if partitions is None else partitions:
            offset = self._stored.pop(tp, None)
            if offset is not None:
                self._broker._committed[(self.group, *tp)] = offset

    def commit(self) -> None:
        with self._cond:
            self._commit_locked()

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        with self._cond:
            self._paused.update(tp for tp in partitions if tp in self._positions)

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        with self._cond:
            self._paused.difference_update(partitions)
            self._cond.notify_all()

    def is_ready(self) -> bool:
        return self._ready

    def lag(self) -> int | None:
        with self._cond:
            logs = self._broker._logs
            return sum(len(logs[t][p]) - at for (t, p), at in self._positions.items())

    def assignment(self) -> list[TopicPartition]:
        return sorted(self._positions)

    def position(self, topic: str, partition: int) -> int | None:
        with self._cond:
            return self._positions.get((topic, partition))

    def seek(self, record: Record) -> None:
        tp = (record.topic, record.partition)
        with self._cond:
            if tp not in self._positions:
                raise TransportError(f"cannot seek {tp}: not assigned")
            self._positions[tp] = record.offset

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._cond:
            revoked = sorted(self._positions)
        if revoked and self._on_revoke is not None:
            self._on_revoke(revoked)  # may store offsets: committed just below
        with self._cond:
            self._commit_locked()
            self._positions.clear()
            self._paused.clear()
        broker = self._broker
        with self._cond:
            for tp in revoked:
                if self._owner(tp) is self:
                    del broker._owners[(self.group, *tp)]
            broker._groups[self.group].remove(self)
            broker._rebalance(self.group)


class _MemoryReader(_MemoryConsumer):
    """``MemoryTransport.reader``: fixed partitions and start offsets, no group."""

    def __init__(self, broker: MemoryBroker, positions: dict[TopicPartition, int]) -> None:
        self._broker = broker
        self._cond = broker._cond
        self.group = ""
        self.topics = frozenset(t for t, _ in positions)
        self._on_assign = self._on_revoke = None
        self._earliest = False
        self._target = frozenset(positions)
        self._positions = positions
        self._stored = {}
        self._paused = set()
        self._turn = 0
        self._ready = True
        self._closed = False

    def store(self, record: Record) -> None:
        pass  # nothing is committed: no group

    def commit(self) -> None:
        pass

    def close(self) -> None:
        self._closed = True


class MemoryTransport(Transport):
    """A transport over an in-process ``MemoryBroker`` with Kafka's semantics (see module).

    ``broker``: share another transport's cluster (``MemoryTransport(broker=t.broker)``);
    by default a new one with ``default_partitions`` per auto-created topic.
    ``auto_offset_reset``: where a partition without a committed offset starts.
    ``queue_size``/``queue_full_timeout``: the producer's bound on records whose delivery
    report was not served yet, and how long ``produce`` waits for room.
    Thread safe; producers are thread safe, each consumer belongs to one thread.
    """

    def __init__(
        self,
        broker: MemoryBroker | None = None,
        *,
        default_partitions: int = 1,
        auto_offset_reset: Literal["latest", "earliest"] = "latest",
        queue_size: int = 100_000,
        queue_full_timeout: float = 5.0,
    ) -> None:
        if auto_offset_reset not in ("latest", "earliest"):
            raise ValueError(f"auto_offset_reset must be latest or earliest: {auto_offset_reset!r}")
        self.broker = broker if broker is not None else MemoryBroker(default_partitions)
        self.auto_offset_reset = auto_offset_reset
        self.queue_size = queue_size
        self.queue_full_timeout = queue_full_timeout

    def producer(self, *, on_failure: FailureCallback | None = None) -> Producer:
        """Return a new producer of this cluster (failures-only with ``on_failure``)."""
        return _MemoryProducer(self.broker, self.queue_size, self.queue_full_timeout, on_failure)

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        *,
        on_assign: PartitionsCallback | None = None,
        on_revoke: PartitionsCallback | None = None,
        from_beginning: bool = False,
    ) -> Consumer:
        """Return a new member of ``group``; it joins now, takes partitions in ``poll``."""
        return _MemoryConsumer(
            self.broker,
            group,
            topics,
            on_assign,
            on_revoke,
            earliest=from_beginning or self.auto_offset_reset == "earliest",
        )

    def reader(self, topic: str, *, from_beginning: bool = False) -> Consumer:
        """A consumer of every partition of ``topic`` in no group (``Transport.reader``)."""
        broker = self.broker
        with broker._cond:
            logs = broker._logs.get(topic)
            if logs is None:
                raise TransportError(f"topic {topic!r} does not exist")
            positions = {
                (topic, p): broker._low.get((topic, p), 0) if from_beginning else len(log)
                for p, log in enumerate(logs)
            }
        return _MemoryReader(broker, positions)

    def deliver(
        self,
        topic: str,
        signal: str,
        payload: Mapping[str, Any] | None = None,
        *,
        key: str | bytes | None = None,
        source: str = "tests",
        timeout: float = 10.0,
    ) -> Record:
        """Write the event ``signal`` with ``payload`` to ``topic`` as the bridge of
        service ``source`` publishes it (CloudEvents binary mode, msgpack; ``key``: the
        record key), and return the record once every consumer group reading ``topic``
        is done with it (handled, skipped or dead-lettered: its offset stored).

        For tests of an inbound route: a started ``Bridge`` on this transport receives it
        as it would from Kafka. ``TimeoutError`` when a group is not done within
        ``timeout`` seconds. Useful for tests.
        """
        from ._codec import MsgpackCodec
        from ._formats import Writers
        from ._routes import Route

        route = Route.outbound(signal, topic=topic)
        writer = Writers([route], MsgpackCodec(), source, f"deliver-{id(self)}").of(route)
        value, headers = writer.write(signal, dict(payload or {}))
        if isinstance(key, str):
            key = key.encode()
        broker = self.broker
        with broker._cond:
            error, record = broker._append(topic, key, value, tuple(headers))
        if error is not None:
            raise error
        deadline = time.monotonic() + timeout
        while True:
            with broker._cond:
                waiting = broker._unfinished(record)
            if not waiting:
                return record
            if time.monotonic() > deadline:
                at = f"{record.topic}[{record.partition}]@{record.offset}"
                raise TimeoutError(
                    f"{at}: not finished by group(s) {', '.join(waiting)} within {timeout:g} s"
                )
            time.sleep(0.002)  # consumers store offsets without a notification

    def ensure_topics(
        self,
        topics: Sequence[str],
        partitions: int = 1,
        timeout: float = 30.0,
        *,
        replication_factor: int | None = None,
        config: Mapping[str, str] | None = None,
    ) -> None:
        """Create the missing topics with ``partitions`` each (there are no replicas or
        topic configs in memory: those are ignored). Never blocks."""
        with self.broker._cond:
            for topic in topics:
                self.broker._create(topic, partitions)

    def watermarks(self, topic: str, timeout: float = 10.0) -> dict[int, tuple[int, int]]:
        """Per partition: the first offset kept and the end. Never blocks."""
        broker = self.broker
        with broker._cond:
            logs = broker._logs.get(topic)
            if logs is None:
                raise TransportError(f"no offsets of {topic!r}: no such topic")
            return {p: (broker._low.get((topic, p), 0), len(log)) for p, log in enumerate(logs)}

    def delete_records(self, topic: str, before: Mapping[int, int], timeout: float = 30.0) -> None:
        """Delete the records before the given offsets (their slots are freed)."""
        broker = self.broker
        with broker._cond:
            logs = broker._logs.get(topic)
            if logs is None:
                raise TransportError(f"cannot delete records of {topic!r}: no such topic")
            for partition, offset in before.items():
                if not 0 <= partition < len(logs) or not 0 <= offset <= len(logs[partition]):
                    raise TransportError(f"cannot delete {topic}[{partition}] before {offset}")
                low = broker._low.get((topic, partition), 0)
                for i in range(low, offset):
                    logs[partition][i] = None  # type: ignore[call-overload]
                broker._low[(topic, partition)] = max(low, offset)

    def list_topics(self, timeout: float = 10.0) -> dict[str, int]:
        """Return ``{topic: partition count}``. Never blocks."""
        with self.broker._cond:
            return {topic: len(logs) for topic, logs in self.broker._logs.items()}
