"""The inbound direction: records from Kafka to the bus's handlers, at least once.

One consumer thread reads records in partition order. Each record is decoded, dropped
when it is an echo of this bridge, unrouted or a duplicate, and otherwise dispatched to
the bus's handlers (``EventBus.dispatch``) with a ``Remote`` sender. The handlers that
fail are retried with backoff; what still fails is dead-lettered. Only then is the
record's offset stored (committed later by the transport): a record is never committed
unless every handler saw it or its dead letter is on the broker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, Literal

from eventbus import EventBus, HandlerFailure, PayloadError

from ._codec import MsgpackCodec
from ._dead_letters import DeadLetter, DeadLetters, where
from ._dedup import DedupStore
from ._envelope import Envelope, read_envelope, trace_context
from ._errors import DecodeError
from ._remote import Remote
from ._rerun import RERUN_ID, RerunError, read_rerun
from ._retry_topics import HELD, Held, RetryTopics
from ._routes import Route
from ._stats import Stats
from ._transport import Consumer, Record

log = logging.getLogger("bridge")

_new_remote = tuple.__new__


class Inbound:
    """Consumes the inbound ``routes`` of one bridge and runs the bus's handlers."""

    def __init__(
        self,
        bus: EventBus,
        *,
        consumer: Consumer,
        service: str,
        bridge_id: str,
        routes: Sequence[Route],
        codec: MsgpackCodec,
        dedup: DedupStore,
        dead_letters: DeadLetters,
        stats: Stats,
        max_attempts: int,
        backoff: float,
        max_backoff: float,
        unrouted: Literal["skip", "dlq"],
        batch_size: int,
        stopping: threading.Event,
        retry_topics: RetryTopics | None = None,
    ) -> None:
        self.bus = bus
        self.consumer = consumer
        self.service = service
        self.bridge_id = bridge_id
        self.routes = tuple(r for r in routes if r.is_inbound)
        self.codec = codec
        self.dedup = dedup
        self.dead_letters = dead_letters
        self._stats = stats
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.unrouted = unrouted
        self.batch_size = batch_size
        self.retries = retry_topics  # delayed retry topics (_retry_topics), if any route has them
        self._cache: dict[tuple[str, str], Route | None] = {}
        self._letters: list[DeadLetter] = []  # produced, not yet confirmed
        self._thread: threading.Thread | None = None
        self.stopping = stopping
        self.ready = threading.Event()
        self.error: BaseException | None = None

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Start the consumer thread; ``ready`` is set once partitions are assigned."""
        self._thread = threading.Thread(target=self._consume, name="bridge-consumer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Let the running handler finish, then stop the consumer thread."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join()

    # -- the consume loop -------------------------------------------------------------

    def _consume(self) -> None:
        consumer = self.consumer
        lag_due = 0.0
        try:
            while not self.stopping.is_set():
                records = consumer.consume(self.batch_size, 0.1)
                if not self.ready.is_set() and consumer.is_ready():
                    self.ready.set()
                if records:
                    self._handle_batch(records)
                if self.retries is not None and self.retries.paused:
                    self.retries.resume_due(self)
                now = time.monotonic()
                if now >= lag_due and self.ready.is_set():
                    self._stats.consumer_lag = consumer.lag()
                    lag_due = now + 1.0
        except BaseException as exc:
            self.error = exc
            log.exception("bridge %s: the consumer stopped", self.service)

    def _handle_batch(self, records: list[Record]) -> None:
        # Offsets are stored once per partition per batch, for the last record done:
        # the same at-least-once point as storing each one, at a fraction of the cost.
        done: dict[tuple[str, int], Record] = {}
        stopping = self.stopping
        process = self._process
        received = 0
        held: set[tuple[str, int]] = set()
        for record in records:
            if stopping.is_set():
                break  # this record and the rest are redelivered
            if held and (record.topic, record.partition) in held:
                continue  # its retry partition was paused at an earlier record: comes again
            received += 1
            try:
                finished = process(record)
            except Exception as exc:  # a bug or a surprise must not stop the partition
                finished = self._unexpected(record, exc)
            if not finished:
                break  # stopping before the record was done: it is redelivered
            if finished is HELD:  # a retry not due yet: paused at it, it comes again
                received -= 1
                held.add((record.topic, record.partition))
                continue
            done[(record.topic, record.partition)] = record
        self._stats.received += received
        unconfirmed: set[tuple[str, int]] = set()
        if self._letters:
            letters, self._letters = self._letters, []
            delivered, unconfirmed = self.dead_letters.confirm(letters)
            self._stats.dead_lettered += delivered
        store = self.consumer.store
        for partition, record in done.items():
            if partition not in unconfirmed:
                store(record)

    # -- one record -------------------------------------------------------------------

    def _unexpected(self, record: Record, exc: Exception) -> bool:
        log.exception("bridge %s: unexpected error on %s", self.service, where(record))
        reason = f"unexpected error: {exc!r}"
        return self._dead_letter(record, None, reason, type(exc).__name__, (), 0)

    def _process(self, record: Record) -> bool | Held:
        """Process one record to the end; True when its offset may be stored.

        Never raises for bad input: a record is handled, skipped or dead-lettered. False
        only when the bridge stops before the record was done (it is redelivered);
        ``HELD`` for a delayed retry that is not due (its partition is paused at it).
        This runs per inbound record: the common path makes as few calls as it can.
        """
        try:
            envelope = read_envelope(record)
            event_id, source, name, at, origin, traceparent, _ = envelope
            if origin == self.bridge_id:
                self._stats.echoes += 1
                return True
            value = record.value
            payload = self.codec.decode(value if value is not None else b"")
        except DecodeError as exc:
            return self._dead_letter(record, None, f"undecodable record: {exc}", "decode", (), 0)
        topic = record.topic
        route = self._cache.get((topic, name))
        if route is None and (topic, name) not in self._cache:
            route = self._route_of(topic, name)
        if route is None:
            retries = self.retries
            if retries is not None and (retrying := retries.route_of(topic)) is not None:
                return retries.handle(self, record, retrying, envelope, payload)
            self._stats.unrouted += 1
            if self.unrouted == "dlq":
                reason = f"no inbound route for type {name!r} on this topic"
                return self._dead_letter(record, None, reason, "unrouted", (), 0)
            return True
        if record.headers[-1][0] == RERUN_ID:  # a replay or a delayed retry (_rerun)
            return self._rerun(record, route, envelope, payload)
        dedup = self.dedup
        if dedup.seen(event_id):
            self._stats.duplicates += 1
            return True
        sender = _new_remote(
            Remote, (source, event_id, at, topic, record.partition, record.offset, self.bridge_id)
        )
        try:
            if traceparent is None:
                failures = self.bus.dispatch(name, sender, payload)
            else:
                with trace_context(traceparent, envelope.tracestate):
                    failures = self.bus.dispatch(name, sender, payload)
        except PayloadError as exc:
            return self._dead_letter(
                record, route, f"invalid payload: {exc}", "PayloadError", (), 0
            )
        if failures and not self._retry_or_dead_letter(record, route, envelope, failures):
            return False
        dedup.add(event_id)
        self._stats.handled += 1
        return True

    def _rerun(self, record: Record, route: Route, envelope: Envelope, payload: Any) -> bool:
        """A record sent again for this service's handlers that failed: run only those.

        Skipped by other services; deduplicated by its own id (``_rerun``)."""
        try:
            rerun = read_rerun(record.headers)
        except RerunError as exc:
            return self._dead_letter(record, route, f"bad rerun headers: {exc}", "rerun", (), 0)
        if rerun.service != self.service:
            self._stats.duplicates += 1  # another service's handlers failed, not ours
            return True
        key = f"{envelope.id}#{rerun.id}"
        if self.dedup.seen(key):
            self._stats.duplicates += 1
            return True
        handlers = rerun.handlers
        if handlers is not None:
            present = handlers.intersection(self.bus.handler_names(envelope.type))
            if not present:
                names = ", ".join(sorted(handlers))
                reason = f"none of the handlers to rerun is subscribed: {names}"
                return self._dead_letter(record, route, reason, "rerun", (), 0)
            if len(present) < len(handlers):
                log.warning(
                    "bridge %s: rerun of %s: handler(s) no longer subscribed: %s",
                    self.service,
                    where(record),
                    ", ".join(sorted(handlers - present)),
                )
            handlers = frozenset(present)
        sender = _new_remote(
            Remote,
            (
                envelope.source,
                envelope.id,
                envelope.time,
                record.topic,
                record.partition,
                record.offset,
                self.bridge_id,
            ),
        )
        try:
            if envelope.traceparent is None:
                failures = self.bus.dispatch(envelope.type, sender, payload, handlers=handlers)
            else:
                with trace_context(envelope.traceparent, envelope.tracestate):
                    failures = self.bus.dispatch(envelope.type, sender, payload, handlers=handlers)
        except PayloadError as exc:
            reason = f"invalid payload: {exc}"
            return self._dead_letter(record, route, reason, "PayloadError", (), 0)
        if failures and not self._retry_or_dead_letter(record, route, envelope, failures):
            return False
        self.dedup.add(key)
        self._stats.handled += 1
        return True

    def _route_of(self, topic: str, name: str) -> Route | None:
        route = next((r for r in self.routes if r.topic == topic and r.matches(name)), None)
        if len(self._cache) > 10_000:  # hostile streams of made-up types
            self._cache.clear()
        self._cache[(topic, name)] = route
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
            if self.stopping.wait(delay):
                return False
            delay = min(delay * 2, self.max_backoff)
            attempts += 1
            self._stats.retried += 1
            failures = _retry(failures, envelope.traceparent, envelope.tracestate)
        if not failures:
            return True
        first = failures[0]
        reason = f"handler failed after {attempts} attempt(s): {first.exception!r}"
        if route.retry_delays and self.retries is not None:  # later, on a retry topic
            return self.retries.schedule(self, record, route, failures, reason)
        return self._dead_letter(
            record, route, reason, type(first.exception).__name__, failures, attempts
        )

    def _dead_letter(
        self,
        record: Record,
        route: Route | None,
        reason: str,
        error: str,
        failures: Sequence[HandlerFailure],
        attempts: int,
    ) -> bool:
        """Produce ``record`` with the reason to the dead-letter topic, without waiting.

        The delivery is confirmed before the record's offset is stored, so a flood of
        bad records costs one flush per batch, not one per record.
        """
        if route is None:
            route = next((r for r in self.routes if r.topic == record.topic), None)
            if route is None and self.retries is not None:
                route = self.retries.route_of(record.topic)
        topic = route.dead_letter_topic if route else f"{record.topic}.dlq"
        letter = self.dead_letters.letter(record, topic, reason, error, failures, attempts)
        self._letters.append(letter)
        return True


def _retry(
    failures: Sequence[HandlerFailure], parent: bytes | None, state: bytes | None
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
