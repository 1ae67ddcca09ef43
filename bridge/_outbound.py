"""The outbound direction: routed bus events encoded and handed to the producer.

A bus handler per route pattern encodes the event in the emitting thread and queues it
without waiting for the broker (direct mode: a failures-only producer, so a delivered
event costs no Python), or appends it to the outbox, whose relay produces it. A poller
thread serves delivery reports. Failures are logged, counted and passed to
``on_delivery_failure``; an event is never dropped silently.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from eventbus import Event, EventBus, compile_pattern

from ._codec import MsgpackCodec
from ._errors import BridgeError, DeliveryError, EncodeError
from ._formats import Writer, Writers
from ._remote import Remote
from ._routes import Route
from ._stats import Stats
from ._throttle import LogThrottle
from ._transport import RECORD_FRAMING, Headers, Producer, Record, Transport, record_size

if TYPE_CHECKING:
    from ._outbox_base import BaseOutbox
    from ._tracing import Tracing

log = logging.getLogger("bridge")

_Target = tuple[Route, Writer, str]
"""A route an event goes to, the writer of its format and the type it writes."""
_HEADROOM = 16_384
"""An emit whose value and key are this far below the record limit needs no exact count:
its headers are the bridge's own (CloudEvents attributes, trace context), far smaller."""

DeliveryFailureCallback = Callable[[DeliveryError], object]


class Outbound:
    """Publishes the events of the outbound ``routes`` of one bridge."""

    def __init__(
        self,
        bus: EventBus,
        *,
        transport: Transport,
        service: str,
        bridge_id: str,
        routes: Sequence[Route],
        codec: MsgpackCodec,
        outbox: BaseOutbox | None,
        on_delivery_failure: DeliveryFailureCallback | None,
        stats: Stats,
        stats_lock: threading.Lock,
        tracing: Tracing | None = None,
    ) -> None:
        self.bus = bus
        self.transport = transport
        self.service = service
        self._failure_log = LogThrottle(log)
        self.bridge_id = bridge_id
        self.routes = tuple(r for r in routes if r.is_outbound)
        self.codec = codec
        self.outbox = outbox
        self.max_record_size = transport.max_record_size
        self._check_above = self.max_record_size - _HEADROOM
        self.on_delivery_failure = on_delivery_failure
        self._stats = stats
        self._stats_lock = stats_lock
        self.tracing = tracing  # None: no spans (see _tracing)
        self._sent = 0  # records handed to a failures-only producer
        self._writers = Writers(self.routes, codec, service, bridge_id)
        self._cache: dict[tuple[str, str], tuple[_Target, ...]] = {}
        self._patterns = tuple(dict.fromkeys(s for r in self.routes for s in r.signals))
        self._handlers: list[Callable[[Event], None]] = []
        self.producer: Producer | None = None
        self._poller: threading.Thread | None = None
        self._stopping = threading.Event()
        self._closing = False  # set by detach: an emit racing it raises, never half-sent

    # -- lifecycle ------------------------------------------------------------------

    def open(self, topics: Sequence[str], timeout: float) -> None:
        """Make the producer, learn the partitions of ``topics``, start reporting."""
        if self.outbox is None:
            # Only failures are reported: a delivered event costs no Python at all.
            self.producer = self.transport.producer(on_failure=self._failed)
        else:
            self.producer = self.transport.producer()  # the relay needs every report
        self.producer.warm_up(topics, timeout)
        self._poller = threading.Thread(
            target=self._poll_deliveries, name="bridge-delivery", daemon=True
        )
        self._poller.start()
        if self.outbox is not None:
            self.outbox.start(self.producer, self._delivered)

    def attach(self) -> None:
        """Subscribe to the bus: from now on routed events are published."""
        for pattern in self._patterns:
            handler = self._make_handler(pattern)
            self.bus.on_event(pattern)(handler)
            self._handlers.append(handler)

    def detach(self) -> None:
        """Unsubscribe from the bus: events emitted from now on stay local; one racing
        this (its handler already called) raises ``BridgeError``: not sent."""
        self._closing = True
        for handler in self._handlers:
            self.bus.off(handler)
        self._handlers.clear()

    def close(self, drain_timeout: float) -> None:
        """Stop the outbox relay, flush what is queued, close: within ``drain_timeout``
        (and the moments the client takes to fail what is still queued then)."""
        deadline = time.monotonic() + drain_timeout
        if self.outbox is not None:
            self.outbox.stop(drain_timeout)
        producer = self.producer
        if producer is not None:
            # In slices: one long flush overruns its timeout by seconds while emitting
            # threads hold the GIL, and records racing the stop may still arrive.
            left = producer.flush(0)
            while left and (now := time.monotonic()) < deadline:
                left = producer.flush(min(0.05, deadline - now))
            if left:
                log.error("bridge %s: %d record(s) not delivered at stop", self.service, left)
        self._stopping.set()
        if self._poller is not None:
            self._poller.join()
        if producer is not None:
            producer.close(0)  # flush above already waited drain_timeout
        self._failure_log.flush()

    # -- publishing -----------------------------------------------------------------

    def _make_handler(self, pattern: str) -> Callable[[Event], None]:
        def publish(event: Event) -> None:
            sender = event.sender
            if type(sender) is Remote and sender.bridge == self.bridge_id:
                return  # arrived through this bridge: never re-published
            targets = self._cache.get((pattern, event.name))
            if targets is None:
                targets = self._targets_of(pattern, event.name)
            if targets:
                self.publish(event.name, event.payload, targets)

        publish.__qualname__ = f"Bridge.outbound[{pattern}]"
        return publish

    def _targets_of(self, pattern: str, name: str) -> tuple[_Target, ...]:
        # Several patterns may match one name; only the first one's handler publishes,
        # so an event goes once to each matching route.
        first = next(p for p in self._patterns if _pattern_matches(p, name))
        routes = tuple(r for r in self.routes if r.matches(name)) if first == pattern else ()
        writers = self._writers
        targets = tuple((r, writers.of(r), writers.type_of(r, name)) for r in routes)
        self._cache[(pattern, name)] = targets
        return targets

    def publish(self, name: str, payload: Mapping[str, Any], targets: tuple[_Target, ...]) -> None:
        """Encode one event and queue it to the route of each of ``targets`` (or to the
        outbox): ``(route, its writer, the type it writes)``, found once per name."""
        producer = self.producer
        if producer is None:
            raise RuntimeError("bridge is not started")
        if self._closing:
            raise BridgeError(
                f"bridge {self.service} is stopping: event {name!r} was not sent "
                f"(to {', '.join(repr(t[0].topic) for t in targets)})"
            )
        last_writer: Writer | None = None
        last_type = ""
        value = b""
        headers: Sequence[tuple[str, bytes]] = ()
        for route, writer, ce_type in targets:
            if writer is not last_writer or ce_type != last_type:  # else the same record
                try:
                    value, headers = writer.write(ce_type, payload)
                except EncodeError as exc:
                    raise self._encode_error(name, route.topic, exc) from exc
                last_writer, last_type = writer, ce_type
            key = None
            if route.key is not None:
                try:
                    key = _key_bytes(payload[route.key])
                except KeyError:
                    raise EncodeError(
                        f"{name}: the route to topic {route.topic!r} needs payload field "
                        f"{route.key!r} as its partition key"
                    ) from None
            if len(value) + (len(key) if key else 0) > self._check_above:
                self._check_size(name, route.topic, value, key, headers)
            if self.tracing is not None:
                with self.tracing.sending(route.topic, key, value, headers) as traced:
                    self._queue(producer, route.topic, value, key, traced)
            # _queue inlined: untraced, the emit path costs one test more than before.
            elif self.outbox is not None:
                self.outbox.append(route.topic, value, key, headers)
            else:
                producer.produce(route.topic, value, key, headers)
                with self._stats_lock:  # counted once queued (see update_stats)
                    self._sent += 1

    def _encode_error(self, name: str, topic: str, exc: EncodeError) -> EncodeError:
        """``exc`` with the event and topic named (and, for a payload over the codec's
        limit, where that limit comes from)."""
        message = f"{name} for topic {topic!r}: {exc}"
        if "max_size" in str(exc) and self.codec.max_size == self.max_record_size:
            message += (
                f" (the producer's limit, message.max.bytes={self.max_record_size}: raise "
                '"message.max.bytes" in the Kafka settings, and the topic\'s '
                "max.message.bytes on the broker, or send a smaller payload)"
            )
        return EncodeError(message)

    def _check_size(
        self, name: str, topic: str, value: bytes, key: bytes | None, headers: Headers
    ) -> None:
        """Raise ``EncodeError`` for a record over the producer's limit: refused at the
        emit, before it is queued or stored, never accepted and then refused."""
        size = record_size(value, key, headers)
        if size > self.max_record_size:
            raise EncodeError(
                f"{name}: the record for topic {topic!r} is {size} bytes (value {len(value)}, "
                f"key and headers {size - len(value) - RECORD_FRAMING}, framing "
                f"{RECORD_FRAMING}), over the producer's limit of {self.max_record_size} "
                'bytes: raise "message.max.bytes" in the Kafka settings (and the topic\'s '
                "max.message.bytes on the broker), or send a smaller payload"
            )

    def _queue(
        self,
        producer: Producer,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> None:
        """Queue one record: to the outbox, or to the producer (and count it)."""
        if self.outbox is not None:
            self.outbox.append(topic, value, key, headers)
        else:
            producer.produce(topic, value, key, headers)
            with self._stats_lock:  # counted once queued (see update_stats)
                self._sent += 1

    # -- delivery accounting ----------------------------------------------------------

    def update_stats(self) -> None:
        """Bring the outbound counters of ``stats`` up to date (direct mode)."""
        producer = self.producer
        if self.outbox is not None or producer is None:
            return
        stats = self._stats
        # Delivered = produced - in flight - failed. Read in this order, and with
        # ``_sent`` counted after produce, a record is never counted early.
        with self._stats_lock:
            sent = self._sent
        in_flight = producer.in_flight()
        with self._stats_lock:
            stats.in_flight = min(in_flight, sent)
            stats.produced = sent - stats.in_flight
            stats.delivered = max(0, stats.produced - stats.delivery_failed)

    def _delivered(self, error: Exception | None, record: Record) -> None:
        """Every delivery report of the outbox relay's records."""
        stats = self._stats
        with self._stats_lock:
            stats.produced += 1
            if error is None:
                stats.delivered += 1
            else:
                stats.delivery_failed += 1
                stats.refused += getattr(error, "permanent", False)
        if error is not None:
            self._report_failure(error, record)

    def _failed(self, error: Exception, record: Record) -> None:
        """The report of a record the failures-only producer could not deliver."""
        with self._stats_lock:
            self._stats.delivery_failed += 1
            self._stats.refused += getattr(error, "permanent", False)
        self._report_failure(error, record)

    def _report_failure(self, error: Exception, record: Record) -> None:
        failure = DeliveryError(f"record to {record.topic!r} not delivered: {error}", record)
        failure.__cause__ = error
        # One line per condition (topic and error), then a count: not one per record.
        self._failure_log.log(
            logging.ERROR, (record.topic, str(error)), "bridge %s: %s", self.service, failure
        )
        if self.on_delivery_failure is not None:
            try:
                self.on_delivery_failure(failure)
            except Exception:
                log.exception("bridge %s: on_delivery_failure raised", self.service)

    def _poll_deliveries(self) -> None:
        producer = self.producer
        assert producer is not None
        while not self._stopping.is_set():
            try:
                producer.poll(0.1)
            except Exception:  # a bad callback must not end delivery reports
                log.exception("bridge %s: serving delivery reports failed", self.service)


def _pattern_matches(pattern: str, name: str) -> bool:
    return compile_pattern(pattern)(name) if "*" in pattern else pattern == name


def _key_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool) or value is None:
        raise EncodeError(f"a partition key must be text, a number or bytes, not {value!r}")
    return str(value).encode()
