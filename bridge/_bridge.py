"""The bridge: mirrors chosen signals of a bus to Kafka topics and back.

``Bridge`` is the lifecycle: it checks the options, builds the two directions
(``_outbound.Outbound``: the publish path; ``_inbound.Inbound``: the consume path) and
starts and stops them in the right order.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from eventbus import EventBus

from ._codec import MsgpackCodec
from ._dead_letters import DeadLetters
from ._dedup import DedupStore, MemoryDedup
from ._errors import ConfigError, NotReadyError, TransportError
from ._formats import Readers
from ._inbound import Inbound
from ._outbound import DeliveryFailureCallback, Outbound
from ._retry_topics import RetryTopics
from ._routes import Route
from ._stats import Stats
from ._topic_config import DEAD_LETTER_TOPIC_CONFIG, normalize_topic_config, topic_config_problem
from ._tracing import tracing_for
from ._transport import Transport

if TYPE_CHECKING:
    from ._outbox_base import BaseOutbox

log = logging.getLogger("bridge")
_NO_CONFIG: Mapping[str, str] = MappingProxyType({})

NO_ASSIGNMENT = (
    "no partition assignment from group {group!r}: the group is rebalancing, or a member "
    "that crashed still holds the partitions until its session times out "
    "(session.timeout.ms); raise ready_timeout, or give each replica a stable "
    '"group.instance.id" (static membership) so that a restarted one takes them back at once'
)


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
    do records that cannot be decoded or validated. A route with ``retry_delays`` sends
    such a record to delayed retry topics first (``Route``; docs/reliability.md). Event
    ids seen within ``dedup_window`` seconds are dropped. Records of types no inbound
    route names are skipped (``unrouted="skip"``) or dead-lettered (``"dlq"``).

    Reliability options (docs/reliability.md): ``outbox``, the path of a SQLite file (or
    an ``Outbox``, or a ``SqlOutbox``: events written in the application's own database
    transaction), makes outbound durable: an emit returns once the event is stored
    there, a relay thread produces it and deletes it once delivered, so events survive a
    broker outage and a crash of the process (sent again on the next start; duplicates
    are possible). ``outbox_max_events`` bounds it: an emit then waits, then raises
    ``QueueFullError``. ``dedup_path``, a SQLite file, keeps the handled event ids across
    restarts (effectively-once handling of redelivered events within ``dedup_window``).

    Topics (``create_topics``): the missing route, retry and dead-letter topics are
    created at start with ``partitions``, ``replication_factor`` (None: the broker's) and
    the Kafka topic configs ``topic_config``; dead-letter topics ``dead_letter_topic_config``
    on top (default: 28 days' retention; docs/operations.md#topics-the-bridge-creates).

    Tracing (docs/operations.md#traces): with ``opentelemetry-api`` installed (the
    ``otel`` extra) and a tracer provider configured globally before the bridge is made,
    or given as ``tracer_provider``, each outbound record gets a PRODUCER span and each
    inbound record a CONSUMER span around its handlers (``bridge._tracing``).
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
        replication_factor: int | None = None,
        topic_config: Mapping[str, str | int | bool] = _NO_CONFIG,
        dead_letter_topic_config: Mapping[str, str | int | bool] = DEAD_LETTER_TOPIC_CONFIG,
        ready_timeout: float = 30.0,
        drain_timeout: float = 30.0,
        batch_size: int = 100,
        concurrency: int = 1,
        tracer_provider: Any = None,
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
        if partitions < 1 or batch_size < 1 or concurrency < 1:
            raise ConfigError("partitions, batch_size and concurrency must be at least 1")
        if replication_factor is not None and replication_factor < 1:
            raise ConfigError("replication_factor must be at least 1 (None: the broker's default)")
        self.topic_config = normalize_topic_config(topic_config)
        self.dead_letter_topic_config = normalize_topic_config(dead_letter_topic_config)
        for name, settings in (
            ("topic_config", self.topic_config),
            ("dead_letter_topic_config", self.dead_letter_topic_config),
        ):
            problem = topic_config_problem(settings)
            if problem:
                raise ConfigError(f"{name}: {problem}")
        self.bus = bus
        self.transport = transport
        self.service = service
        self.group = group or service
        # One limit: a value may be as large as a record the producer sends (and no more).
        self.codec = codec or MsgpackCodec(max_size=transport.max_record_size)
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.unrouted = unrouted
        self.on_delivery_failure = on_delivery_failure
        self.create_topics = create_topics
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.ready_timeout = ready_timeout
        self.drain_timeout = drain_timeout
        self.batch_size = batch_size
        self.concurrency = concurrency
        self._loop: asyncio.AbstractEventLoop | None = None
        self.id = str(uuid.uuid4())
        self._stats = Stats()
        self._stats_lock = threading.Lock()
        self._dedup: DedupStore = MemoryDedup(dedup_window, dedup_size)
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
        self._in_routes = tuple(r for r in self.routes if r.is_inbound)
        self._tracing = tracing_for(tracer_provider, bridge_id=self.id, group=self.group)
        Readers(self._in_routes, self.codec, bus.schema)  # bad format mixes fail here, not at start
        self._outbound = Outbound(
            bus,
            transport=transport,
            service=service,
            bridge_id=self.id,
            routes=self.routes,
            codec=self.codec,
            outbox=self._outbox,
            on_delivery_failure=on_delivery_failure,
            stats=self._stats,
            stats_lock=self._stats_lock,
            tracing=self._tracing,
        )
        self._inbound: Inbound | None = None
        self._stopping = threading.Event()
        self._dead_letters: DeadLetters | None = None
        self._state = "new"
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------

    def __enter__(self) -> Bridge:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def topics(self) -> list[str]:
        """Every topic the bridge uses: routes' topics, dead-letter and retry topics."""
        names = [r.topic for r in self.routes] + [r.dead_letter_topic for r in self._in_routes]
        names += [t for r in self._in_routes for t in r.retry_topics]
        return list(dict.fromkeys(names))

    def _create_topics(self, deadline: float) -> None:
        """Create the missing topics: ``partitions``, ``replication_factor`` and
        ``topic_config`` each; dead-letter topics ``dead_letter_topic_config`` on top."""
        letters = {r.dead_letter_topic for r in self._in_routes}
        routes = [t for t in self.topics if t not in letters]
        for topics, config in (
            (routes, self.topic_config),
            (
                [t for t in self.topics if t in letters],
                {
                    **self.topic_config,
                    **self.dead_letter_topic_config,
                },
            ),
        ):
            if topics:
                self.transport.ensure_topics(
                    topics,
                    self.partitions,
                    max(0.1, deadline - time.monotonic()),
                    replication_factor=self.replication_factor,
                    config=config,
                )

    @property
    def healthy(self) -> bool:
        """True while started and ready, neither the consumer nor the outbox relay died,
        and the outbox relay is not retrying a storage error (disk full)."""
        outbox = self._outbox
        return (
            self._state == "running"
            and self.ready
            and not self.failed
            and (outbox is None or outbox.problem is None)
        )

    @property
    def ready(self) -> bool:
        """True once the inbound partitions are assigned and positioned (at once without
        inbound routes): from then on every event published to an inbound topic is received."""
        inbound = self._inbound
        return not self._in_routes or (inbound is not None and inbound.ready.is_set())

    @property
    def failed(self) -> bool:
        """True once the consumer or the outbox relay died: the bridge needs a restart."""
        inbound = self._inbound
        return (inbound is not None and inbound.error is not None) or (
            self._outbox is not None and self._state == "running" and not self._outbox.alive
        )

    @property
    def stats(self) -> Stats:
        """This bridge's counters, current when read."""
        self._outbound.update_stats()
        return self._stats

    def start(self, *, wait: bool = True) -> None:
        """Connect, create missing topics, join the group; return when ready.

        After it returns, every event published to an inbound topic is received. Raises
        ``NotReadyError`` (and cleans up) if that takes longer than ``ready_timeout``.
        With ``wait=False`` it returns once the consumer is subscribed, without waiting
        for the group's assignment: ``ready`` says when it came (the daemon waits so, as
        long as the group needs, and logs why).
        """
        with self._lock:
            if self._state != "new":
                raise RuntimeError(f"a bridge starts once; this one is {self._state}")
            self._state = "starting"
        try:
            deadline = time.monotonic() + self.ready_timeout
            if self.create_topics:
                self._create_topics(deadline)
            self._outbound.open(self.topics, max(0.1, deadline - time.monotonic()))
            if self._in_routes:
                self._start_inbound(deadline if wait else None)
            self._outbound.attach()
            self._state = "running"
            log.info(
                "bridge %s ready: %d route(s), group %s", self.service, len(self.routes), self.group
            )
        except BaseException:
            self._shutdown()
            raise

    def _start_inbound(self, deadline: float | None) -> None:
        shared = self._outbound.producer if self._outbox is not None else None
        self._dead_letters = DeadLetters(
            self.service,
            self.transport,
            shared,
            drain_timeout=self.drain_timeout,
            backoff=self.backoff,
            max_backoff=self.max_backoff,
            stopping=self._stopping,
        )
        topics = list(dict.fromkeys(r.topic for r in self._in_routes))
        retry_topics = None
        if any(r.retry_delays for r in self._in_routes):
            retry_topics = RetryTopics(self._in_routes)
            topics += [t for t in retry_topics.topics if t not in topics]
        consumer = self.transport.consumer(self.group, topics, on_revoke=self._revoked)
        inbound = self._inbound = Inbound(
            self.bus,
            consumer=consumer,
            service=self.service,
            bridge_id=self.id,
            routes=self._in_routes,
            codec=self.codec,
            dedup=self._dedup,
            dead_letters=self._dead_letters,
            stats=self._stats,
            stats_lock=self._stats_lock,
            max_attempts=self.max_attempts,
            backoff=self.backoff,
            max_backoff=self.max_backoff,
            unrouted=self.unrouted,
            batch_size=self.batch_size,
            concurrency=self.concurrency,
            drain_timeout=self.drain_timeout,
            stopping=self._stopping,
            loop=self._loop,
            retry_topics=retry_topics,
            tracing=self._tracing,
        )
        inbound.start()
        if deadline is not None and not inbound.ready.wait(max(0.0, deadline - time.monotonic())):
            error = inbound.error
            raise NotReadyError(
                f"bridge {self.service!r} not ready within {self.ready_timeout:g} s: "
                + (f"{error}" if error else NO_ASSIGNMENT.format(group=self.group))
            )

    def _revoked(self, partitions: list[tuple[str, int]]) -> None:
        if self._inbound is not None:
            self._inbound.on_revoke(partitions)

    # -- asyncio ----------------------------------------------------------------------

    async def __aenter__(self) -> Bridge:
        await self.start_async()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_async()

    async def start_async(self) -> None:
        """``start()`` bound to the running event loop, without blocking it.

        Inbound handlers then run on this loop: async handlers are awaited on it (so they
        may use loop-bound resources such as a connection pool), sync handlers run on the
        bridge's worker pool, never on the loop. ``concurrency`` bounds both together.
        The consumer keeps its own thread.
        """
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.start)

    async def stop_async(self) -> None:
        """``stop()`` without blocking the running event loop (which keeps running the
        handlers being drained)."""
        await asyncio.to_thread(self.stop)

    def stop(self) -> None:
        """Stop mirroring; let the running handler finish; commit; flush; close.

        Idempotent. Events emitted after ``stop`` began are local only; an emit racing
        it raises ``BridgeError`` ("bridge ... is stopping"), so every emit that returned
        is delivered or reported. Returns within about ``drain_timeout`` (the whole
        drain's budget); records still undelivered then are reported as delivery
        failures.
        """
        loop = self._loop
        if loop is not None and loop.is_running() and _running_loop() is loop:
            raise RuntimeError(
                "stop() on the event loop the bridge runs its handlers on would block them: "
                "use 'await bridge.stop_async()' or 'async with bridge:'"
            )
        with self._lock:
            if self._state == "new":  # never started: release what the constructor opened
                self._state = "stopped"
                self._outbound.close(0)  # the outbox's database (and its lock)
                self._dedup.close()
                return
            if self._state == "stopped":
                return
            self._state = "stopping"
        self._shutdown()

    def _shutdown(self) -> None:
        # One budget for the whole drain: stop returns within about drain_timeout.
        deadline = time.monotonic() + self.drain_timeout
        self._outbound.detach()
        self._stopping.set()
        inbound = self._inbound
        if inbound is not None:
            inbound.stop()
            try:
                inbound.consumer.close()
            except TransportError as exc:
                log.error("bridge %s: closing the consumer failed: %s", self.service, exc)
        if self._dead_letters is not None:
            self._dead_letters.close(max(0.0, deadline - time.monotonic()))
        self._outbound.close(max(0.0, deadline - time.monotonic()))
        self._dedup.close()
        self._state = "stopped"
        log.info("bridge %s stopped", self.service)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
