"""The transport seam: the few operations the bridge needs from a broker.

Two implementations honour the same contract (``tests/bridge/test_transport_contract.py``
runs one suite against both): ``KafkaTransport`` (confluent-kafka) and
``MemoryTransport`` (in-process, for tests without infrastructure).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, Self

from ._errors import TransportError

Headers = Sequence[tuple[str, bytes]]

MESSAGE_MAX_BYTES = 1_000_000
"""The largest record a producer sends by default: librdkafka's ``message.max.bytes``."""

RECORD_FRAMING = 100
"""Bytes ``record_size`` adds for the framing of a record and of its batch (Kafka's v2
record: length, attributes, timestamp and offset deltas, key/value/header lengths; the
batch header is 61 bytes). librdkafka checks a record against ``message.max.bytes`` the
same way, with less: a record ``record_size`` accepts is never refused by the client."""


def record_size(value: bytes, key: bytes | None, headers: Headers) -> int:
    """The bytes a record counts against ``message.max.bytes``: value, key, each
    header's name and value (with 10 bytes for their two length fields), and
    ``RECORD_FRAMING``."""
    size = len(value) + RECORD_FRAMING
    if key is not None:
        size += len(key)
    for name, data in headers:
        size += len(name) + len(data) + 10
    return size


class Record(NamedTuple):
    """One record read from, or delivered to, a topic partition.

    (A named tuple: one is built per record, and this is the cheapest immutable kind.)
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()
    timestamp_ms: int | None = None

    def header(self, name: str) -> bytes | None:
        """Return the last value of header ``name``, or None."""
        for key, value in reversed(self.headers):
            if key == name:
                return value
        return None


DeliveryCallback = Callable[[Exception | None, Record], None]
"""Called once per produced record: ``(None, record)`` when delivered (``offset`` set),
``(TransportError, record)`` when it failed for good (``offset`` is -1)."""

FailureCallback = Callable[[Exception, Record], None]
"""Called once per record a failures-only producer could not deliver (``offset`` -1)."""

PartitionsCallback = Callable[[list[tuple[str, int]]], None]
"""Called with the ``(topic, partition)`` list on assignment or revocation."""


class Producer(ABC):
    """Writes records. All methods are thread safe. ``with producer:`` closes it at the
    end (flushing first)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: Headers = (),
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        """Queue one record without waiting for the broker.

        Records with the same key go to the same partition, in produce order. When the
        local queue is full, waits (serving delivery reports) up to the transport's
        ``queue_full_timeout``, then raises ``QueueFullError``. ``on_delivery`` runs
        later, from ``poll`` or ``flush``, in the thread that calls them.
        """

    def warm_up(self, topics: Sequence[str], timeout: float) -> None:  # noqa: B027
        """Connect and learn the partitions of ``topics`` now, so that the first records
        do not wait for it. Optional: the default does nothing."""

    @abstractmethod
    def in_flight(self) -> int:
        """Records produced and not yet delivered or failed (their reports not served)."""

    @abstractmethod
    def poll(self, timeout: float = 0.0) -> int:
        """Serve pending delivery callbacks; return how many were served."""

    @abstractmethod
    def flush(self, timeout: float) -> int:
        """Wait until queued records are delivered or failed; return how many remain."""

    @abstractmethod
    def close(self, timeout: float = 10.0) -> None:
        """Flush, then release the producer. Idempotent."""


class Consumer(ABC):
    """Reads records as one member of a consumer group.

    Not thread safe: one thread polls, stores, commits and closes. Offsets are committed
    only once stored (at-least-once): ``store(record)`` marks a record processed, and
    stored offsets are committed periodically, on ``commit()``, on revocation and on
    ``close()``. After a restart the group resumes after the last committed record.
    ``with consumer:`` closes it at the end.
    """

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def poll(self, timeout: float) -> Record | None:
        """Return the next record, or None when none arrived within ``timeout`` seconds.

        Rebalance callbacks run inside ``poll``. Transient broker errors are logged and
        retried internally, not raised; a fatal error raises ``TransportError``.
        """

    def consume(self, max_records: int, timeout: float) -> list[Record]:
        """Return up to ``max_records`` records, waiting at most ``timeout`` for the first.

        Records of one partition come in order. Rebalance callbacks run inside it, never
        while the caller works through the list. The default polls one at a time.
        """
        first = self.poll(timeout)
        if first is None:
            return []
        records = [first]
        while len(records) < max_records:
            record = self.poll(0.0)
            if record is None:
                break
            records.append(record)
        return records

    @abstractmethod
    def store(self, record: Record) -> None:
        """Mark ``record`` processed: the next commit covers it and everything before it."""

    @abstractmethod
    def commit(self) -> None:
        """Commit the stored offsets now (synchronously). No-op when nothing is stored."""

    @abstractmethod
    def pause(self, partitions: Sequence[tuple[str, int]]) -> None:
        """Stop fetching ``partitions``: ``consume`` returns none of their records (not
        even ones already fetched) until ``resume``; rebalance callbacks still run. The
        position is kept: after ``resume`` the next record is the one after the last
        returned. Assigned partitions only; a revoked partition forgets its pause."""

    @abstractmethod
    def resume(self, partitions: Sequence[tuple[str, int]]) -> None:
        """Fetch ``partitions`` again (see ``pause``)."""

    @abstractmethod
    def is_ready(self) -> bool:
        """True once the first assignment is complete and every assigned partition has a
        start position (so a record produced from now on will be read)."""

    def lag(self) -> int | None:
        """Records behind the end of the assigned partitions, from locally known end
        offsets (no broker round trip); None when unknown. Default: unknown."""
        return None

    @abstractmethod
    def assignment(self) -> list[tuple[str, int]]:
        """The ``(topic, partition)`` pairs assigned to this member now."""

    @abstractmethod
    def position(self, topic: str, partition: int) -> int | None:
        """The offset of the next record this member returns from an assigned partition
        (after the last one returned, else its start); None when it is not assigned."""

    @abstractmethod
    def seek(self, record: Record) -> None:
        """Rewind ``record``'s (assigned) partition to ``record``: it is the next record
        returned from that partition, then the ones after it (also those already returned
        after it). Paused or not, the partition stays so. ``TransportError`` if it fails
        (a partition revoked meanwhile: its new owner reads from the committed offset)."""

    @abstractmethod
    def close(self) -> None:
        """Commit stored offsets, leave the group, release the consumer. Idempotent."""


class Transport(ABC):
    """Makes producers and consumers for one broker (or one in-process broker).
    ``with transport:`` closes it at the end."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def max_record_size(self) -> int:
        """The largest record (``record_size``) its producers send: Kafka's
        ``message.max.bytes`` as configured; ``MESSAGE_MAX_BYTES`` by default."""
        return MESSAGE_MAX_BYTES

    @abstractmethod
    def producer(self, *, on_failure: FailureCallback | None = None) -> Producer:
        """Return a new producer (idempotent, acks=all where the transport has acks).

        With ``on_failure`` the producer reports failed records only, each to
        ``on_failure`` (from ``poll``/``flush``/``close`` as usual), with topic, partition,
        key and value but no headers; a successful delivery costs no callback at all.
        ``produce`` then takes no ``on_delivery`` (ValueError). Count deliveries with
        ``in_flight()``: what was produced, minus what is in flight, minus what failed.
        """

    @abstractmethod
    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        *,
        on_assign: PartitionsCallback | None = None,
        on_revoke: PartitionsCallback | None = None,
        from_beginning: bool = False,
    ) -> Consumer:
        """Return a consumer in ``group`` subscribed to ``topics``.

        A partition with no committed offset starts at its end when it is assigned
        (at its beginning with ``from_beginning``, or when ``auto.offset.reset`` says
        ``earliest``); either way the position is fixed, and committed, before
        ``is_ready()`` turns true, so nothing produced after that is missed, even by a
        member that restarts before committing anything. ``on_revoke`` runs before the
        stored offsets of the revoked partitions are committed (on revocation and on
        ``close``), so offsets it stores are committed too; for partitions lost without a
        revocation (a session that expired) nothing is committed.
        """

    def reader(self, topic: str, *, from_beginning: bool = False) -> Consumer:
        """Return a consumer of every partition of ``topic`` outside any consumer group:
        nothing is joined or committed, so nothing of it stays on the broker (``tail``,
        ``dlq ls``/``show``). It starts at the beginning of each partition with
        ``from_beginning``, else at the end; ``store`` and ``commit`` do nothing.
        ``TransportError`` for a missing topic."""
        raise NotImplementedError(f"{type(self).__name__} has no group-less reader")

    @abstractmethod
    def ensure_topics(
        self,
        topics: Sequence[str],
        partitions: int = 1,
        timeout: float = 30.0,
        *,
        replication_factor: int | None = None,
        config: Mapping[str, str] | None = None,
    ) -> None:
        """Create the topics that do not exist yet, with ``partitions`` each,
        ``replication_factor`` replicas (None: the broker's default) and the topic
        configs ``config`` (``retention.ms``...); wait until they exist. Existing topics
        are left as they are. Raises ``TransportError`` if that takes longer than
        ``timeout`` seconds or the broker refuses a setting."""

    @abstractmethod
    def list_topics(self, timeout: float = 10.0) -> dict[str, int]:
        """Return ``{topic: partition count}`` for every topic; ``TransportError`` if the
        broker cannot be reached within ``timeout`` seconds."""

    def validate(self) -> None:  # noqa: B027 - optional hook, nothing to check by default
        """Check the client settings without contacting a broker: ``ConfigError`` naming
        what the client library refuses. Optional: the default accepts everything."""

    def describe_group(self, group: str, timeout: float = 5.0) -> str | None:
        """One line on the state of consumer group ``group`` and its members, for logs
        of a member that waits for its assignment; None when unknown. Optional."""
        return None

    @abstractmethod
    def watermarks(self, topic: str, timeout: float = 10.0) -> dict[int, tuple[int, int]]:
        """Per partition of ``topic``: its first offset and the offset its next record will
        get, from the broker. ``TransportError`` for a missing topic or after ``timeout``."""

    def delete_records(self, topic: str, before: Mapping[int, int], timeout: float = 30.0) -> None:
        """Delete the records of ``topic`` before offset ``before[partition]`` of each
        partition (Kafka's DeleteRecords: a log is cut from its start only; its first
        offset moves up). ``TransportError`` if the broker refuses or does not answer in
        ``timeout`` seconds; the default refuses (an optional operation)."""
        raise TransportError(f"{type(self).__name__} cannot delete records")

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release shared resources (admin clients). Idempotent."""
