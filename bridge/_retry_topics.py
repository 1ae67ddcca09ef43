"""Delayed retry topics: a failing record waits on a topic of its own, not in its partition.

A route with ``retry_delays`` (``Route.inbound(..., retry_delays=[10, 60, 600])``) sends a
record whose handlers still fail after the in-place attempts to the retry topic of the
first delay (``orders.retry.10s``), with headers saying when it is due; the main
partition goes on at once. The same bridge consumes its retry topics: a record that is
not due yet pauses its retry partition, rewound to it (``Consumer.pause``), and the
consumer loop resumes the partition once it is due; the consumer thread never sleeps
for it. When due, only the handlers that failed run (the record is a rerun, ``_rerun``);
if they fail again the record goes to the next delay's topic, and after the last delay
to the dead-letter topic, with the original topic, partition and offset.

Headers of a retry record, after the original ones (``eventbus-retry-*``): ``attempt``
(1 for the first delay), ``first-failure`` and ``due`` (milliseconds since the epoch),
``reason``, ``topic``, ``partition`` and ``offset`` (where it was first read); then the
rerun headers (service, failed handlers, id). A retry record's offset is stored only
once it was handled, or forwarded to the next topic and that delivery confirmed; the
original's only once its retry record is on the broker: a crash loses nothing.

Malformed or stale retry headers (a due time further than the topic's delay, an attempt
that does not belong to the topic, handlers no longer subscribed) send the record to
the dead-letter topic with the reason; they never crash the consumer or loop.

A retried record leaves its key's order by design: later records of the same key are
handled while it waits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from eventbus import HandlerFailure, PayloadError, handler_name

from ._dead_letters import where
from ._envelope import DLQ_PREFIX, Envelope, trace_context
from ._remote import Remote
from ._rerun import RERUN_PREFIX, RerunError, read_rerun, rerun_headers
from ._routes import Route
from ._transport import Record

if TYPE_CHECKING:
    from ._inbound import Inbound

log = logging.getLogger("bridge")

RETRY_PREFIX = "eventbus-retry-"
CLOCK_SKEW = 60.0
"""Seconds a due time may lie beyond a topic's delay (clocks of two hosts differ)."""


class Held:
    """The type of ``HELD``."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return True


HELD = Held()
"""What processing a retry record returns when it is not due: its partition is paused
at it, so neither it nor the records after it in the batch may be stored."""


class Retry(NamedTuple):
    """The retry headers of a record, checked."""

    attempt: int
    first_failure: int
    due: int
    reason: str
    topic: str
    partition: int
    offset: int


class RetryTopics:
    """The delayed retry topics of one bridge's inbound routes, and the paused partitions.

    Used by the consumer thread only (not thread safe). ``clock`` returns seconds since
    the epoch (tests pass their own).
    """

    def __init__(self, routes: Sequence[Route], clock: Callable[[], float] = time.time) -> None:
        self.routes = tuple(r for r in routes if r.retry_delays)
        self._by_topic: dict[str, Route] = {}
        for route in self.routes:
            for name in route.retry_topics:
                self._by_topic.setdefault(name, route)
        self.clock = clock
        self.paused: dict[tuple[str, int], float] = {}
        """Paused retry partitions and when their head record is due (epoch seconds)."""

    @property
    def topics(self) -> list[str]:
        """Every retry topic, each once."""
        return list(self._by_topic)

    def route_of(self, topic: str) -> Route | None:
        """The route whose retry topic ``topic`` is, or None."""
        return self._by_topic.get(topic)

    # -- sending a record to a retry topic ---------------------------------------------

    def schedule(
        self,
        inbound: Inbound,
        record: Record,
        route: Route,
        failures: Sequence[HandlerFailure],
        reason: str,
        previous: Retry | None = None,
    ) -> bool:
        """Send ``record`` to the retry topic after ``previous`` (the first without it),
        or to the dead-letter topic after the last; without waiting (confirmed with the
        batch, before its offset is stored). Always True."""
        attempt = previous.attempt + 1 if previous else 1
        now_ms = int(self.clock() * 1000)
        if attempt > len(route.retry_delays):
            assert previous is not None
            return self._dead_letter(
                inbound,
                record,
                route,
                f"{reason} (after {previous.attempt} delayed retries)",
                type(failures[0].exception).__name__ if failures else "retry",
                failures,
                previous,
            )
        delay = route.retry_delays[attempt - 1]
        topic = route.retry_topics[attempt - 1]
        origin = (
            (previous.topic, previous.partition, previous.offset)
            if previous
            else (record.topic, record.partition, record.offset)
        )
        headers = _plain(record.headers)
        headers += [
            (RETRY_PREFIX + "attempt", str(attempt).encode()),
            (
                RETRY_PREFIX + "first-failure",
                str(previous.first_failure if previous else now_ms).encode(),
            ),
            (RETRY_PREFIX + "due", str(now_ms + round(delay * 1000)).encode()),
            (RETRY_PREFIX + "reason", reason.encode(errors="replace")[:4096]),
            (RETRY_PREFIX + "topic", origin[0].encode()),
            (RETRY_PREFIX + "partition", str(origin[1]).encode()),
            (RETRY_PREFIX + "offset", str(origin[2]).encode()),
        ]
        names = list(dict.fromkeys(handler_name(f.handler) for f in failures)) or None
        rerun_id = f"retry{attempt}:{origin[0]}/{origin[1]}/{origin[2]}"
        headers += rerun_headers(inbound.service, names, rerun_id)
        log.info(
            "bridge %s: %s to %s (retry %d of %d, in %gs): %s",
            inbound.service,
            where(record),
            topic,
            attempt,
            len(route.retry_delays),
            delay,
            reason,
        )
        inbound._letters.append(inbound.dead_letters.forward(record, topic, headers))
        inbound._stats.retries_scheduled += 1
        return True

    # -- a record of a retry topic -------------------------------------------------------

    def handle(
        self, inbound: Inbound, record: Record, route: Route, envelope: Envelope, payload: Any
    ) -> bool | Held:
        """Process a record of one of the retry topics: wait for it, run its failed
        handlers, or send it on. ``HELD`` when it is not due (its partition is paused)."""
        try:
            retry = read_retry(record.headers)
            rerun = read_rerun(record.headers)
        except (RetryHeaderError, RerunError) as exc:
            return self._dead_letter(inbound, record, route, f"bad retry headers: {exc}", "retry")
        if rerun.service != inbound.service:
            inbound._stats.duplicates += 1  # another service's retry on a shared topic
            return True
        if not route.matches(envelope.type):
            reason = f"no inbound route for type {envelope.type!r} on {route.topic}"
            return self._dead_letter(inbound, record, route, reason, "unrouted", retry=retry)
        delays = route.retry_delays
        if (
            not 1 <= retry.attempt <= len(delays)
            or route.retry_topics[retry.attempt - 1] != record.topic
        ):
            reason = (
                f"stale retry headers: attempt {retry.attempt} does not belong to {record.topic}"
            )
            return self._dead_letter(inbound, record, route, reason, "retry", retry=retry)
        now = self.clock()
        due = retry.due / 1000
        if due - now > delays[retry.attempt - 1] + CLOCK_SKEW:
            reason = (
                f"stale retry headers: due in {due - now:.0f} s, more than the "
                f"{delays[retry.attempt - 1]:g} s of {record.topic}"
            )
            return self._dead_letter(inbound, record, route, reason, "retry", retry=retry)
        if due > now:
            inbound.consumer.pause(record)
            self.paused[(record.topic, record.partition)] = due
            return HELD
        inbound._stats.retries_due += 1
        key = f"{envelope.id}#{rerun.id}"
        if inbound.dedup.seen(key):
            inbound._stats.duplicates += 1
            return True
        handlers = rerun.handlers
        if handlers is not None:
            present = handlers.intersection(inbound.bus.handler_names(envelope.type))
            if not present:
                names = ", ".join(sorted(handlers))
                reason = f"stale retry headers: no handler to retry is subscribed: {names}"
                return self._dead_letter(inbound, record, route, reason, "retry", retry=retry)
            handlers = frozenset(present)
        sender = Remote(
            envelope.source,
            envelope.id,
            envelope.time,
            retry.topic,
            retry.partition,
            retry.offset,
            inbound.bridge_id,
        )
        try:
            if envelope.traceparent is None:
                failures = inbound.bus.dispatch(envelope.type, sender, payload, handlers=handlers)
            else:
                with trace_context(envelope.traceparent, envelope.tracestate):
                    failures = inbound.bus.dispatch(
                        envelope.type, sender, payload, handlers=handlers
                    )
        except PayloadError as exc:
            reason = f"invalid payload: {exc}"
            return self._dead_letter(inbound, record, route, reason, "PayloadError", retry=retry)
        if failures:
            reason = f"handler failed on retry {retry.attempt}: {failures[0].exception!r}"
            return self.schedule(inbound, record, route, failures, reason, retry)
        inbound.dedup.add(key)
        inbound._stats.handled += 1
        inbound._stats.retries_handled += 1
        return True

    def resume_due(self, inbound: Inbound) -> None:
        """Resume the paused retry partitions whose head record is due now."""
        now = self.clock()
        for tp, due in list(self.paused.items()):
            if due <= now:
                del self.paused[tp]
                inbound.consumer.resume(*tp)

    def _dead_letter(
        self,
        inbound: Inbound,
        record: Record,
        route: Route,
        reason: str,
        error: str,
        failures: Sequence[HandlerFailure] = (),
        retry: Retry | None = None,
    ) -> bool:
        origin = (retry.topic, retry.partition, retry.offset) if retry else None
        attempts = retry.attempt if retry else 0
        letter = inbound.dead_letters.letter(
            record, route.dead_letter_topic, reason, error, failures, attempts, origin=origin
        )
        inbound._letters.append(letter)
        return True


class RetryHeaderError(ValueError):
    """The retry headers of a record are malformed."""


def read_retry(headers: Sequence[tuple[str, bytes]]) -> Retry:
    """The retry headers of a record; ``RetryHeaderError`` saying what is wrong."""
    found = {name: value for name, value in headers if name.startswith(RETRY_PREFIX)}

    def number(name: str, low: int = 0) -> int:
        raw = found.get(RETRY_PREFIX + name)
        if not isinstance(raw, bytes) or not raw.isdigit() or len(raw) > 18:
            raise RetryHeaderError(f"header {RETRY_PREFIX}{name} is not a number")
        value = int(raw)
        if value < low:
            raise RetryHeaderError(f"header {RETRY_PREFIX}{name} is below {low}")
        return value

    raw_topic = found.get(RETRY_PREFIX + "topic")
    if not isinstance(raw_topic, bytes) or not raw_topic or len(raw_topic) > 249:
        raise RetryHeaderError(f"header {RETRY_PREFIX}topic is missing or too long")
    raw_reason = found.get(RETRY_PREFIX + "reason")
    return Retry(
        attempt=number("attempt", 1),
        first_failure=number("first-failure"),
        due=number("due"),
        reason=raw_reason.decode(errors="replace") if isinstance(raw_reason, bytes) else "",
        topic=raw_topic.decode(errors="replace"),
        partition=number("partition"),
        offset=number("offset"),
    )


def _plain(headers: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """``headers`` without retry, rerun and dead-letter headers (they are written anew)."""
    return [h for h in headers if not h[0].startswith((RETRY_PREFIX, RERUN_PREFIX, DLQ_PREFIX))]
