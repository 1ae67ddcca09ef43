"""The bridge: mirrors chosen signals of a bus to Kafka topics and back.

Outbound, a bus handler per route pattern encodes the event in the emitting thread and
hands it to the producer without waiting for the broker; a poller thread serves delivery
reports. Inbound, one consumer thread reads records in partition order, decodes them,
drops echoes and duplicates, runs the local handlers through ``EventBus.dispatch``,
retries the handlers that failed, dead-letters what still fails, and only then stores
the record's offset (at-least-once).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

from eventbus import (
    Event,
    EventBus,
    HandlerFailure,
    PayloadError,
    compile_pattern,
    handler_name,
)

from ._codec import MsgpackCodec
from ._envelope import DLQ_PREFIX, Envelope, HeaderBuilder, read_envelope, trace_context
from ._errors import (
    ConfigError,
    DecodeError,
    DeliveryError,
    EncodeError,
    NotReadyError,
    TransportError,
)
from ._routes import Route
from ._transport import Consumer, Producer, Record, Transport

if TYPE_CHECKING:
    from ._outbox_base import BaseOutbox

log = logging.getLogger("bridge")

DeliveryFailureCallback = Callable[[DeliveryError], object]


class Remote(NamedTuple):
    """The sender of an event that arrived through a bridge: where it came from.

    (A named tuple: one is built per inbound event, and this is the cheapest kind.)
    """

    source: str
    """The emitting service (CloudEvents ``source``)."""
    id: str
    time: str | None
    topic: str
    partition: int
    offset: int
    bridge: str
    """The id of the bridge that received it (used to avoid echoes)."""


@dataclass(slots=True)
class Stats:
    """Counters of one bridge, read by any thread (``Bridge.stats``).

    ``produced`` counts records whose delivery finished, ``delivered`` those that
    succeeded, ``delivery_failed`` those that failed (each one reported). The inbound
    counters are updated by the consumer thread.
    """

    produced: int = 0
    delivered: int = 0
    delivery_failed: int = 0
    received: int = 0
    handled: int = 0
    retried: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    echoes: int = 0
    unrouted: int = 0
    in_flight: int = 0
    """Records produced and not yet delivered or failed."""
    consumer_lag: int | None = None
    """Records the consumer is behind the end of its partitions (updated every second)."""


class DedupStore(Protocol):
    """Remembers handled event ids (in memory, or in SQLite across restarts)."""

    def seen(self, event_id: str) -> bool: ...
    def add(self, event_id: str) -> None: ...


class _Dedup:
    """Remembers recent event ids for ``window`` seconds, at most ``size`` of them."""

    __slots__ = ("_ids", "_order", "size", "window")

    def __init__(self, window: float, size: int) -> None:
        self.window = window
        self.size = size
        self._ids: dict[str, float] = {}  # id -> when it was added
        self._order: deque[tuple[float, str]] = deque()  # (when, id), oldest first

    def seen(self, event_id: str) -> bool:
        at = self._ids.get(event_id)
        return at is not None and time.monotonic() - at < self.window

    def add(self, event_id: str) -> None:
        now = time.monotonic()
        self._ids[event_id] = now
        order = self._order
        order.append((now, event_id))
        if len(order) > self.size or len(order) & 255 == 0:
            # Evict beyond the size bound, and (checked now and then) past the window. An
            # id added again has an older entry in the order too: only its last one counts.
            ids, horizon = self._ids, now - self.window
            while order and (len(order) > self.size or order[0][0] <= horizon):
                at, old = order.popleft()
                if ids.get(old) == at:
                    del ids[old]


class Bridge:
    """Mirrors the routed signals of ``bus`` to and from a transport (Kafka or memory).

    ``service`` names this side: it is the CloudEvents source of outbound events and the
    consumer group of inbound routes (``group`` overrides it). ``start()`` returns once
    the bridge is ready (topics exist, partitions assigned and positioned); ``stop()``
    drains: the running handler finishes, offsets are committed, the producer flushed.
    ``with bridge:`` does both.

    Semantics: outbound delivery is reported, never silent (``on_delivery_failure``,
    the ``bridge`` logger, ``stats``); inbound is at-least-once, in partition order; a
    handler that raises is retried ``max_attempts - 1`` times with exponential backoff
    from ``backoff`` seconds, then the record goes to the route's dead-letter topic, as
    do records that cannot be decoded or validated. Event ids seen within
    ``dedup_window`` seconds are dropped. Records of types no inbound route names are
    skipped (``unrouted="skip"``) or dead-lettered (``"dlq"``).

    Reliability options (docs/reliability.md): ``outbox``, the path of a SQLite file (or
    an ``Outbox``, or a ``SqlOutbox``: events written in the application's own database
    transaction), makes outbound durable: an emit returns once the event is stored
    there, a relay thread produces it and deletes it once delivered, so events survive a
    broker outage and a crash of the process (sent again on the next start; duplicates
    are possible). ``outbox_max_events`` bounds it: an emit then waits, then raises
    ``QueueFullError``. ``dedup_path``, a SQLite file, keeps the handled event ids across
    restarts (effectively-once handling of redelivered events within ``dedup_window``).
    """

    def __init__(
        self,
        bus: EventBus,
        *,
        transport: Transport,
        service: str,
        routes: Iterable[Route],
        group: str | None = None,
        codec: MsgpackCodec | None = None,
        max_attempts: int = 3,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        dedup_window: float = 300.0,
        dedup_size: int = 100_000,
        unrouted: Literal["skip", "dlq"] = "skip",
        on_delivery_failure: DeliveryFailureCallback | None = None,
        outbox: str | BaseOutbox | None = None,
        outbox_max_events: int = 1_000_000,
        dedup_path: str | None = None,
        create_topics: bool = True,
        partitions: int = 1,
        ready_timeout: float = 30.0,
        drain_timeout: float = 30.0,
        batch_size: int = 100,
    ) -> None:
        if not isinstance(service, str) or not service.strip():
            raise ConfigError("service must be a non-empty name")
        self.routes = tuple(routes)
        for route in self.routes:
            if not isinstance(route, Route):
                raise ConfigError(f"routes must be Route objects, not {type(route).__name__}")
        if max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        if backoff < 0 or max_backoff < 0 or dedup_window < 0 or dedup_size < 0:
            raise ConfigError("backoff, max_backoff and the dedup window must not be negative")
        if unrouted not in ("skip", "dlq"):
            raise ConfigError("unrouted must be 'skip' or 'dlq'")
        if partitions < 1 or batch_size < 1:
            raise ConfigError("partitions and batch_size must be at least 1")
        self.bus = bus
        self.transport = transport
        self.service = service
        self.group = group or service
        self.codec = codec or MsgpackCodec()
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.unrouted = unrouted
        self.on_delivery_failure = on_delivery_failure
        self.create_topics = create_topics
        self.partitions = partitions
        self.ready_timeout = ready_timeout
        self.drain_timeout = drain_timeout
        self.batch_size = batch_size
        self.id = str(uuid.uuid4())
        self._stats = Stats()
        self._sent = 0  # records handed to a failures-only producer
        self._dedup: DedupStore = _Dedup(dedup_window, dedup_size)
        if dedup_path:
            from ._dedup import SqliteDedup  # sqlite3 only when asked for

            self._dedup = SqliteDedup(dedup_path, dedup_window, dedup_size)
        self._outbox: BaseOutbox | None = None
        if outbox is not None:
            from ._outbox import Outbox
            from ._outbox_base import BaseOutbox

            if isinstance(outbox, str) and outbox:
                self._outbox = Outbox(outbox, max_events=outbox_max_events)
            elif isinstance(outbox, BaseOutbox):
                self._outbox = outbox
            else:
                raise ConfigError(
                    f"outbox must be a file path, an Outbox or a SqlOutbox, not {outbox!r}"
                )
        self._headers = HeaderBuilder(service, self.id)
        self._out_routes = tuple(r for r in self.routes if r.is_outbound)
        self._in_routes = tuple(r for r in self.routes if r.is_inbound)
        self._out_cache: dict[tuple[str, str], tuple[Route, ...]] = {}
        self._in_cache: dict[tuple[str, str], Route | None] = {}
        self._dead_letters: list[_DeadLetter] = []  # produced, not yet confirmed
        self._patterns = tuple(dict.fromkeys(s for r in self._out_routes for s in r.signals))
        self._handlers: list[Callable[[Event], None]] = []
        self._producer: Producer | None = None
        self._letters: Producer | None = None  # dead letters, when there is no outbox
        self._consumer: Consumer | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._consumer_error: BaseException | None = None
        self._state = "new"
        self._lock = threading.Lock()
        self._stats_lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------

    def __enter__(self) -> Bridge:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def topics(self) -> list[str]:
        """Every topic the bridge uses: routes' topics and dead-letter topics."""
        names = [r.topic for r in self.routes] + [r.dead_letter_topic for r in self._in_routes]
        return list(dict.fromkeys(names))

    @property
    def healthy(self) -> bool:
        """True while started and ready, and neither the consumer nor the outbox relay died."""
        return (
            self._state == "running"
            and self._ready.is_set()
            and not self._consumer_error
            and (self._outbox is None or self._outbox.alive)
        )

    def start(self) -> None:
        """Connect, create missing topics, join the group; return when ready.

        After it returns, every event published to an inbound topic is received. Raises
        ``NotReadyError`` (and cleans up) if that takes longer than ``ready_timeout``.
        """
        with self._lock:
            if self._state != "new":
                raise RuntimeError(f"a bridge starts once; this one is {self._state}")
            self._state = "starting"
        try:
            deadline = time.monotonic() + self.ready_timeout
            if self.create_topics:
                self.transport.ensure_topics(self.topics, self.partitions, self.ready_timeout)
            if self._outbox is None:
                # Only failures are reported: a delivered event costs no Python at all.
                self._producer = self.transport.producer(on_failure=self._failed)
            else:
                self._producer = self.transport.producer()  # the relay needs every report
            self._producer.warm_up(self.topics, max(0.1, deadline - time.monotonic()))
            self._spawn("bridge-delivery", self._poll_deliveries)
            if self._outbox is not None:
                self._outbox.start(self._producer, self._delivered)
            if self._in_routes:
                topics = list(dict.fromkeys(r.topic for r in self._in_routes))
                self._consumer = self.transport.consumer(self.group, topics)
                self._spawn("bridge-consumer", self._consume)
                if not self._ready.wait(max(0.0, deadline - time.monotonic())):
                    error = self._consumer_error
                    raise NotReadyError(
                        f"bridge {self.service!r} not ready within {self.ready_timeout:g} s: "
                        + (f"{error}" if error else "no partition assignment from the group")
                    )
            else:
                self._ready.set()
            for pattern in self._patterns:
                handler = self._make_outbound(pattern)
                self.bus.on_event(pattern)(handler)
                self._handlers.append(handler)
            self._state = "running"
            log.info(
                "bridge %s ready: %d route(s), group %s", self.service, len(self.routes), self.group
            )
        except BaseException:
            self._shutdown()
            raise

    def stop(self) -> None:
        """Stop mirroring; let the running handler finish; commit; flush; close.

        Idempotent. Events emitted after ``stop`` are local only. Records still
        undelivered after ``drain_timeout`` are reported as delivery failures.
        """
        with self._lock:
            if self._state in ("stopped", "new"):
                self._state = "stopped"
                return
            self._state = "stopping"
        self._shutdown()

    def _shutdown(self) -> None:
        for handler in self._handlers:
            self.bus.off(handler)
        self._handlers.clear()
        self._stopping.set()
        for thread in self._threads:
            if thread.name == "bridge-consumer":
                thread.join()
        if self._consumer is not None:
            try:
                self._consumer.close()
            except TransportError as exc:
                log.error("bridge %s: closing the consumer failed: %s", self.service, exc)
        if self._letters is not None:
            self._letters.close(self.drain_timeout)
        if self._outbox is not None:
            self._outbox.stop(self.drain_timeout)
        if self._producer is not None:
            left = self._producer.flush(self.drain_timeout)
            if left:
                log.error("bridge %s: %d record(s) not delivered at stop", self.service, left)
            self._producer.close(0)  # flush above already waited drain_timeout
        for thread in self._threads:
            thread.join()
        self._state = "stopped"
        log.info("bridge %s stopped", self.service)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    # -- outbound -------------------------------------------------------------------

    def _make_outbound(self, pattern: str) -> Callable[[Event], None]:
        def publish(event: Event) -> None:
            sender = event.sender
            if type(sender) is Remote and sender.bridge == self.id:
                return  # arrived through this bridge: never re-published
            routes = self._out_cache.get((pattern, event.name))
            if routes is None:
                routes = self._outbound_routes(pattern, event.name)
            if routes:
                self._publish(event.name, event.payload, routes)

        publish.__qualname__ = f"Bridge.outbound[{pattern}]"
        return publish

    def _outbound_routes(self, pattern: str, name: str) -> tuple[Route, ...]:
        # Several patterns may match one name; only the first one's handler publishes,
        # so an event goes once to each matching route.
        first = next(p for p in self._patterns if _route_pattern_matches(p, name))
        routes = tuple(r for r in self._out_routes if r.matches(name)) if first == pattern else ()
        self._out_cache[(pattern, name)] = routes
        return routes

    def _publish(self, name: str, payload: Mapping[str, Any], routes: tuple[Route, ...]) -> None:
        producer = self._producer
        if producer is None:
            raise RuntimeError("bridge is not started")
        value = self.codec.encode(payload)
        headers = self._headers.build(name)
        for route in routes:
            key = None
            if route.key is not None:
                try:
                    key = _key_bytes(payload[route.key])
                except KeyError:
                    raise EncodeError(
                        f"{name}: the route to topic {route.topic!r} needs payload field "
                        f"{route.key!r} as its partition key"
                    ) from None
            if self._outbox is not None:
                self._outbox.append(route.topic, value, key, headers)
            else:
                producer.produce(route.topic, value, key, headers)
                with self._stats_lock:  # counted once queued (see stats)
                    self._sent += 1

    @property
    def stats(self) -> Stats:
        """This bridge's counters, current when read."""
        stats = self._stats
        producer = self._producer
        if self._outbox is None and producer is not None:
            # Delivered = produced - in flight - failed. Read in this order, and with
            # ``_sent`` counted after produce, a record is never counted early.
            with self._stats_lock:
                sent = self._sent
            in_flight = producer.in_flight()
            with self._stats_lock:
                stats.in_flight = min(in_flight, sent)
                stats.produced = sent - stats.in_flight
                stats.delivered = max(0, stats.produced - stats.delivery_failed)
        return stats

    def _delivered(self, error: Exception | None, record: Record) -> None:
        """Every delivery report of the outbox relay's records."""
        stats = self._stats
        with self._stats_lock:
            stats.produced += 1
            if error is None:
                stats.delivered += 1
            else:
                stats.delivery_failed += 1
        if error is not None:
            self._report_failure(error, record)

    def _failed(self, error: Exception, record: Record) -> None:
        """The report of a record the failures-only producer could not deliver."""
        with self._stats_lock:
            self._stats.delivery_failed += 1
        self._report_failure(error, record)

    def _report_failure(self, error: Exception, record: Record) -> None:
        failure = DeliveryError(f"record to {record.topic!r} not delivered: {error}", record)
        failure.__cause__ = error
        log.error("bridge %s: %s", self.service, failure)
        if self.on_delivery_failure is not None:
            try:
                self.on_delivery_failure(failure)
            except Exception:
                log.exception("bridge %s: on_delivery_failure raised", self.service)

    def _poll_deliveries(self) -> None:
        producer = self._producer
        assert producer is not None
        while not self._stopping.is_set():
            try:
                producer.poll(0.1)
            except Exception:  # a bad callback must not end delivery reports
                log.exception("bridge %s: serving delivery reports failed", self.service)

    # -- inbound --------------------------------------------------------------------

    def _consume(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        lag_due = 0.0
        try:
            while not self._stopping.is_set():
                records = consumer.consume(self.batch_size, 0.1)
                if not self._ready.is_set() and consumer.is_ready():
                    self._ready.set()
                if records:
                    self._handle_batch(consumer, records)
                now = time.monotonic()
                if now >= lag_due and self._ready.is_set():
                    self._stats.consumer_lag = consumer.lag()
                    lag_due = now + 1.0
        except BaseException as exc:
            self._consumer_error = exc
            log.exception("bridge %s: the consumer stopped", self.service)

    def _handle_batch(self, consumer: Consumer, records: list[Record]) -> None:
        # Offsets are stored once per partition per batch, for the last record done:
        # the same at-least-once point as storing each one, at a fraction of the cost.
        done: dict[tuple[str, int], Record] = {}
        stopping = self._stopping
        process = self._process
        received = 0
        for record in records:
            if stopping.is_set():
                break  # this record and the rest are redelivered
            received += 1
            try:
                finished = process(record)
            except Exception as exc:  # a bug or a surprise must not stop the partition
                finished = self._unexpected(record, exc)
            if not finished:
                break  # stopping before the record was done: it is redelivered
            done[(record.topic, record.partition)] = record
        self._stats.received += received
        unconfirmed = self._confirm_dead_letters() if self._dead_letters else ()
        for partition, record in done.items():
            if partition not in unconfirmed:
                consumer.store(record)

    def _unexpected(self, record: Record, exc: Exception) -> bool:
        log.exception("bridge %s: unexpected error on %s", self.service, _where(record))
        reason = f"unexpected error: {exc!r}"
        return self._dead_letter(record, None, reason, type(exc).__name__, None, 0)

    def _process(self, record: Record) -> bool:
        """Process one record to the end; True when its offset may be stored.

        Never raises for bad input: a record is handled, skipped or dead-lettered. False
        only when the bridge stops before the record was done (it is redelivered).
        This runs per inbound record: the common path makes as few calls as it can.
        """
        try:
            envelope = read_envelope(record)
            event_id, source, name, at, origin, traceparent, _ = envelope
            if origin == self.id:
                self._stats.echoes += 1
                return True
            value = record.value
            payload = self.codec.decode(value if value is not None else b"")
        except DecodeError as exc:
            return self._dead_letter(record, None, f"undecodable record: {exc}", "decode", None, 0)
        topic = record.topic
        route = self._in_cache.get((topic, name))
        if route is None and (topic, name) not in self._in_cache:
            route = self._inbound_route(topic, name)
        if route is None:
            self._stats.unrouted += 1
            if self.unrouted == "dlq":
                reason = f"no inbound route for type {name!r} on this topic"
                return self._dead_letter(record, None, reason, "unrouted", None, 0)
            return True
        dedup = self._dedup
        if dedup.seen(event_id):
            self._stats.duplicates += 1
            return True
        sender = _new_remote(
            Remote, (source, event_id, at, topic, record.partition, record.offset, self.id)
        )
        try:
            if traceparent is None:
                failures = self.bus.dispatch(name, sender, payload)
            else:
                with trace_context(traceparent, envelope.tracestate):
                    failures = self.bus.dispatch(name, sender, payload)
        except PayloadError as exc:
            return self._dead_letter(
                record, route, f"invalid payload: {exc}", "PayloadError", None, 0
            )
        if failures and not self._retry_or_dead_letter(record, route, envelope, failures):
            return False
        dedup.add(event_id)
        self._stats.handled += 1
        return True

    def _inbound_route(self, topic: str, name: str) -> Route | None:
        route = next(
            (r for r in self._in_routes if r.topic == topic and r.matches(name)),
            None,
        )
        if len(self._in_cache) > 10_000:  # hostile streams of made-up types
            self._in_cache.clear()
        self._in_cache[(topic, name)] = route
        return route

    def _retry_or_dead_letter(
        self,
        record: Record,
        route: Route,
        envelope: Envelope,
        failures: list[HandlerFailure],
    ) -> bool:
        """Retry the failed handlers with backoff, then dead-letter the record.

        False when the bridge stops meanwhile (the record is redelivered)."""
        attempts = 1
        delay = self.backoff
        while failures and attempts < self.max_attempts:
            if self._stopping.wait(delay):
                return False
            delay = min(delay * 2, self.max_backoff)
            attempts += 1
            self._stats.retried += 1
            failures = self._retry(failures, envelope.traceparent, envelope.tracestate)
        if not failures:
            return True
        first = failures[0]
        reason = f"handler failed after {attempts} attempt(s): {first.exception!r}"
        return self._dead_letter(
            record, route, reason, type(first.exception).__name__, first, attempts
        )

    def _retry(
        self, failures: Sequence[HandlerFailure], parent: bytes | None, state: bytes | None
    ) -> list[HandlerFailure]:
        still: list[HandlerFailure] = []
        for failure in failures:
            try:
                if parent is not None:
                    with trace_context(parent, state):
                        failure.retry()
                else:
                    failure.retry()
            except Exception as exc:
                still.append(HandlerFailure(failure.event, failure.handler, exc, failure.retry))
        return still

    def _dead_letter(
        self,
        record: Record,
        route: Route | None,
        reason: str,
        error: str,
        failure: HandlerFailure | None,
        attempts: int,
    ) -> bool:
        """Produce ``record`` with the reason to the dead-letter topic, without waiting.

        The delivery is confirmed before the record's offset is stored
        (``_confirm_dead_letters``), so a flood of bad records costs one flush per batch,
        not one per record.
        """
        if route is None:
            route = next((r for r in self._in_routes if r.topic == record.topic), None)
        topic = route.dead_letter_topic if route else f"{record.topic}.dlq"
        headers = [
            *record.headers,
            (DLQ_PREFIX + "reason", reason.encode(errors="replace")[:4096]),
            (DLQ_PREFIX + "error", error.encode()),
            (DLQ_PREFIX + "topic", record.topic.encode()),
            (DLQ_PREFIX + "partition", str(record.partition).encode()),
            (DLQ_PREFIX + "offset", str(record.offset).encode()),
            (DLQ_PREFIX + "attempts", str(attempts).encode()),
            (DLQ_PREFIX + "service", self.service.encode()),
        ]
        if failure is not None:
            headers.append((DLQ_PREFIX + "handler", handler_name(failure.handler).encode()))
        log.warning(
            "bridge %s: dead-lettering %s to %s: %s", self.service, _where(record), topic, reason
        )
        letter = _DeadLetter(record, topic, headers)
        self._send_dead_letter(letter)
        self._dead_letters.append(letter)
        return True

    def _letter_producer(self) -> Producer:
        """The producer of dead letters: one that reports every delivery (each one is
        confirmed before its record's offset is stored), made at the first dead letter."""
        if self._outbox is not None and self._producer is not None:
            return self._producer
        if self._letters is None:
            self._letters = self.transport.producer()
        return self._letters

    def _send_dead_letter(self, letter: _DeadLetter) -> None:
        producer = self._letter_producer()
        letter.reset()
        try:
            producer.produce(
                letter.topic,
                letter.record.value or b"",
                letter.record.key,
                letter.headers,
                letter.report,
            )
        except TransportError as exc:
            letter.report(exc, letter.record)

    def _confirm_dead_letters(self) -> set[tuple[str, int]]:
        """Wait until the dead letters produced so far are delivered, resending failed ones.

        Returns the partitions whose dead letters could not be confirmed because the bridge
        is stopping: their offsets must not be stored (the records come again).
        """
        letters, self._dead_letters = self._dead_letters, []
        producer = self._letter_producer() if letters else None
        delay = self.backoff or 0.1
        while letters and producer is not None:
            producer.flush(self.drain_timeout)
            failed = [letter for letter in letters if not letter.wait(self.drain_timeout)]
            self._stats.dead_lettered += len(letters) - len(failed)
            if not failed:
                break
            log.error(
                "bridge %s: %d dead letter(s) not delivered (%s); retrying",
                self.service,
                len(failed),
                failed[0].error or "no delivery report",
            )
            if self._stopping.wait(delay):
                return {(f.record.topic, f.record.partition) for f in failed}
            delay = min(delay * 2, self.max_backoff)
            for letter in failed:
                self._send_dead_letter(letter)
            letters = failed
        return set()


class _DeadLetter:
    """A record on its way to a dead-letter topic, and the outcome of its delivery."""

    __slots__ = ("delivered", "error", "headers", "record", "topic")

    def __init__(self, record: Record, topic: str, headers: list[tuple[str, bytes]]) -> None:
        self.record = record
        self.topic = topic
        self.headers = headers
        self.delivered = threading.Event()
        self.error: Exception | None = None

    def reset(self) -> None:
        self.delivered = threading.Event()
        self.error = None

    def report(self, error: Exception | None, _record: Record) -> None:
        # Runs in whichever thread serves the producer's delivery reports.
        self.error = error
        self.delivered.set()

    def wait(self, timeout: float) -> bool:
        """True once delivered; False if it failed or no report came within ``timeout``."""
        return self.delivered.wait(timeout) and self.error is None


_new_remote = tuple.__new__


def _where(record: Record) -> str:
    return f"{record.topic}[{record.partition}]@{record.offset}"


def _route_pattern_matches(pattern: str, name: str) -> bool:
    return compile_pattern(pattern)(name) if "*" in pattern else pattern == name


def _key_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool) or value is None:
        raise EncodeError(f"a partition key must be text, a number or bytes, not {value!r}")
    return str(value).encode()
