"""The inbound direction: records from Kafka to the bus's handlers, at least once.

The walk of a record: the consumer thread reads it (``_consume``); ``_prepare`` decodes
it and drops echoes of this bridge, unrouted types and duplicates; the handlers run
(``bus.dispatch``, or ``bus.dispatch_async`` on the application's event loop) with a
``Remote`` sender; the handlers that failed are retried with backoff, and what still
fails is dead-lettered; only then does the record's offset count as done.

The consumer reads ahead and hands the records out partition by partition in turn
(``_interleave``): one partition's backlog does not hold the others back.

With ``concurrency=1`` (the default) the consumer thread does all of it, one record after
another, and stores each partition's offset once per batch. With ``concurrency=N``, up to
N records are handled at once on a worker pool (or as tasks on the event loop): records
with the same key (or, without a key, of the same partition) one at a time and in order,
different keys in parallel. The consumer thread then stores, per partition, only the
offset below which every record is done (the watermark), and pauses fetching while too
many records wait. A record is never committed unless every handler saw it or its dead
letter is on the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from eventbus import (
    EventBus,
    HandlerFailure,
    InvalidNameError,
    PayloadError,
    check_name,
    handler_name,
)

from ._codec import MsgpackCodec
from ._dead_letters import DeadLetter, DeadLetters, bounded_traceback, where
from ._dedup import DedupStore
from ._envelope import MSGPACK, Envelope, trace_context
from ._errors import DecodeError
from ._formats import Batched, Readers
from ._interleave import Interleaved
from ._remote import Remote
from ._rerun import RERUN_ID, RerunError, read_rerun
from ._retry_topics import Redo, RetryTopics
from ._routes import Route
from ._stats import RouteRetries, Stats
from ._transport import Consumer, Record

if TYPE_CHECKING:
    from ._tracing import Tracing

log = logging.getLogger("bridge")

# What happened to a record (an index into the counters), or the dead letter it became.
HANDLED, ECHO, UNROUTED, DUPLICATE, DEAD_LETTERED, RETRY_SCHEDULED, NOT_DONE = range(7)
"""``NOT_DONE``: the bridge stopped before the record was done; it is redelivered.
``RETRY_SCHEDULED``: sent to a delayed retry topic (``_retry_topics``)."""
Outcome: TypeAlias = int | DeadLetter
_COUNTERS = (
    "handled",
    "echoes",
    "unrouted",
    "duplicates",
    "dead_lettered",
    "retries_scheduled",
)

Partition: TypeAlias = tuple[str, int]
PAUSE_AFTER = 1.0
"""Seconds the handlers may keep the scheduler full before fetching is paused."""
_Key: TypeAlias = tuple[str, int, bytes | None]
"""What a record waits behind: its topic, partition and Kafka key."""
_Job: TypeAlias = tuple[Route, Envelope, str, Any, Remote, Redo | None]
"""``Redo``: a rerun or a delayed retry (some handlers only), else None."""
_new_remote = tuple.__new__


class Inbound:
    """Consumes the inbound ``routes`` of one bridge and runs the bus's handlers.

    ``loop``: an asyncio event loop to run the handlers on (async handlers awaited
    there, sync ones on the worker pool); None runs them on threads.
    """

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
        stats_lock: threading.Lock,
        max_attempts: int,
        backoff: float,
        max_backoff: float,
        unrouted: Literal["skip", "dlq"],
        batch_size: int,
        concurrency: int,
        drain_timeout: float,
        stopping: threading.Event,
        loop: asyncio.AbstractEventLoop | None = None,
        retry_topics: RetryTopics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.bus = bus
        self.consumer = Interleaved(consumer, batch_size)  # partitions in turn
        self.service = service
        self.bridge_id = bridge_id
        self.routes = tuple(r for r in routes if r.is_inbound)
        self.codec = codec
        self.readers = Readers(self.routes, codec, bus.schema)
        self._msgpack = codec.decode
        self.dedup = dedup
        self.dead_letters = dead_letters
        self._stats = stats
        self._stats_lock = stats_lock
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.unrouted = unrouted
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.drain_timeout = drain_timeout
        self.loop = loop
        self.retries = retry_topics  # delayed retry topics (_retry_topics), if any route has them
        for route in retry_topics.routes if retry_topics is not None else ():
            stats.retries_by_route.setdefault(route.topic, RouteRetries())
        self._cache: dict[tuple[str, str], Route | None] = {}
        self._thread: threading.Thread | None = None
        self.stopping = stopping
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.tracing = tracing
        if tracing is not None:  # a span around each record, in its thread or task
            self._process = tracing.processing(self._process)  # type: ignore[method-assign,assignment]
            self._process_async = tracing.processing_async(self._process_async)  # type: ignore[method-assign,assignment]
        self._scheduler: KeyScheduler | None = None
        if loop is not None or concurrency > 1:
            self._scheduler = KeyScheduler(self, concurrency, loop)

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Start the consumer thread; ``ready`` is set once partitions are assigned."""
        self._thread = threading.Thread(target=self._consume, name="bridge-consumer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish the records being handled (up to ``drain_timeout``); stop the thread.

        Records not started yet are left for redelivery; so is a record whose retries
        were waiting. Offsets are stored up to the watermark; ``consumer.close()``
        commits them.
        """
        self.stopping.set()
        if self._thread is not None:
            self._thread.join()
        if self._scheduler is not None:
            self._scheduler.close()

    def on_revoke(self, partitions: list[Partition]) -> None:
        """The transport's revocation callback: finish or abandon the records of
        ``partitions`` being handled, and store their watermarks (then committed); drop
        what was read ahead of them."""
        self.consumer.drop(partitions)
        if self._scheduler is not None:
            self._scheduler.revoke(partitions, self.drain_timeout)

    # -- the consume loop -------------------------------------------------------------

    def _consume(self) -> None:
        consumer = self.consumer
        scheduler = self._scheduler
        lag_due = 0.0
        try:
            while not self.stopping.is_set():
                if scheduler is None:
                    records = consumer.consume(self.batch_size, 0.1)
                else:
                    records = scheduler.fetch(consumer, self.batch_size)
                if not self.ready.is_set() and consumer.is_ready():
                    self.ready.set()
                if self.retries is not None:  # hold back retries not due; resume due ones
                    records = self.retries.hold(consumer, records, self.service)
                if records:
                    if scheduler is None:
                        self._handle_batch(records)
                    else:
                        scheduler.submit(records)
                now = time.monotonic()
                if now >= lag_due and self.ready.is_set():
                    self._stats.consumer_lag = consumer.lag()
                    lag_due = now + 1.0
            if scheduler is not None:
                scheduler.drain(self.drain_timeout)
        except BaseException as exc:
            self.error = exc
            log.exception("bridge %s: the consumer stopped", self.service)

    def _handle_batch(self, records: list[Record]) -> None:
        """``concurrency=1``: handle the records in order; store each partition's offset
        once per batch, for the last record done (the same at-least-once point as storing
        each one, at a fraction of the cost)."""
        done: dict[Partition, Record] = {}
        stopping = self.stopping
        process = self._process
        counts = [0] * len(_COUNTERS)
        letters: list[DeadLetter] = []
        received = 0
        for record in records:
            if stopping.is_set():
                break  # this record and the rest are redelivered
            received += 1
            try:
                outcome = process(record)
            except Exception as exc:  # a bug or a surprise must not stop the partition
                outcome = self._unexpected(record, exc)
            if outcome.__class__ is int:
                if outcome == NOT_DONE:
                    break  # stopping before the record was done: it is redelivered
                counts[outcome] += 1
            else:
                letters.append(outcome)  # type: ignore[arg-type]
            done[(record.topic, record.partition)] = record
        unconfirmed: set[Partition] = set()
        if letters:
            delivered, unconfirmed = self.dead_letters.confirm(letters)
            counts[DEAD_LETTERED] += delivered
            counts[RETRY_SCHEDULED] += self.count_scheduled(
                x.topic for x in letters if not x.counted and x.wait(0)
            )
        self.count(received, counts)
        store = self.consumer.store
        for partition, record in done.items():
            if partition not in unconfirmed:
                store(record)

    def count(self, received: int, counts: list[int]) -> None:
        """Add to the inbound counters (called by the consumer thread only)."""
        stats = self._stats
        stats.received += received
        for i, n in enumerate(counts):
            if n:
                setattr(stats, _COUNTERS[i], getattr(stats, _COUNTERS[i]) + n)

    # -- one record -------------------------------------------------------------------

    def _unexpected(self, record: Record, exc: Exception) -> Outcome:
        log.exception("bridge %s: unexpected error on %s", self.service, where(record))
        reason = f"unexpected error: {exc!r}"
        return self._dead_letter(record, None, reason, type(exc).__name__, (), 0)

    def _prepare(self, record: Record) -> _Job | Outcome | Batched:
        """Decode and route one record: the job of running its handlers, or the outcome
        when there is none to run (an echo, unrouted, a duplicate, a dead letter), or the
        events of a batch record."""
        try:
            envelope, payload = self.readers.read(record)  # decoded already, or None
            event_id, source, name, at, origin, _, _, content, extensions = envelope
            if origin == self.bridge_id:
                return ECHO
        except DecodeError as exc:
            return self._dead_letter(record, None, f"undecodable record: {exc}", "decode", (), 0)
        except Batched as batch:
            return batch
        topic = record.topic
        route = self._cache.get((topic, name))
        if route is None and (topic, name) not in self._cache:
            route = self._route_of(topic, name)
        if route is None:
            retries = self.retries
            if retries is not None and (retrying := retries.route_of(topic)) is not None:
                if payload is None:
                    try:
                        payload = self.readers.decode(record, envelope)
                    except DecodeError as exc:
                        reason = f"undecodable record: {exc}"
                        return self._dead_letter(record, retrying, reason, "decode", (), 0)
                return retries.prepare(self, record, retrying, envelope, payload)
            if self.unrouted == "dlq":
                reason = f"no inbound route for type {name!r} on this topic"
                return self._dead_letter(record, None, reason, "unrouted", (), 0)
            return UNROUTED
        if payload is None:  # routed before decoded: unrouted records are never decoded
            value = record.value
            try:
                if content is MSGPACK and value is not None:
                    payload = self._msgpack(value)  # binary mode, msgpack: the common case
                else:
                    payload = self.readers.decode(record, envelope)
            except DecodeError as exc:
                reason = f"undecodable record: {exc}"
                return self._dead_letter(record, route, reason, "decode", (), 0)
        headers = record.headers  # none at all in the json and go-micro formats
        if headers and headers[-1][0] == RERUN_ID:  # a replay: some handlers only (_rerun)
            return self._rerun(record, route, envelope, payload)
        if self.dedup.seen(event_id):
            return DUPLICATE
        sender = _new_remote(
            Remote,
            (
                source,
                event_id,
                at,
                topic,
                record.partition,
                record.offset,
                self.bridge_id,
                extensions,
            ),
        )
        return (route, envelope, name, payload, sender, None)

    def _rerun(
        self, record: Record, route: Route, envelope: Envelope, payload: Any
    ) -> _Job | Outcome:
        """A record sent again for this service's handlers that failed: the job of running
        those only. Skipped by other services; deduplicated by its own id (``_rerun``)."""
        try:
            rerun = read_rerun(record.headers)
        except RerunError as exc:
            return self._dead_letter(record, route, f"bad rerun headers: {exc}", "rerun", (), 0)
        if rerun.service != self.service:
            return DUPLICATE  # another service's handlers failed, not ours
        key = f"{envelope.id}#{rerun.id}"
        if self.dedup.seen(key):
            return DUPLICATE
        handlers = self.subscribed(record, envelope.type, rerun.handlers)
        if handlers is not None and not handlers:
            names = ", ".join(sorted(rerun.handlers or ()))
            reason = f"none of the handlers to rerun is subscribed: {names}"
            return self._dead_letter(record, route, reason, "rerun", (), 0)
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
                envelope.extensions,
            ),
        )
        return (route, envelope, envelope.type, payload, sender, Redo(key, handlers, None))

    def subscribed(
        self, record: Record, name: str, handlers: frozenset[str] | None
    ) -> frozenset[str] | None:
        """The ones of ``handlers`` still subscribed to ``name`` (None: all handlers)."""
        if handlers is None:
            return None
        present = handlers.intersection(self.bus.handler_names(name))
        if present and len(present) < len(handlers):
            log.warning(
                "bridge %s: %s: handler(s) to run again no longer subscribed: %s",
                self.service,
                where(record),
                ", ".join(sorted(handlers - present)),
            )
        return frozenset(present)

    def _process(self, record: Record) -> Outcome:
        """Process one record to the end on this thread. Never raises for bad input."""
        job = self._prepare(record)
        if job.__class__ is not tuple:
            if job.__class__ is Batched:
                return self._process_batch(job.records)
            return job  # type: ignore[return-value]
        route, envelope, name, payload, sender, redo = job
        traceparent = envelope.traceparent
        try:
            if redo is not None:
                with _maybe_trace(envelope):
                    failures = self.bus.dispatch(name, sender, payload, handlers=redo.handlers)
            elif traceparent is None:
                failures = self.bus.dispatch(name, sender, payload)
            else:
                with trace_context(traceparent, envelope.tracestate):
                    failures = self.bus.dispatch(name, sender, payload)
        except PayloadError as exc:
            return self._dead_letter(
                record, route, f"invalid payload: {exc}", "PayloadError", (), 0
            )
        if not failures and redo is None:
            self.dedup.add(envelope.id)
            return HANDLED
        attempts = 1
        delay = self.backoff
        while failures and attempts < self.max_attempts:
            self._log_attempt(record, failures, attempts)
            if self.stopping.wait(delay):
                return NOT_DONE
            delay = min(delay * 2, self.max_backoff)
            attempts += 1
            self._retried(attempts, failures)
            failures = _retry(failures, envelope)
        return self._finish(record, route, envelope, failures, attempts, redo)

    async def _process_async(self, record: Record, stopped: asyncio.Event) -> Outcome:
        """Process one record to the end on the event loop (``concurrency`` on a loop)."""
        job = self._prepare(record)
        if job.__class__ is not tuple:
            if job.__class__ is Batched:
                outcomes = []
                for event in job.records:
                    outcome = await self._process_async(event, stopped)
                    if outcome == NOT_DONE:
                        return NOT_DONE
                    outcomes.append(outcome)
                return await asyncio.to_thread(self._batch_done, outcomes)
            return job  # type: ignore[return-value]
        route, envelope, name, payload, sender, redo = job
        executor = self._scheduler.pool if self._scheduler is not None else None
        handlers = redo.handlers if redo is not None else None
        try:
            with _maybe_trace(envelope):
                failures = await self.bus.dispatch_async(
                    name, sender, payload, executor=executor, handlers=handlers
                )
        except PayloadError as exc:
            return self._dead_letter(
                record, route, f"invalid payload: {exc}", "PayloadError", (), 0
            )
        attempts = 1
        delay = self.backoff
        while failures and attempts < self.max_attempts:
            self._log_attempt(record, failures, attempts)
            try:
                await asyncio.wait_for(stopped.wait(), delay)
                return NOT_DONE
            except TimeoutError:
                pass
            delay = min(delay * 2, self.max_backoff)
            attempts += 1
            self._retried(attempts, failures)
            failures = await _retry_async(failures, envelope)
        return self._finish(record, route, envelope, failures, attempts, redo)

    def _process_batch(self, events: tuple[Record, ...]) -> Outcome:
        """The events of a batch record, in order, each like a record of its own (own
        id for dedup; a failed one is retried, or dead-lettered alone, as a record of
        that one event in structured mode); the batch's outcome once all are done."""
        outcomes: list[Outcome] = []
        for event in events:
            try:
                outcome = self._process(event)
            except Exception as exc:  # as for any record: the batch goes on
                outcome = self._unexpected(event, exc)
            if outcome == NOT_DONE:
                return NOT_DONE  # the batch record comes again; dedup skips handled events
            outcomes.append(outcome)
        return self._batch_done(outcomes)

    def _batch_done(self, outcomes: list[Outcome]) -> Outcome:
        """One outcome for a batch record whose events had ``outcomes``: its dead letters
        and retries confirmed first (NOT_DONE if they cannot be: the bridge is stopping).
        Counted as one record: a dead letter if an event was dead-lettered, else a retry
        if one went to a retry topic, else handled if one was handled."""
        letters = [x for x in outcomes if isinstance(x, DeadLetter)]
        if letters:
            _, unconfirmed = self.dead_letters.confirm(letters)
            if unconfirmed:
                return NOT_DONE
            self.count_scheduled(x.topic for x in letters if not x.counted)
        kinds = {
            x if isinstance(x, int) else DEAD_LETTERED if x.counted else RETRY_SCHEDULED
            for x in outcomes
        }
        for outcome in (DEAD_LETTERED, RETRY_SCHEDULED, HANDLED):
            if outcome in kinds:
                return outcome
        return min(kinds, default=UNROUTED)  # echoes, unrouted or duplicates only

    def _finish(
        self,
        record: Record,
        route: Route,
        envelope: Envelope,
        failures: list[HandlerFailure],
        attempts: int,
        redo: Redo | None = None,
    ) -> Outcome:
        if not failures:
            self.dedup.add(envelope.id if redo is None else redo.key)
            if redo is not None:
                if redo.retry is not None:
                    self.count_retry("retries_handled", route)
                else:
                    with self._stats_lock:
                        self._stats.replays_handled += 1
            return HANDLED
        first = failures[0]
        reason = f"handler failed after {attempts} attempt(s): {first.exception!r}"
        if route.retry_delays and self.retries is not None:  # later, on a retry topic
            retry = redo.retry if redo is not None else None
            return self.retries.schedule(self, record, route, failures, reason, retry)
        return self._dead_letter(
            record, route, reason, type(first.exception).__name__, failures, attempts
        )

    def _log_attempt(self, record: Record, failures: list[HandlerFailure], attempt: int) -> None:
        """At DEBUG, each failure of an attempt that will be retried, with its traceback
        (the last attempt's is logged with the dead letter)."""
        if log.isEnabledFor(logging.DEBUG):
            for failure in failures:
                log.debug(
                    "bridge %s: %s: attempt %d of %d failed in %s, retrying:\n%s",
                    self.service,
                    where(record),
                    attempt,
                    self.max_attempts,
                    handler_name(failure.handler),
                    bounded_traceback(failure.exception),
                )

    def _retried(self, attempt: int, failures: list[HandlerFailure]) -> None:
        """Count (and trace) that ``failures`` are tried again, as attempt ``attempt``."""
        with self._stats_lock:
            self._stats.retried += 1
        if self.tracing is not None:
            self.tracing.retrying(attempt, failures)

    def count_retry(self, counter: str, route: Route) -> None:
        """Add one to a delayed-retry counter of ``Stats``, in all and for ``route`` (any
        thread)."""
        stats = self._stats
        with self._stats_lock:
            setattr(stats, counter, getattr(stats, counter) + 1)
            of_route = stats.retries_by_route[route.topic]
            setattr(of_route, counter, getattr(of_route, counter) + 1)

    def count_scheduled(self, topics: Iterable[str]) -> int:
        """Count records confirmed on the retry topics ``topics`` for their routes (any
        thread); return how many (the caller adds them to the total with the outcomes)."""
        n = 0
        for topic in topics:
            route = self.retries.route_of(topic) if self.retries is not None else None
            if route is not None:
                with self._stats_lock:
                    self._stats.retries_by_route[route.topic].retries_scheduled += 1
            n += 1
        return n

    def _route_of(self, topic: str, name: str) -> Route | None:
        route = None
        if is_name(name):  # a foreign type no route maps to a signal name is unrouted
            route = next((r for r in self.routes if r.topic == topic and r.matches(name)), None)
        if len(self._cache) > 10_000:  # hostile streams of made-up types
            self._cache.clear()
        self._cache[(topic, name)] = route
        return route

    def _dead_letter(
        self,
        record: Record,
        route: Route | None,
        reason: str,
        error: str,
        failures: Sequence[HandlerFailure],
        attempts: int,
    ) -> DeadLetter:
        """Produce ``record`` with the reason to the dead-letter topic, without waiting.

        The caller confirms the delivery before the record's offset is stored (once per
        batch with ``concurrency=1``: a flood of bad records costs one flush per batch).
        """
        if route is None:
            route = next((r for r in self.routes if r.topic == record.topic), None)
            if route is None and self.retries is not None:
                route = self.retries.route_of(record.topic)
        topic = route.dead_letter_topic if route else f"{record.topic}.dlq"
        if self.tracing is not None:
            self.tracing.dead_lettered(topic, reason, error, failures, attempts)
        return self.dead_letters.letter(record, topic, reason, error, failures, attempts)


def is_name(text: str) -> bool:
    """True if ``text`` is a valid signal name."""
    try:
        check_name(text)
    except InvalidNameError:
        return False
    return True


def _maybe_trace(envelope: Envelope) -> contextlib.AbstractContextManager[None]:
    """The record's trace context around its handlers, when it has one."""
    if envelope.traceparent is None:
        return contextlib.nullcontext()
    return trace_context(envelope.traceparent, envelope.tracestate)


def _retry(failures: Sequence[HandlerFailure], envelope: Envelope) -> list[HandlerFailure]:
    """Run the failed handlers again; return those that failed again."""
    still: list[HandlerFailure] = []
    for failure in failures:
        try:
            with _maybe_trace(envelope):
                failure.retry()
        except Exception as exc:
            still.append(HandlerFailure(failure.event, failure.handler, exc, failure.retry))
    return still


async def _retry_async(
    failures: Sequence[HandlerFailure], envelope: Envelope
) -> list[HandlerFailure]:
    """``_retry`` for the failures of ``dispatch_async`` (their retry is awaitable)."""
    still: list[HandlerFailure] = []
    for failure in failures:
        try:
            with _maybe_trace(envelope):
                await failure.retry()
        except Exception as exc:
            still.append(HandlerFailure(failure.event, failure.handler, exc, failure.retry))
    return still


class KeyScheduler:
    """Key-ordered concurrency for one ``Inbound``, with per-partition offset watermarks.

    The consumer thread calls ``fetch``, ``submit``, ``revoke`` and ``drain``; the
    records run on a pool of ``concurrency`` threads, or as tasks on ``loop``. A record
    waits behind the earlier records of its key (its Kafka key within its partition, or
    its partition when it has none). Workers hand finished records back through a
    queue; the consumer thread moves each partition's watermark (the offset below which
    every record is done) and stores it. At most ``concurrency + batch_size`` records
    are taken and not done at a time (see ``fetch``).
    """

    def __init__(
        self, inbound: Inbound, concurrency: int, loop: asyncio.AbstractEventLoop | None
    ) -> None:
        self.inbound = inbound
        self.concurrency = concurrency
        self.loop = loop
        self._ready_keys: queue.SimpleQueue[_Key | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self.pool: ThreadPoolExecutor | None = None
        if loop is None:
            for n in range(concurrency):
                thread = threading.Thread(
                    target=self._work, name=f"bridge-handler-{n}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
        else:  # sync handlers of records run on the loop go to this pool
            self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="bridge-handler")
        self.high = concurrency + inbound.batch_size
        self._lock = threading.Lock()
        self._queues: dict[_Key, deque[tuple[Record, _Watermark]]] = {}
        self._running: dict[Partition, int] = {}  # records started, not done, per partition
        self._marks: dict[Partition, _Watermark] = {}  # consumer thread only
        self._finished: deque[tuple[_Watermark, list[tuple[Record, Outcome]], int]] = deque()
        self._unsettled = 0  # records finished since the last settle
        self._wake = threading.Event()  # ``_wake_at`` records finished and not settled
        self._wake_at = 1
        self._taken = 0  # records submitted and not settled (consumer thread only)
        self._waiting = 0  # keys submitted to the pool and not started yet
        self._paused: set[Partition] = set()
        self._full_since: float | None = None
        self._slots: asyncio.Semaphore | None = None
        self._stopped: asyncio.Event | None = None
        if loop is not None:
            asyncio.run_coroutine_threadsafe(self._bind_loop(), loop).result()

    async def _bind_loop(self) -> None:
        self._slots = asyncio.Semaphore(self.concurrency)
        self._stopped = asyncio.Event()

    # -- the consumer thread's side ------------------------------------------------------

    def fetch(self, consumer: Consumer, batch_size: int) -> list[Record]:
        """Settle finished records; return the next records, as many as there is room for.

        When ``concurrency + batch_size`` records are taken and not done, wait for one to
        finish (a condition, not a sleep). librdkafka keeps prefetching meanwhile, within
        its own bounds (``queued.max.messages.kbytes``). If the handlers stay that busy
        for ``PAUSE_AFTER`` seconds, pause the partitions (which drops librdkafka's
        prefetched records, and costs up to ``fetch.wait.max.ms`` when resumed) and keep
        polling for rebalances and liveness; resume at half.
        """
        self.settle()
        room = self.high - self._taken
        if room <= 0:
            now = time.monotonic()
            if self._full_since is None:
                self._full_since = now
            if now - self._full_since < PAUSE_AFTER and not self._paused:
                # Wake for a quarter of the room at once, not for every record: fewer
                # trips of the consumer thread through the GIL.
                self._wait_finished(max(1, self.high // 4), PAUSE_AFTER - (now - self._full_since))
                return []
            missing = [tp for tp in consumer.assignment() if tp not in self._paused]
            if missing:
                consumer.pause(missing)
                self._paused.update(missing)
            self._wait_finished(max(1, self.high // 4), 0.1)
            # Keep the poll cadence (rebalances, liveness). Partitions assigned inside this
            # call are not paused yet: what it returns of them is handled, not dropped.
            return consumer.consume(batch_size, 0)
        self._full_since = None
        if self._paused and self._taken <= self.high // 2:
            assigned = set(consumer.assignment())
            consumer.resume([tp for tp in self._paused if tp in assigned])
            self._paused.clear()
        return consumer.consume(min(batch_size, room), 0.1 if not self._taken else 0.01)

    def _wait_finished(self, count: int, timeout: float) -> None:
        """Wait until ``count`` records finished since the last settle, or ``timeout``."""
        self._wake_at = count
        if self._unsettled < count:
            self._wake.wait(timeout)
        self._wake.clear()

    def submit(self, records: list[Record]) -> None:
        """Queue records behind their keys; start a worker for each key that was idle."""
        marks = self._marks
        start: list[_Key] = []
        with self._lock:
            queues = self._queues
            for record in records:
                tp = (record.topic, record.partition)
                mark = marks.get(tp)
                if mark is None:
                    mark = marks[tp] = _Watermark(tp)
                mark.track(record)
                key = (record.topic, record.partition, record.key)
                queue = queues.get(key)
                if queue is None:
                    queues[key] = deque(((record, mark),))
                    start.append(key)
                else:
                    queue.append((record, mark))
        self._taken += len(records)
        self.inbound._stats.received += len(records)
        for key in start:
            self._start(key)

    def settle(self) -> None:
        """Count finished records, move the watermarks, store the offsets they reached."""
        finished = self._finished
        if not finished:
            return
        with self._lock:
            self._unsettled = 0
        marks = self._marks
        moved: list[_Watermark] = []
        counts = [0] * len(_COUNTERS)
        while finished:
            mark, results, abandoned = finished.popleft()
            self._taken -= len(results) + abandoned
            live = marks.get(mark.partition) is mark  # not revoked meanwhile
            for record, outcome in results:
                if outcome.__class__ is int:
                    if outcome == NOT_DONE:
                        continue  # stays below the watermark: redelivered
                    counts[outcome] += 1
                if live:
                    mark.done(record)
            if live:
                moved.append(mark)
        self.inbound.count(0, counts)
        store = self.inbound.consumer.store
        for mark in moved:
            last = mark.take_stored()
            if last is not None:
                store(last)

    def revoke(self, partitions: list[Partition], timeout: float) -> None:
        """Drop the queued records of ``partitions``, wait (up to ``timeout``) for the
        running ones, store the watermarks reached, forget the partitions."""
        gone = {tp for tp in partitions if tp in self._marks}
        if not gone:
            return
        for tp in gone:
            self._marks[tp].gone = True  # workers start no more records of these
        dropped = 0
        with self._lock:
            for key, queue in self._queues.items():
                if key[:2] in gone:
                    dropped += len(queue)
                    queue.clear()
        self._taken -= dropped
        deadline = time.monotonic() + timeout
        while any(self._running.get(tp) for tp in gone) and time.monotonic() < deadline:
            self._wait_finished(1, 0.05)
            self.settle()
        self.settle()
        abandoned = sum(self._running.get(tp, 0) for tp in gone)
        if abandoned:
            log.warning(
                "bridge %s: %d record(s) of revoked partitions still running after %g s:"
                " not committed",
                self.inbound.service,
                abandoned,
                timeout,
            )
        for tp in gone:
            self._marks.pop(tp).gone = True
            self._paused.discard(tp)

    def drain(self, timeout: float) -> None:
        """At stop: drop what has not started, wait for what runs, store the watermarks."""
        if self.loop is not None and self._stopped is not None:
            self.loop.call_soon_threadsafe(self._stopped.set)  # ends retry waits
        self.revoke(list(self._marks), timeout)

    def close(self) -> None:
        """Let the worker threads end (a handler still running past the drain finishes
        on its own, its record uncommitted)."""
        for _ in self._threads:
            self._ready_keys.put(None)
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    # -- the workers' side ------------------------------------------------------------

    def _start(self, key: _Key) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._spawn_task, key)
            return
        with self._lock:
            self._waiting += 1
        self._ready_keys.put(key)

    def _work(self) -> None:
        """A worker thread: runs the keys put in ``_ready_keys`` until it gets None."""
        ready = self._ready_keys
        while (key := ready.get()) is not None:
            try:
                self._run_next(key)
            except BaseException:  # a bug here must not end the thread silently
                log.exception("bridge %s: handler worker failed", self.inbound.service)

    def _take(self, key: _Key, most: int) -> list[tuple[Record, _Watermark]]:
        """Up to ``most`` next records of ``key``; none (and the key is idle) when there
        are none or the bridge is stopping (what has not started is redelivered)."""
        with self._lock:
            queue = self._queues[key]
            if not queue or self.inbound.stopping.is_set():
                del self._queues[key]
                return []
            if most >= len(queue):
                items = list(queue)
                queue.clear()
            else:
                items = [queue.popleft() for _ in range(most)]
            tp = key[:2]
            self._running[tp] = self._running.get(tp, 0) + len(items)
            return items

    def _done(
        self, mark: _Watermark, results: list[tuple[Record, Outcome]], abandoned: int
    ) -> None:
        """Hand finished records (and the number of taken ones not started) back."""
        with self._lock:
            self._running[mark.partition] -= len(results) + abandoned
            self._unsettled += len(results)
            wake = self._unsettled >= self._wake_at
        self._finished.append((mark, results, abandoned))
        if wake:
            self._wake.set()

    def _run_next(self, key: _Key) -> None:
        """The records of ``key`` on a worker thread, in order: all that are queued, taken
        at once (at most ``concurrency + batch_size``: the bound of the queue). Then, while
        other keys wait for a thread, the key goes to the back of the line."""
        with self._lock:
            self._waiting -= 1
        inbound = self.inbound
        stopping = inbound.stopping
        process = inbound._process
        while True:
            items = self._take(key, inbound.batch_size)
            if not items:
                return
            mark = items[0][1]
            results: list[tuple[Record, Outcome]] = []
            for record, _ in items:
                if stopping.is_set() or mark.gone:
                    break  # the rest is redelivered (or read by the partition's new owner)
                try:
                    outcome = process(record)
                except Exception as exc:
                    outcome = inbound._unexpected(record, exc)
                if outcome.__class__ is not int:
                    outcome = self._confirmed(outcome)
                results.append((record, outcome))
            self._done(mark, results, len(items) - len(results))
            if self._waiting:
                self._start(key)
                return

    def _confirmed(self, outcome: Outcome) -> Outcome:
        """Wait for a dead letter's (or a retry record's) delivery: DEAD_LETTERED or
        RETRY_SCHEDULED, or NOT_DONE when the bridge stops first."""
        if outcome.__class__ is int:
            return outcome
        letter: DeadLetter = outcome  # type: ignore[assignment]
        delivered, unconfirmed = self.inbound.dead_letters.confirm([letter])
        if unconfirmed or (letter.counted and not delivered):
            return NOT_DONE
        if letter.counted:
            return DEAD_LETTERED
        self.inbound.count_scheduled((letter.topic,))
        return RETRY_SCHEDULED

    def _spawn_task(self, key: _Key) -> None:
        assert self.loop is not None
        self.loop.create_task(self._run_key(key))

    async def _run_key(self, key: _Key) -> None:
        """The records of ``key``, one at a time, as a task on the event loop."""
        slots, stopped = self._slots, self._stopped
        assert slots is not None and stopped is not None
        inbound = self.inbound
        while True:
            async with slots:
                items = self._take(key, 1)
                if not items:
                    return
                [(record, mark)] = items
                if mark.gone:
                    self._done(mark, [], 1)
                    continue
                try:
                    outcome = await inbound._process_async(record, stopped)
                except Exception as exc:
                    outcome = inbound._unexpected(record, exc)
                if outcome.__class__ is not int:
                    outcome = await asyncio.to_thread(self._confirmed, outcome)
            self._done(mark, [(record, outcome)], 0)


class _Watermark:
    """The records of one partition taken and not yet settled, in offset order; the
    last record below which every one is done is the offset to store. ``gone``: the
    partition was revoked (or the bridge stopped): start none of its records."""

    __slots__ = ("_done", "_last", "_pending", "gone", "partition")

    def __init__(self, partition: Partition) -> None:
        self.partition = partition
        self.gone = False
        self._pending: deque[Record] = deque()
        self._done: set[int] = set()
        self._last: Record | None = None

    def track(self, record: Record) -> None:
        self._pending.append(record)

    def done(self, record: Record) -> None:
        pending, done = self._pending, self._done
        if not done and pending and pending[0].offset == record.offset:
            self._last = pending.popleft()  # in order: the common case
            return
        done.add(record.offset)
        while pending and pending[0].offset in done:
            last = pending.popleft()
            done.discard(last.offset)
            self._last = last

    def take_stored(self) -> Record | None:
        """The record whose offset to store now (once), or None if the mark did not move."""
        last, self._last = self._last, None
        return last
