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

from eventbus import HandlerFailure, handler_name

from ._dead_letters import DeadLetter, where
from ._envelope import DLQ_PREFIX, Envelope
from ._errors import TransportError
from ._remote import Remote
from ._rerun import RERUN_PREFIX, RERUN_SERVICE, RerunError, read_rerun, rerun_headers
from ._routes import Route
from ._transport import Consumer, Record

if TYPE_CHECKING:
    from ._inbound import Inbound, Outcome, _Job

log = logging.getLogger("bridge")

RETRY_PREFIX = "eventbus-retry-"
CLOCK_SKEW = 60.0
"""Seconds a due time may lie beyond a topic's delay (clocks of two hosts differ)."""


class Retry(NamedTuple):
    """The retry headers of a record, checked."""

    attempt: int
    first_failure: int
    due: int
    reason: str
    topic: str
    partition: int
    offset: int


class Redo(NamedTuple):
    """A record to run again for some handlers: a rerun (replay) or a delayed retry."""

    key: str
    """The dedup key: ``<ce_id>#<rerun id>``."""
    handlers: frozenset[str] | None
    """The handlers to run (None: all)."""
    retry: Retry | None
    """The retry headers, for a record of a retry topic."""


class RetryTopics:
    """The delayed retry topics of one bridge's inbound routes, and the paused partitions.

    ``hold`` runs on the consumer thread; ``prepare`` and ``schedule`` on whichever thread
    handles the record (they keep no state). ``clock`` returns seconds since the epoch
    (tests pass their own).
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
    ) -> DeadLetter:
        """Send ``record`` to the retry topic after ``previous`` (the first without it),
        or to the dead-letter topic after the last; without waiting (the caller confirms
        the delivery before the record's offset is stored)."""
        attempt = previous.attempt + 1 if previous else 1
        now_ms = int(self.clock() * 1000)
        error = type(failures[0].exception).__name__ if failures else "retry"
        if attempt > len(route.retry_delays):
            reason = f"{reason} (after {attempt - 1} delayed retries)"
            return self._dead_letter(inbound, record, route, reason, error, failures, previous)
        delay = route.retry_delays[attempt - 1]
        topic = route.retry_topics[attempt - 1]
        if previous is not None:
            origin = (previous.topic, previous.partition, previous.offset)
            first = previous.first_failure
        else:
            origin = (record.topic, record.partition, record.offset)
            first = now_ms
        headers = _plain(record.headers)
        headers += [
            (RETRY_PREFIX + "attempt", str(attempt).encode()),
            (RETRY_PREFIX + "first-failure", str(first).encode()),
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
            "bridge %s: %s to %s (retry %d of %d, in %g s): %s",
            inbound.service,
            where(record),
            topic,
            attempt,
            len(route.retry_delays),
            delay,
            reason,
        )
        return inbound.dead_letters.forward(record, topic, headers)

    # -- records of the retry topics -----------------------------------------------------

    def hold(self, consumer: Consumer, records: list[Record], service: str) -> list[Record]:
        """Resume the paused retry partitions that came due; take out of ``records`` the
        retry records of this service that are not due, and every later record of their
        partition, pausing the partition and rewinding it to the first one held (the
        consumer thread only). Everything else is returned, in order."""
        if self.paused:
            now = self.clock()
            ripe = [tp for tp, at in self.paused.items() if at <= now]
            for tp in ripe:
                del self.paused[tp]
            if ripe:
                try:
                    consumer.resume(ripe)
                except TransportError as exc:  # revoked meanwhile: nothing to resume
                    log.debug("resuming retry partitions: %s", exc)
        by_topic = self._by_topic
        if not records or not any(r.topic in by_topic for r in records):
            return records
        now = self.clock()
        held: set[tuple[str, int]] = set()
        kept: list[Record] = []
        for record in records:
            tp = (record.topic, record.partition)
            if tp in held:
                continue  # after a held record of its partition: comes again after it
            route = by_topic.get(record.topic)
            due = _due(record, service) if route is not None else None
            if route is None or due is None or due <= now:
                kept.append(record)
                continue
            if due - now > max(route.retry_delays) + CLOCK_SKEW:
                kept.append(record)  # stale: dead-lettered with the reason by prepare()
                continue
            try:
                consumer.pause([tp])
                consumer.seek(record)
            except TransportError as exc:
                # Not assigned any more (its new owner reads it from the committed offset),
                # or the rewind failed: then it is run now rather than skipped.
                log.warning("bridge %s: cannot hold %s until due: %s", service, where(record), exc)
                kept.append(record)
                continue
            held.add(tp)
            self.paused[tp] = due
        return kept

    def prepare(
        self, inbound: Inbound, record: Record, route: Route, envelope: Envelope, payload: Any
    ) -> _Job | Outcome:
        """The job of running a due retry record's failed handlers (``Inbound._prepare``),
        or its outcome: skipped (another service's, already handled) or dead-lettered
        (malformed or stale headers)."""
        from ._inbound import DUPLICATE

        try:
            retry = read_retry(record.headers)
            rerun = read_rerun(record.headers)
        except (RetryHeaderError, RerunError) as exc:
            reason = f"bad retry headers: {exc}"
            return self._dead_letter(inbound, record, route, reason, "retry")
        if rerun.service != inbound.service:
            return DUPLICATE  # another service's retry on a shared topic
        if not route.matches(envelope.type):
            reason = f"no inbound route for type {envelope.type!r} on {route.topic}"
            return self._dead_letter(inbound, record, route, reason, "unrouted", retry=retry)
        delays = route.retry_delays
        if not 1 <= retry.attempt <= len(delays) or (
            route.retry_topics[retry.attempt - 1] != record.topic
        ):
            reason = (
                f"stale retry headers: attempt {retry.attempt} does not belong to {record.topic}"
            )
            return self._dead_letter(inbound, record, route, reason, "retry", retry=retry)
        ahead = retry.due / 1000 - self.clock()
        if ahead > delays[retry.attempt - 1] + CLOCK_SKEW:
            reason = (
                f"stale retry headers: due in {ahead:.0f} s, more than the "
                f"{delays[retry.attempt - 1]:g} s of {record.topic}"
            )
            return self._dead_letter(inbound, record, route, reason, "retry", retry=retry)
        inbound.count_retry("retries_due")
        key = f"{envelope.id}#{rerun.id}"
        if inbound.dedup.seen(key):
            return DUPLICATE
        handlers = inbound.subscribed(record, envelope.type, rerun.handlers)
        if handlers is not None and not handlers:
            names = ", ".join(sorted(rerun.handlers or ()))
            reason = f"stale retry headers: no handler to retry is subscribed: {names}"
            return self._dead_letter(inbound, record, route, reason, "retry", retry=retry)
        sender = Remote(
            envelope.source,
            envelope.id,
            envelope.time,
            retry.topic,
            retry.partition,
            retry.offset,
            inbound.bridge_id,
        )
        return (route, envelope, envelope.type, payload, sender, Redo(key, handlers, retry))

    def _dead_letter(
        self,
        inbound: Inbound,
        record: Record,
        route: Route,
        reason: str,
        error: str,
        failures: Sequence[HandlerFailure] = (),
        retry: Retry | None = None,
    ) -> DeadLetter:
        origin = (retry.topic, retry.partition, retry.offset) if retry else None
        attempts = retry.attempt if retry else 0
        return inbound.dead_letters.letter(
            record, route.dead_letter_topic, reason, error, failures, attempts, origin=origin
        )


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


def _due(record: Record, service: str) -> float | None:
    """When a retry record of ``service`` is due (seconds since the epoch); None when it is
    another service's, or its headers are malformed (``prepare`` says what is wrong)."""
    due = raw_service = None
    for name, value in record.headers:
        if name == RETRY_PREFIX + "due":
            due = value
        elif name == RERUN_SERVICE:
            raw_service = value
    if not isinstance(due, bytes) or not due.isdigit() or len(due) > 18:
        return None
    if not isinstance(raw_service, bytes) or raw_service != service.encode():
        return None
    return int(due) / 1000


def _plain(headers: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """``headers`` without retry, rerun and dead-letter headers (they are written anew)."""
    return [h for h in headers if not h[0].startswith((RETRY_PREFIX, RERUN_PREFIX, DLQ_PREFIX))]
