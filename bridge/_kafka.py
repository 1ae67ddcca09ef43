"""The Kafka transport: the transport seam over confluent-kafka (librdkafka).

``config`` holds librdkafka settings, passed through untouched; we only add defaults the
user did not set. Producer: ``enable.idempotence=true``, ``acks=all``, ``linger.ms=5``,
``allow.auto.create.topics=false`` (only ``ensure_topics`` creates topics).
Consumer: ``enable.auto.offset.store=false`` (only ``store()``d records are committed),
``enable.auto.commit=true`` (stored offsets are committed every
``auto.commit.interval.ms``), ``auto.offset.reset=latest`` and
``partition.assignment.strategy=cooperative-sticky``: a rebalance only moves the partitions
that must move, so the members that keep theirs never stop consuming;
``session.timeout.ms=10000``: a crashed member's partitions move after 10 s, not 45.

One config may hold producer and consumer keys (one ``[kafka]`` section). librdkafka warns
about a key of the other client type, so the well-known producer-only keys are dropped
from consumer configs and vice versa (``PRODUCER_ONLY``, ``CONSUMER_ONLY``); any other key
goes to every client, and librdkafka's remaining warnings reach the ``bridge.kafka`` logger.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from ._errors import ConfigError, QueueFullError, TransportError
from ._throttle import LogThrottle
from ._transport import (
    MESSAGE_MAX_BYTES,
    Consumer,
    DeliveryCallback,
    FailureCallback,
    Headers,
    PartitionsCallback,
    Producer,
    Record,
    Transport,
)

log = logging.getLogger("bridge.kafka")
_error_log = LogThrottle(log)

__all__ = ["CONSUMER_ONLY", "PRODUCER_ONLY", "KafkaTransport"]

PRODUCER_DEFAULTS: Mapping[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    # Topics are created by ensure_topics (create_topics) or not at all: a producer's
    # metadata request (warm-up, first produce) must not create one through the broker's
    # auto.create.topics.enable.
    "allow.auto.create.topics": False,
}
CONSUMER_DEFAULTS: Mapping[str, Any] = {
    "enable.auto.offset.store": False,
    "enable.auto.commit": True,
    "auto.offset.reset": "latest",
    "partition.assignment.strategy": "cooperative-sticky",
    # A crashed member holds its partitions this long (librdkafka: 45 s); heartbeats come
    # from librdkafka's own thread, so a slow handler does not end a session (that is
    # max.poll.interval.ms). docs/operations.md, "Restarting after a crash".
    "session.timeout.ms": 10_000,
}

LIBRDKAFKA_SESSION_TIMEOUT_MS = 45_000
"""librdkafka's own default ``session.timeout.ms``."""

PRODUCER_ONLY = frozenset(
    {
        "acks",
        "batch.num.messages",
        "batch.size",
        "compression.codec",
        "compression.level",
        "compression.type",
        "delivery.report.only.error",
        "delivery.timeout.ms",
        "enable.gapless.guarantee",
        "enable.idempotence",
        "linger.ms",
        "message.send.max.retries",
        "message.timeout.ms",
        "on_delivery",
        "partitioner",
        "queue.buffering.backpressure.threshold",
        "queue.buffering.max.kbytes",
        "queue.buffering.max.messages",
        "queue.buffering.max.ms",
        "queuing.strategy",
        "request.required.acks",
        "request.timeout.ms",
        "retries",
        "sticky.partitioning.linger.ms",
        "transaction.timeout.ms",
        "transactional.id",
    }
)
"""Keys dropped from consumer configs (librdkafka would warn that they are ignored)."""

CONSUMER_ONLY = frozenset(
    {
        "auto.commit.interval.ms",
        "auto.offset.reset",
        "check.crcs",
        "consume.callback.max.messages",
        "coordinator.query.interval.ms",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "enable.partition.eof",
        "fetch.error.backoff.ms",
        "fetch.max.bytes",
        "fetch.message.max.bytes",
        "fetch.min.bytes",
        "fetch.queue.backoff.ms",
        "fetch.wait.max.ms",
        "group.id",
        "group.instance.id",
        "group.protocol",
        "group.protocol.type",
        "group.remote.assignor",
        "heartbeat.interval.ms",
        "isolation.level",
        "max.partition.fetch.bytes",
        "max.poll.interval.ms",
        "on_commit",
        "partition.assignment.strategy",
        "queued.max.messages.kbytes",
        "queued.min.messages",
        "session.timeout.ms",
    }
)
"""Keys dropped from producer and admin configs."""


MANAGED = frozenset({"delivery.report.only.error", "on_delivery", "dr_cb", "dr_msg_cb"})
"""librdkafka keys the transport sets itself: a user value would silence or leak reports."""


def _on_error(err: KafkaError) -> None:
    """librdkafka's error callback: transient errors are logged (the client retries them
    itself); a fatal one raises out of the ``poll``/``flush``/``consume`` that served it."""
    if _is_fatal(err):
        log.error("fatal Kafka error: %s", err)
        raise TransportError(f"fatal Kafka error: {err}")
    # librdkafka logs the same condition itself (its own line, through ``logger``): this
    # one says once per condition that the client retries, then counts the repeats.
    _error_log.log(logging.WARNING, err.code(), "Kafka error (the client retries): %s", err)


def _is_fatal(err: KafkaError) -> bool:
    """A fatal error: the client can do nothing more. librdkafka reports one to a consumer
    as a message whose error is ``_FATAL`` (and ``fatal()`` False): a fenced static member
    (a second replica with its ``group.instance.id``) gets that."""
    return bool(err.fatal()) or err.code() == KafkaError._FATAL


def _client_config(
    config: Mapping[str, Any], defaults: Mapping[str, Any], drop: frozenset[str]
) -> dict[str, Any]:
    merged = {**defaults, **{k: v for k, v in config.items() if k not in drop}}
    merged.setdefault("error_cb", _on_error)
    merged.setdefault("logger", log)
    return merged


def where(record: Record) -> str:
    return f"{record.topic}[{record.partition}]@{record.offset}"


_PURGE_WAIT = 1.0
"""Seconds ``close`` waits for the failure reports of the records it purged."""
_PURGE_SERVE = 60.0
"""Seconds its background thread goes on serving those reports (then: the process ends)."""

# Refusals of one record that no retry changes: the broker (or the client) will refuse it
# again. ``KafkaError.retriable()`` cannot tell: a delivery report's error is made from
# its code alone, and says False for every code.
_REFUSED = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,  # over message.max.bytes (client) / max.message.bytes
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.TOPIC_EXCEPTION,  # an invalid topic name
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.POLICY_VIOLATION,
        KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
    }
)


def _error(err: KafkaError, message: str) -> TransportError:
    """A ``TransportError`` for ``err``, ``permanent`` for a refusal no retry changes."""
    return TransportError(
        message, retriable=err.retriable(), permanent=err.code() in _REFUSED and not err.fatal()
    )


def _translate(exc: KafkaException, what: str) -> TransportError:
    err = exc.args[0] if exc.args else None
    if isinstance(err, KafkaError):
        return _error(err, f"{what}: {err.str()}")
    return TransportError(f"{what}: {exc}")


def _record(msg: Any) -> Record:
    kind, timestamp = msg.timestamp()
    # tuple.__new__ skips the named tuple's Python-level __new__: this runs per record.
    return _new_record(
        Record,
        (
            msg.topic(),
            msg.partition(),
            msg.offset(),
            msg.key(),
            msg.value(),
            msg.headers() or (),
            timestamp if kind else None,
        ),
    )


_new_record = tuple.__new__


def _delivered(
    callback: DeliveryCallback, headers: Headers, err: KafkaError | None, msg: Any
) -> None:
    """Adapt confluent's ``(err, msg)`` delivery report to ``(exc | None, Record)``.

    A delivery report carries no headers, so those given to ``produce`` are added."""
    kind, timestamp = msg.timestamp()
    record = _new_record(
        Record,
        (
            msg.topic(),
            msg.partition(),
            msg.offset() if err is None else -1,
            msg.key(),
            msg.value(),
            tuple(headers),
            timestamp if kind else None,
        ),
    )
    if err is None:
        callback(None, record)
    else:
        callback(_error(err, str(err)), record)


def _failed(callback: FailureCallback, err: KafkaError | None, msg: Any) -> None:
    """The delivery report of a failures-only producer (librdkafka sends no others).

    It comes without headers: nothing per record is kept for the report, that is the point.
    """
    if err is None:
        return
    record = _new_record(
        Record, (msg.topic(), msg.partition(), -1, msg.key(), msg.value(), (), None)
    )
    callback(_error(err, str(err)), record)


class _KafkaProducer(Producer):
    def __init__(
        self,
        config: dict[str, Any],
        queue_full_timeout: float,
        on_failure: FailureCallback | None = None,
    ) -> None:
        if on_failure is not None:
            # Successful deliveries then cost no Python at all. The callback must be the
            # client-wide one: per-record callbacks of successful records would never be
            # released (their reports never come).
            config = {
                **config,
                "delivery.report.only.error": True,
                "on_delivery": functools.partial(_failed, on_failure),
            }
        try:
            self._producer = confluent_kafka.Producer(config)
        except KafkaException as exc:
            raise ConfigError(f"bad Kafka producer config: {exc}") from exc
        self._produce = self._producer.produce
        self._poll = self._producer.poll
        self._queue_full_timeout = queue_full_timeout
        self._failures_only = on_failure is not None
        self._closed = False

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
        # confluent-kafka takes headers as a list (or dict) only.
        hdrs: Any = (headers if type(headers) is list else list(headers)) if headers else None
        callback = None
        if on_delivery is not None:
            if self._failures_only:
                raise ValueError("a failures-only producer takes no on_delivery callbacks")
            callback = functools.partial(_delivered, on_delivery, headers)
        try:
            try:
                self._produce(topic, value, key, on_delivery=callback, headers=hdrs)
            except BufferError:
                self._produce_when_room(topic, value, key, callback, hdrs)
            self._poll(0)
        except KafkaException as exc:
            raise _translate(exc, f"cannot produce to {topic!r}") from exc
        except RuntimeError as exc:  # the client was closed
            raise TransportError(f"cannot produce to {topic!r}: {exc}") from exc

    def _produce_when_room(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        callback: Callable[[KafkaError | None, Any], None] | None,
        headers: Any,
    ) -> None:
        deadline = time.monotonic() + self._queue_full_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QueueFullError(
                    f"Kafka produce queue stayed full for {self._queue_full_timeout}s "
                    "(queue.buffering.max.messages/kbytes; is the broker reachable?)"
                )
            self._poll(min(0.1, remaining))
            try:
                self._produce(topic, value, key, on_delivery=callback, headers=headers)
            except BufferError:
                continue
            return

    def warm_up(self, topics: Sequence[str], timeout: float) -> None:
        # The first produce to a topic otherwise waits for its metadata (100-500 ms).
        deadline = time.monotonic() + timeout
        try:
            for topic in topics:
                self._producer.list_topics(
                    topic=topic, timeout=max(0.1, deadline - time.monotonic())
                )
        except KafkaException as exc:  # not fatal: records wait in the queue meanwhile
            log.warning("could not warm up the producer: %s", exc)

    def in_flight(self) -> int:
        return len(self._producer)

    def poll(self, timeout: float = 0.0) -> int:
        try:
            return int(self._poll(timeout))
        except KafkaException as exc:
            raise _translate(exc, "producer poll failed") from exc

    def flush(self, timeout: float) -> int:
        try:
            return int(self._producer.flush(timeout))
        except KafkaException as exc:
            raise _translate(exc, "producer flush failed") from exc

    def close(self, timeout: float = 10.0) -> None:
        if self._closed:
            return
        self._closed = True
        left = self.flush(timeout)
        if left:
            log.error("closing the producer: %d record(s) not delivered in %ss", left, timeout)
            # Fail what is left so every record still gets its (failed) delivery report.
            # Each report is a Python callback that waits for the GIL: with threads
            # emitting meanwhile, 15k of them took minutes (a stop of 295 s with 8
            # emitting threads). So they are served by a thread of their own, waited
            # for ``_PURGE_WAIT`` s at most: late, but never not at all.
            self._producer.purge()
            server = threading.Thread(
                target=self._serve_purged, name="bridge-producer-close", daemon=True
            )
            server.start()
            server.join(_PURGE_WAIT)
            if server.is_alive():
                log.warning(
                    "closing the producer: the failure reports of %d record(s) are served "
                    "in the background",
                    len(self._producer),
                )

    def _serve_purged(self) -> None:
        deadline = time.monotonic() + _PURGE_SERVE
        while len(self._producer) and time.monotonic() < deadline:
            try:
                self._producer.flush(0.5)
            except Exception:  # a callback raised: the others still get theirs
                log.exception("serving the reports of purged records failed")


class _KafkaConsumer(Consumer):
    def __init__(
        self,
        config: dict[str, Any],
        topics: Sequence[str],
        on_assign: PartitionsCallback | None,
        on_revoke: PartitionsCallback | None,
        start_timeout: float,
    ) -> None:
        try:
            self._consumer = confluent_kafka.Consumer(config)
        except KafkaException as exc:
            raise ConfigError(f"bad Kafka consumer config: {exc}") from exc
        self._earliest = str(config.get("auto.offset.reset", "latest")).lower() in (
            "earliest",
            "smallest",
            "beginning",
        )
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._start_timeout = start_timeout
        self._assigned: set[tuple[str, int]] = set()
        self._starts: dict[tuple[str, int], int] = {}
        self._ready = False
        self._closed = False
        self._consumer.subscribe(
            list(topics),
            on_assign=self._assigned_cb,
            on_revoke=self._revoked_cb,
            on_lost=self._lost_cb,
        )

    # -- rebalance callbacks (run inside consume/poll/close) --------------------------

    def _assigned_cb(self, consumer: Any, partitions: list[Any]) -> None:
        if partitions:
            partitions = self._start_positions(consumer, partitions)
        consumer.incremental_assign(partitions)
        gained = [(tp.topic, tp.partition) for tp in partitions]
        self._assigned.update(gained)
        for tp in partitions:
            self._starts[(tp.topic, tp.partition)] = tp.offset
        if self._on_assign is not None:
            self._on_assign(gained)
        self._ready = True

    def _start_positions(self, consumer: Any, partitions: list[Any]) -> list[Any]:
        """Fix each partition's start (committed offset, else the end or start of the log)
        before the assignment, and commit a start it had to resolve: a logical ``latest``
        resolves later, so a record produced in between would be skipped, and an
        uncommitted start would be re-resolved after a restart, skipping unfinished ones."""
        deadline = time.monotonic() + self._start_timeout
        while True:
            try:
                committed = consumer.committed(partitions, timeout=deadline - time.monotonic())
                fresh = []
                for tp in committed:
                    if tp.offset < 0:
                        low, high = consumer.get_watermark_offsets(
                            tp, timeout=max(0.1, deadline - time.monotonic()), cached=False
                        )
                        tp.offset = low if self._earliest else high
                        fresh.append(tp)
                if fresh:
                    # Commit the start at once: a record read from here but not finished
                    # before a crash is then redelivered, instead of skipped by "latest".
                    consumer.commit(offsets=fresh, asynchronous=False)
                return list(committed)
            except KafkaException as exc:
                if time.monotonic() >= deadline:
                    raise _translate(exc, "cannot find start offsets of the assignment") from exc
                log.warning("finding start offsets failed, retrying: %s", exc)

    def _revoked_cb(self, consumer: Any, partitions: list[Any]) -> None:
        self._give_up(consumer, partitions, commit=True)

    def _lost_cb(self, consumer: Any, partitions: list[Any]) -> None:
        log.warning("partitions lost (not committed): %s", partitions)
        self._give_up(consumer, partitions, commit=False)

    def _give_up(self, consumer: Any, partitions: list[Any], *, commit: bool) -> None:
        lost = {(tp.topic, tp.partition) for tp in partitions}
        if self._on_revoke is not None:
            self._on_revoke(sorted(lost))  # may store offsets: committed just below
        self._assigned -= lost
        if commit:
            self._commit_quietly()
        try:
            consumer.resume(partitions)  # a partition assigned again starts unpaused
        except KafkaException as exc:
            log.debug("resuming revoked partitions: %s", exc)
        consumer.incremental_unassign(partitions)

    def _commit_quietly(self) -> None:
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("committing stored offsets on revocation failed: %s", exc)

    # -- the Consumer interface --------------------------------------------------------

    def poll(self, timeout: float) -> Record | None:
        deadline = time.monotonic() + timeout
        try:
            while True:
                msg = self._consumer.poll(timeout)
                if msg is None:
                    return None
                error = msg.error()
                if error is None:
                    return _record(msg)
                if _is_fatal(error):
                    raise TransportError(f"fatal Kafka consumer error: {error}")
                if error.code() != KafkaError._PARTITION_EOF:
                    _error_log.log(
                        logging.WARNING, error.code(), "Kafka consumer error (skipped): %s", error
                    )
                timeout = max(0.0, deadline - time.monotonic())
        except KafkaException as exc:
            raise _translate(exc, "consumer poll failed") from exc
        except RuntimeError as exc:  # the consumer was closed
            raise TransportError(f"consumer poll failed: {exc}") from exc

    def consume(self, max_records: int, timeout: float) -> list[Record]:
        # One call for many records: the per-call cost of poll() is paid once per batch.
        # librdkafka's consume() waits for the whole batch until its timeout, so it only
        # takes what is already here; when nothing is, poll() waits for the first record.
        try:
            messages = self._consumer.consume(max_records, 0)
            if not messages:
                first = self._consumer.poll(timeout)
                if first is None:
                    return []
                rest = self._consumer.consume(max_records - 1, 0) if max_records > 1 else []
                messages = [first, *rest]
        except KafkaException as exc:
            raise _translate(exc, "consumer poll failed") from exc
        except RuntimeError as exc:  # the consumer was closed
            raise TransportError(f"consumer poll failed: {exc}") from exc
        records = [_record(msg) for msg in messages if msg.error() is None]
        if len(records) < len(messages):
            for msg in messages:
                error = msg.error()
                if error is None:
                    continue
                if _is_fatal(error):
                    raise TransportError(f"fatal Kafka consumer error: {error}")
                if error.code() != KafkaError._PARTITION_EOF:
                    _error_log.log(
                        logging.WARNING, error.code(), "Kafka consumer error (skipped): %s", error
                    )
        return records

    def store(self, record: Record) -> None:
        try:
            self._consumer.store_offsets(
                offsets=[TopicPartition(record.topic, record.partition, record.offset + 1)]
            )
        except KafkaException as exc:
            # Revoked meanwhile: the new owner reads it again (at-least-once holds).
            log.debug("not storing %s: %s", record, exc)

    def commit(self) -> None:
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                raise _translate(exc, "commit failed") from exc

    def pause(self, partitions: Sequence[tuple[str, int]]) -> None:
        try:
            self._consumer.pause([TopicPartition(t, p) for t, p in partitions])
        except KafkaException as exc:
            raise _translate(exc, "pausing partitions failed") from exc

    def resume(self, partitions: Sequence[tuple[str, int]]) -> None:
        try:
            self._consumer.resume([TopicPartition(t, p) for t, p in partitions])
        except KafkaException as exc:
            raise _translate(exc, "resuming partitions failed") from exc

    def is_ready(self) -> bool:
        return self._ready

    def lag(self) -> int | None:
        # The end offsets come with every fetch response, so the cached ones are fresh.
        assigned = [TopicPartition(topic, partition) for topic, partition in self._assigned]
        if not assigned:
            return 0
        try:
            total = 0
            for tp in self._consumer.position(assigned):
                _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if tp.offset < 0 or high < 0:
                    return None
                total += max(0, high - tp.offset)
            return total
        except (KafkaException, RuntimeError):
            return None

    def assignment(self) -> list[tuple[str, int]]:
        return sorted(self._assigned)

    def position(self, topic: str, partition: int) -> int | None:
        if (topic, partition) not in self._assigned:
            return None
        try:
            [tp] = self._consumer.position([TopicPartition(topic, partition)])
        except (KafkaException, RuntimeError) as exc:
            raise TransportError(
                f"cannot read the position of {topic}[{partition}]: {exc}"
            ) from exc
        # Nothing returned yet: the start fixed at assignment (or by the last pause).
        return int(tp.offset) if tp.offset >= 0 else self._starts.get((topic, partition))

    def seek(self, record: Record) -> None:
        tp = TopicPartition(record.topic, record.partition, record.offset)
        try:
            # Drops what was fetched after the record; fetching restarts at it.
            self._consumer.seek(tp)
        except (KafkaException, RuntimeError) as exc:
            raise TransportError(f"cannot seek {where(record)}: {exc}") from exc
        self._starts[(record.topic, record.partition)] = record.offset

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._consumer.close()  # revokes (our callback commits), commits, leaves
        except KafkaException as exc:
            raise _translate(exc, "closing the consumer failed") from exc


class _KafkaReader(_KafkaConsumer):
    """``KafkaTransport.reader``: fixed partitions and start offsets, no group."""

    def __init__(self, config: dict[str, Any], starts: Mapping[tuple[str, int], int]) -> None:
        try:
            self._consumer = confluent_kafka.Consumer(config)
        except KafkaException as exc:
            raise ConfigError(f"bad Kafka consumer config: {exc}") from exc
        self._on_assign = self._on_revoke = None
        self._assigned = set(starts)
        self._starts = dict(starts)
        self._closed = False
        try:
            self._consumer.assign([TopicPartition(t, p, o) for (t, p), o in starts.items()])
        except KafkaException as exc:
            self._consumer.close()
            raise _translate(exc, "cannot assign the partitions") from exc
        self._ready = True

    def store(self, record: Record) -> None:
        pass  # nothing is committed: no group

    def commit(self) -> None:
        pass


class KafkaTransport(Transport):
    """A transport over a Kafka cluster through confluent-kafka (see the module docstring).

    ``config``: librdkafka settings (``bootstrap.servers`` at least), producer and consumer
    keys together. ``queue_full_timeout``: how long ``produce`` waits while the local
    queue is full. ``start_timeout``: how long an
    assignment may take to find its start offsets. Thread safe.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        queue_full_timeout: float = 5.0,
        start_timeout: float = 30.0,
    ) -> None:
        managed = sorted(MANAGED & set(config))
        if managed:
            raise ConfigError(
                f"{', '.join(managed)}: delivery reports are managed by the transport "
                "(failures are always reported; see Transport.producer)"
            )
        self.config = dict(config)
        self.queue_full_timeout = queue_full_timeout
        self.start_timeout = start_timeout
        self._admin: AdminClient | None = None

    @property
    def bootstrap(self) -> str:
        """The configured ``bootstrap.servers``."""
        return str(self.config.get("bootstrap.servers", "<bootstrap.servers unset>"))

    @property
    def max_record_size(self) -> int:
        """``message.max.bytes`` of the producer config (librdkafka's default if unset)."""
        try:
            return int(self.producer_config().get("message.max.bytes", MESSAGE_MAX_BYTES))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"message.max.bytes must be a number of bytes: {exc}") from exc

    def producer_config(self) -> dict[str, Any]:
        """The config a new producer gets: ours defaults, the user's keys, no consumer keys."""
        return _client_config(self.config, PRODUCER_DEFAULTS, CONSUMER_ONLY)

    def consumer_config(self, group: str, *, from_beginning: bool = False) -> dict[str, Any]:
        """The config a new consumer of ``group`` gets (no producer keys)."""
        config = _client_config(self.config, CONSUMER_DEFAULTS, PRODUCER_ONLY)
        config["group.id"] = group
        if from_beginning:
            config["auto.offset.reset"] = "earliest"
        return config

    def producer(self, *, on_failure: FailureCallback | None = None) -> Producer:
        """Return a new producer; ``ConfigError`` if librdkafka rejects the config.

        With ``on_failure`` it is a failures-only producer (``Transport.producer``):
        ``delivery.report.only.error=true`` and a client-wide delivery callback."""
        return _KafkaProducer(self.producer_config(), self.queue_full_timeout, on_failure)

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        *,
        on_assign: PartitionsCallback | None = None,
        on_revoke: PartitionsCallback | None = None,
        from_beginning: bool = False,
    ) -> Consumer:
        """Return a new member of ``group``; it joins the group inside its ``poll``."""
        return _KafkaConsumer(
            self.consumer_config(group, from_beginning=from_beginning),
            topics,
            on_assign,
            on_revoke,
            self.start_timeout,
        )

    def reader(self, topic: str, *, from_beginning: bool = False) -> Consumer:
        """A consumer of every partition of ``topic`` by ``assign()``: no group is joined
        and nothing is committed (``enable.auto.commit=false``), so the broker keeps no
        trace of it. Starts at each partition's first or next offset, resolved now."""
        marks = self.watermarks(topic, self.start_timeout)
        starts = {(topic, p): low if from_beginning else high for p, (low, high) in marks.items()}
        config = self.consumer_config("eventbus-bridge-reader")  # a group.id; never joined
        config.update({"enable.auto.commit": False, "enable.auto.offset.store": False})
        return _KafkaReader(config, starts)

    def _admin_client(self) -> AdminClient:
        if self._admin is None:
            config = _client_config(self.config, {}, CONSUMER_ONLY | PRODUCER_ONLY)
            try:
                self._admin = AdminClient(config)
            except KafkaException as exc:
                raise ConfigError(f"bad Kafka config: {exc}") from exc
        return self._admin

    def _metadata(self, timeout: float) -> Any:
        try:
            return self._admin_client().list_topics(timeout=max(timeout, 0.001))
        except KafkaException as exc:
            raise _translate(exc, f"cannot reach Kafka at {self.bootstrap}") from exc

    def list_topics(self, timeout: float = 10.0) -> dict[str, int]:
        """Return ``{topic: partition count}``, without Kafka's internal ``__`` topics.
        Blocks up to ``timeout`` seconds."""
        topics = self._metadata(timeout).topics
        return {
            name: len(meta.partitions) for name, meta in topics.items() if not name.startswith("__")
        }

    def ensure_topics(
        self,
        topics: Sequence[str],
        partitions: int = 1,
        timeout: float = 30.0,
        *,
        replication_factor: int | None = None,
        config: Mapping[str, str] | None = None,
    ) -> None:
        """Create the missing topics (``replication_factor`` None: the broker's
        ``default.replication.factor``; ``config``: topic configs), then wait until every
        partition of each has a leader. Blocks up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        existing = self._metadata(timeout).topics
        missing = [t for t in dict.fromkeys(topics) if t not in existing]
        if missing:
            futures = self._admin_client().create_topics(
                [
                    NewTopic(
                        t,
                        num_partitions=partitions,
                        replication_factor=replication_factor or -1,
                        config=dict(config or {}),
                    )
                    for t in missing
                ],
                request_timeout=max(timeout, 0.001),
            )
            for topic, future in futures.items():
                try:
                    future.result(timeout=max(deadline - time.monotonic(), 0.001))
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise _translate(exc, f"cannot create topic {topic!r}") from exc
                except TimeoutError as exc:
                    raise TransportError(f"creating topic {topic!r} timed out") from exc
        while True:
            meta = self._metadata(deadline - time.monotonic()).topics
            pending = [
                t
                for t in topics
                if t not in meta
                or meta[t].error is not None
                or not meta[t].partitions
                or any(p.leader < 0 for p in meta[t].partitions.values())
            ]
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise TransportError(f"topics not ready after {timeout}s: {pending}")
            time.sleep(0.05)  # metadata has no change notification; poll it briefly

    def validate(self) -> None:
        """Build the producer's, consumer's and admin client's configurations in
        librdkafka, without ``bootstrap.servers`` (so nothing is contacted): ConfigError
        with librdkafka's own message for a property or value it refuses."""
        offline = {k: v for k, v in self.config.items() if k != "bootstrap.servers"}
        quiet = {"log_level": 0, "logger": log}
        clients: list[tuple[str, Callable[[dict[str, Any]], Any], dict[str, Any]]] = [
            (
                "producer",
                confluent_kafka.Producer,
                _client_config(offline, PRODUCER_DEFAULTS, CONSUMER_ONLY),
            ),
            (
                "consumer",
                confluent_kafka.Consumer,
                {
                    **_client_config(offline, CONSUMER_DEFAULTS, PRODUCER_ONLY),
                    "group.id": "validate",
                },
            ),
            (
                "admin client",
                AdminClient,
                _client_config(offline, {}, CONSUMER_ONLY | PRODUCER_ONLY),
            ),
        ]
        for kind, build, config in clients:
            try:
                client = build({**config, **quiet})
            except (KafkaException, ValueError, TypeError) as exc:
                err = exc.args[0] if exc.args else exc
                text = err.str() if isinstance(err, KafkaError) else str(err)
                raise ConfigError(f"bad [kafka] settings ({kind}): {text}") from None
            if isinstance(client, confluent_kafka.Consumer):
                client.close()

    def describe_group(self, group: str, timeout: float = 5.0) -> str | None:
        """``group 'g' is PREPARING_REBALANCE, 2 member(s): rdkafka-1f2e (static id
        svc-1) on /10.0.0.5, ...``: what a member waiting for its assignment waits for."""
        try:
            future = self._admin_client().describe_consumer_groups(
                [group], request_timeout=max(timeout, 0.001)
            )[group]
            found = future.result(timeout=max(timeout, 0.001))
        except Exception as exc:  # only for a log line
            log.debug("describing group %s failed: %s", group, exc)
            return None
        state = getattr(found.state, "name", str(found.state))
        members = [
            f"{m.client_id or m.member_id}"
            + (f" (static id {m.group_instance_id})" if m.group_instance_id else "")
            + f" on {m.host}"
            for m in found.members
        ]
        return f"group {group!r} is {state}, {len(members)} member(s)" + (
            ": " + ", ".join(members) if members else ""
        )

    def watermarks(self, topic: str, timeout: float = 10.0) -> dict[int, tuple[int, int]]:
        """Per partition: the earliest and the latest offset (AdminClient.list_offsets)."""
        deadline = time.monotonic() + timeout
        meta = self._metadata(timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            raise TransportError(f"no offsets of {topic!r}: no such topic")
        marks: dict[int, list[int]] = {p: [0, 0] for p in meta.partitions}
        specs: Any = getattr(confluent_kafka.admin, "OffsetSpec")  # noqa: B009 - untyped
        for index, spec in enumerate((specs.earliest(), specs.latest())):
            request = {TopicPartition(topic, p): spec for p in marks}
            try:
                futures = self._admin_client().list_offsets(
                    request, request_timeout=max(deadline - time.monotonic(), 0.001)
                )
                for tp, future in futures.items():
                    result = future.result(timeout=max(deadline - time.monotonic(), 0.001))
                    marks[tp.partition][index] = int(result.offset)
            except KafkaException as exc:
                raise _translate(exc, f"cannot read the offsets of {topic!r}") from exc
            except TimeoutError as exc:
                raise TransportError(f"reading the offsets of {topic!r} timed out") from exc
        return {p: (low, high) for p, (low, high) in sorted(marks.items())}

    def delete_records(self, topic: str, before: Mapping[int, int], timeout: float = 30.0) -> None:
        """Delete the records before the given offsets (AdminClient.delete_records)."""
        if not before:
            return
        partitions = [TopicPartition(topic, p, o) for p, o in sorted(before.items())]
        try:
            futures = self._admin_client().delete_records(
                partitions, request_timeout=max(timeout, 0.001)
            )
            for future in futures.values():
                future.result(timeout=max(timeout, 0.001))
        except KafkaException as exc:
            raise _translate(exc, f"cannot delete records of {topic!r}") from exc
        except TimeoutError as exc:
            raise TransportError(f"deleting records of {topic!r} timed out") from exc

    def close(self) -> None:
        """Drop the shared admin client. Idempotent."""
        self._admin = None
