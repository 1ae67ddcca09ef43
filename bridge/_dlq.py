"""Dead-letter topics read back: what is in them, and sending records again.

The operator's side of ``_dead_letters`` (``eventbus-bridge dlq ls|show|replay``):

* ``read_dead_letter`` decodes one dead letter (envelope, payload, ``eventbus-dlq-*``
  headers) and never raises: what cannot be decoded is reported in ``problem``;
* ``Selection`` is the filters (type, reason, handler, time, partition and offsets);
* ``TopicReader`` reads a topic as a consumer group from the group's position (or, with
  no group, from the start without a trace on the broker) up to the end offsets taken
  when it starts, so a read ends, and a dead letter written meanwhile (by the replay
  itself, say) waits for the next one;
* ``summarize`` counts a topic's dead letters (``dlq ls``);
* ``Replay`` sends the selected dead letters again, to their original topic or straight
  to the service's handlers, as a consumer group of its own: an interrupted replay run
  again continues after the last record it finished;
* ``plan_purge`` and ``purge`` delete dead letters from the start of a topic (all, or
  up to a time or an offset): Kafka cuts a log from its start only.

A replayed record is a rerun (``_rerun``): only the handlers that failed run again, and
the bridges of other services skip it. Nothing decoded from a record is executed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from eventbus import EventBus, HandlerFailure, PayloadError, compile_pattern

from ._codec import MsgpackCodec
from ._dead_letters import DeadLetter, DeadLetters
from ._envelope import DLQ_PREFIX, Envelope, read_envelope, trace_context
from ._errors import DecodeError, TransportError
from ._remote import Remote
from ._rerun import rerun_headers, without_rerun
from ._retry_topics import RETRY_PREFIX
from ._transport import Consumer, Record, Transport

log = logging.getLogger("bridge.dlq")

REPLAY_GROUP_PREFIX = "eventbus-bridge-replay."
Target = Literal["topic", "handlers"]


@dataclass(frozen=True, slots=True)
class DeadLetterInfo:
    """One dead letter, decoded as far as it can be."""

    record: Record
    envelope: Envelope | None
    payload: Any
    problem: str | None
    """Why the envelope or the payload could not be decoded, else None."""
    reason: str
    error: str
    handlers: tuple[str, ...]
    service: str | None
    topic: str | None
    """The topic the record was first read from (``eventbus-dlq-topic``)."""
    partition: int | None
    offset: int | None
    attempts: int | None
    traceback: str | None

    @property
    def type(self) -> str | None:
        return self.envelope.type if self.envelope is not None else None

    @property
    def dead_lettered_at(self) -> float | None:
        """When it was dead-lettered (the record's timestamp), in seconds since the epoch."""
        ms = self.record.timestamp_ms
        return ms / 1000 if ms is not None else None

    def as_json(self) -> dict[str, Any]:
        """Every field as JSON-ready values; headers as text (bytes that are not UTF-8
        as ``base64:...``)."""
        record = self.record
        envelope = self.envelope
        return {
            "dlq_topic": record.topic,
            "dlq_partition": record.partition,
            "dlq_offset": record.offset,
            "dead_lettered_at": _iso(self.dead_lettered_at),
            "type": self.type,
            "id": envelope.id if envelope else None,
            "source": envelope.source if envelope else None,
            "time": envelope.time if envelope else None,
            "key": _text(record.key),
            "reason": self.reason,
            "error": self.error,
            "handlers": list(self.handlers),
            "service": self.service,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "attempts": self.attempts,
            "payload": self.payload,
            "problem": self.problem,
            "traceback": self.traceback,
            "headers": [[name, _text(value)] for name, value in record.headers],
        }


def read_dead_letter(record: Record, codec: MsgpackCodec) -> DeadLetterInfo:
    """Decode a dead letter; never raises (what fails to decode is in ``problem``)."""
    found: dict[str, bytes] = {}
    for name, value in record.headers:
        if isinstance(name, str) and isinstance(value, bytes):
            found[name] = value

    def text(name: str) -> str | None:
        raw = found.get(DLQ_PREFIX + name)
        return raw.decode(errors="replace") if raw is not None else None

    def number(name: str) -> int | None:
        raw = text(name)
        return int(raw) if raw is not None and raw.strip().lstrip("-").isdigit() else None

    envelope: Envelope | None = None
    payload: Any = None
    problem: str | None = None
    try:
        envelope = read_envelope(record)
        payload = codec.decode(record.value if record.value is not None else b"")
    except DecodeError as exc:
        problem = str(exc)
    handlers: tuple[str, ...] = ()
    raw = found.get(DLQ_PREFIX + "handlers")
    if raw is not None:
        try:
            names = json.loads(raw)
        except ValueError:
            names = None
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            handlers = tuple(names)
    elif text("handler"):
        handlers = (text("handler") or "",)
    return DeadLetterInfo(
        record=record,
        envelope=envelope,
        payload=payload,
        problem=problem,
        reason=text("reason") or "",
        error=text("error") or "",
        handlers=handlers,
        service=text("service"),
        topic=text("topic"),
        partition=number("partition"),
        offset=number("offset"),
        attempts=number("attempts"),
        traceback=text("traceback"),
    )


@dataclass(frozen=True)
class Selection:
    """Which dead letters a command applies to; every given filter must match.

    ``types``: event types or patterns (``order.*``); ``reasons``: text found in the
    reason, or the error's name (``ValueError``, ``decode``); ``handlers``: a handler's
    dotted name or its last parts (``shipping.on_order``); ``since``/``until``: when it
    was dead-lettered, seconds since the epoch (``until`` excluded); ``partition``,
    ``from_offset``, ``to_offset``: dead-letter topic coordinates (``to_offset`` included).
    """

    types: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    handlers: tuple[str, ...] = ()
    since: float | None = None
    until: float | None = None
    partition: int | None = None
    from_offset: int | None = None
    to_offset: int | None = None

    def matches(self, info: DeadLetterInfo) -> bool:
        record = info.record
        if self.partition is not None and record.partition != self.partition:
            return False
        if self.from_offset is not None and record.offset < self.from_offset:
            return False
        if self.to_offset is not None and record.offset > self.to_offset:
            return False
        at = info.dead_lettered_at
        if self.since is not None and (at is None or at < self.since):
            return False
        if self.until is not None and (at is None or at >= self.until):
            return False
        if self.types:
            name = info.type
            if name is None or not any(_type_matches(t, name) for t in self.types):
                return False
        if self.reasons and not any(r in info.reason or r == info.error for r in self.reasons):
            return False
        return not self.handlers or any(
            h == name or name.endswith("." + h) for h in self.handlers for name in info.handlers
        )

    def fingerprint(self) -> str:
        """A short stable digest of the filters (part of a replay's default name)."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


def _type_matches(pattern: str, name: str) -> bool:
    return compile_pattern(pattern)(name) if "*" in pattern else pattern == name


class TopicReader:
    """Reads ``topic`` as a member of ``group`` up to the end offsets it finds at the start.

    Iterate over it for the records; ``store`` marks one done (committed by ``commit`` and
    on ``close``). A new group starts at the beginning of the topic. ``group`` None: from
    the beginning in no group (``Transport.reader``): nothing committed, no group left on
    the broker (``dlq ls``, ``show``, ``purge``). ``TransportError``
    when the broker does not answer, or no record comes for ``timeout`` seconds while
    some are still due. Stops early once ``stop`` is set. Use it as a context manager.
    """

    def __init__(
        self,
        transport: Transport,
        topic: str,
        group: str | None,
        *,
        timeout: float = 10.0,
        stop: threading.Event | None = None,
    ) -> None:
        partitions = transport.list_topics(timeout=timeout).get(topic)
        if partitions is None:
            raise TransportError(f"topic {topic!r} does not exist")
        self.topic = topic
        self.timeout = timeout
        self._transport = transport
        self._stop = stop or threading.Event()
        self._consumer: Consumer = (
            transport.reader(topic, from_beginning=True)
            if group is None
            else transport.consumer(group, [topic], from_beginning=True)
        )
        self.ends: dict[int, int] = {}
        self.starts: dict[int, int] = {}
        try:
            self._join(partitions)
        except BaseException:
            self._consumer.close()
            raise

    def _join(self, partitions: int) -> None:
        consumer = self._consumer
        deadline = time.monotonic() + self.timeout
        wanted = {(self.topic, p) for p in range(partitions)}
        while not (consumer.is_ready() and wanted <= set(consumer.assignment())):
            if time.monotonic() > deadline:
                raise TransportError(
                    f"{self.topic}: not all {partitions} partition(s) assigned within "
                    f"{self.timeout:g} s (is another replay of the same name running?)"
                )
            record = consumer.poll(0.1)
            if record is not None:  # a partition assigned before the others: read it again
                consumer.seek(record)
        marks = self._transport.watermarks(self.topic, self.timeout)
        for partition in range(partitions):
            self.ends[partition] = marks[partition][1]
            self.starts[partition] = consumer.position(self.topic, partition) or 0

    @property
    def pending(self) -> int:
        """Records from the group's start positions to the end offsets."""
        return sum(max(0, self.ends[p] - self.starts[p]) for p in self.ends)

    def _done(self) -> bool:
        consumer = self._consumer
        return all((consumer.position(self.topic, p) or 0) >= end for p, end in self.ends.items())

    def __iter__(self) -> Iterator[Record]:
        consumer = self._consumer
        deadline = time.monotonic() + self.timeout
        while not self._stop.is_set() and not self._done():
            record = consumer.poll(0.2)
            if record is None:
                if time.monotonic() > deadline:
                    raise TransportError(
                        f"{self.topic}: no record for {self.timeout:g} s before the end offsets"
                    )
                continue
            deadline = time.monotonic() + self.timeout
            if record.offset < self.ends.get(record.partition, 0):
                yield record

    def store(self, record: Record) -> None:
        self._consumer.store(record)

    def commit(self) -> None:
        self._consumer.commit()

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_topic(
    transport: Transport,
    topic: str,
    codec: MsgpackCodec,
    *,
    timeout: float = 10.0,
    stop: threading.Event | None = None,
) -> Iterator[DeadLetterInfo]:
    """Every dead letter of ``topic`` now, oldest first per partition (in no group)."""
    with TopicReader(transport, topic, None, timeout=timeout, stop=stop) as reader:
        for record in reader:
            yield read_dead_letter(record, codec)


@dataclass
class Summary:
    """What ``dlq ls`` prints for one dead-letter topic."""

    topic: str
    count: int = 0
    types: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    handlers: Counter[str] = field(default_factory=Counter)
    services: Counter[str] = field(default_factory=Counter)
    oldest: float | None = None
    newest: float | None = None

    def add(self, info: DeadLetterInfo) -> None:
        self.count += 1
        self.types[info.type or "(undecodable)"] += 1
        self.reasons[info.error or "(none)"] += 1
        for name in info.handlers:
            self.handlers[name] += 1
        self.services[info.service or "(unknown)"] += 1
        at = info.dead_lettered_at
        if at is not None:
            self.oldest = at if self.oldest is None else min(self.oldest, at)
            self.newest = at if self.newest is None else max(self.newest, at)

    def as_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "count": self.count,
            "types": dict(self.types.most_common()),
            "reasons": dict(self.reasons.most_common()),
            "handlers": dict(self.handlers.most_common()),
            "services": dict(self.services.most_common()),
            "oldest": _iso(self.oldest),
            "newest": _iso(self.newest),
        }


def summarize(
    transport: Transport,
    topic: str,
    codec: MsgpackCodec,
    selection: Selection = Selection(),
    *,
    timeout: float = 10.0,
) -> Summary:
    """Count the dead letters of ``topic`` that ``selection`` matches."""
    summary = Summary(topic)
    for info in read_topic(transport, topic, codec, timeout=timeout):
        if selection.matches(info):
            summary.add(info)
    return summary


@dataclass
class ReplayProgress:
    """Counts of a replay so far (handed to the progress callback, and the result)."""

    name: str
    group: str
    pending: int
    """Records between the replay group's position and the end offsets, at the start."""
    read: int = 0
    matched: int = 0
    replayed: int = 0
    failed: int = 0
    """Replayed to the handlers and failed again: dead-lettered again, with the reason."""
    skipped: int = 0
    """Selected but not replayable (undecodable, no original topic, another service)."""
    dry_run: bool = False
    finished: bool = False


class Replay:
    """Sends the dead letters of ``topic`` that ``selection`` matches again.

    ``target="topic"`` produces each to its original topic (``to_topic`` overrides it) as
    a rerun of the service that dead-lettered it. ``target="handlers"`` runs the handlers
    of ``bus`` that failed (all of them when none is recorded) in this process, for
    dead letters of ``service`` only; one that fails again is dead-lettered again to
    ``topic``, with the new reason. ``dry_run`` counts and reports, sends nothing and
    moves no position.

    The replay is the consumer group ``eventbus-bridge-replay.<topic>.<name>``; ``name``
    defaults to a digest of the topic, target and selection, so the same command run
    again resumes an interrupted replay: records are committed once their replay is
    confirmed (in batches of ``batch_size``, and when stopped). ``stop`` ends it after
    the current record.
    """

    def __init__(
        self,
        transport: Transport,
        topic: str,
        *,
        target: Target = "topic",
        selection: Selection = Selection(),
        to_topic: str | None = None,
        bus: EventBus | None = None,
        service: str | None = None,
        name: str | None = None,
        codec: MsgpackCodec | None = None,
        dry_run: bool = False,
        batch_size: int = 100,
        timeout: float = 10.0,
        stop: threading.Event | None = None,
        progress: Callable[[ReplayProgress], None] | None = None,
    ) -> None:
        if target not in ("topic", "handlers"):
            raise ValueError("target must be 'topic' or 'handlers'")
        if target == "handlers" and (bus is None or not service):
            raise ValueError("a replay to the handlers needs the bus and the service name")
        self.transport = transport
        self.topic = topic
        self.target = target
        self.selection = selection
        self.to_topic = to_topic
        self.bus = bus
        self.service = service
        self.codec = codec or MsgpackCodec()
        self.dry_run = dry_run
        self.batch_size = batch_size
        self.timeout = timeout
        self.stop = stop or threading.Event()
        self.progress = progress
        self.name = name or f"{target}-{to_topic or ''}-{selection.fingerprint()}".replace(
            "--", "-"
        )
        self.group = f"{REPLAY_GROUP_PREFIX}{topic}.{self.name}"

    def run(self) -> ReplayProgress:
        """Replay; return the counts. ``TransportError`` when the broker fails for good."""
        with TopicReader(
            self.transport, self.topic, self.group, timeout=self.timeout, stop=self.stop
        ) as reader:
            state = ReplayProgress(self.name, self.group, reader.pending, dry_run=self.dry_run)
            if self.progress is not None:
                self.progress(state)  # the count to read, before the first record
            sender = _Sender(self, state)
            try:
                batch: dict[int, Record] = {}
                for record in reader:
                    state.read += 1
                    info = read_dead_letter(record, self.codec)
                    if self.selection.matches(info):
                        state.matched += 1
                        sender.send(info)
                    batch[record.partition] = record
                    if state.read % self.batch_size == 0:
                        self._finish_batch(sender, reader, batch)
                        batch = {}
                        if self.progress is not None:
                            self.progress(state)
                self._finish_batch(sender, reader, batch)
            finally:
                sender.close()
            state.finished = not self.stop.is_set()
            if self.progress is not None:
                self.progress(state)
            return state

    def _finish_batch(
        self, sender: _Sender, reader: TopicReader, batch: Mapping[int, Record]
    ) -> None:
        sender.confirm()
        if self.dry_run:
            return
        for record in batch.values():
            reader.store(record)
        reader.commit()


class _Sender:
    """Sends one replay's records and confirms them (a produce, or the handlers)."""

    def __init__(self, replay: Replay, state: ReplayProgress) -> None:
        self.replay = replay
        self.state = state
        self._producer = None if replay.dry_run else replay.transport.producer()
        self._sent: list[tuple[Record, list[Exception | None]]] = []
        self._letters: list[DeadLetter] = []
        self._dead_letters: DeadLetters | None = None
        if replay.target == "handlers" and not replay.dry_run:
            self._dead_letters = DeadLetters(
                replay.service or "",
                replay.transport,
                self._producer,
                drain_timeout=replay.timeout,
                backoff=0.1,
                max_backoff=5.0,
                stopping=threading.Event(),  # a dead letter is confirmed even when stopping
            )

    def send(self, info: DeadLetterInfo) -> None:
        replay = self.replay
        record = info.record
        where = f"{record.topic}[{record.partition}]@{record.offset}"
        if info.problem is not None or info.envelope is None:
            self._skip(where, f"undecodable: {info.problem}")
            return
        if replay.target == "handlers":
            if info.service != replay.service:
                self._skip(where, f"dead-lettered by service {info.service!r}")
                return
            self._to_handlers(info, where)
            return
        target = replay.to_topic or info.topic
        if not target or not info.service:
            self._skip(where, "no original topic or service recorded")
            return
        rerun_id = f"replay:{record.topic}/{record.partition}/{record.offset}"
        handlers = list(info.handlers) if info.handlers else None
        headers = [
            h
            for h in without_rerun(record.headers)
            if not h[0].startswith((DLQ_PREFIX, RETRY_PREFIX))
        ]
        headers += rerun_headers(info.service, handlers, rerun_id)
        self.state.replayed += 1
        if self._producer is None:
            return
        outcome: list[Exception | None] = []

        def report(error: Exception | None, _record: Record) -> None:
            outcome.append(error)

        self._producer.produce(target, record.value or b"", record.key, headers, report)
        self._sent.append((record, outcome))

    def _to_handlers(self, info: DeadLetterInfo, where: str) -> None:
        replay = self.replay
        envelope = info.envelope
        assert envelope is not None and replay.bus is not None
        self.state.replayed += 1
        if replay.dry_run:
            return
        record = info.record
        sender = Remote(
            envelope.source,
            envelope.id,
            envelope.time,
            info.topic or record.topic,
            info.partition if info.partition is not None else record.partition,
            info.offset if info.offset is not None else record.offset,
            f"replay:{replay.name}",
        )
        handlers = frozenset(info.handlers) if info.handlers else None
        failures: list[HandlerFailure] = []
        try:
            if envelope.traceparent is None:
                failures = replay.bus.dispatch(
                    envelope.type, sender, info.payload, handlers=handlers
                )
            else:
                with trace_context(envelope.traceparent, envelope.tracestate):
                    failures = replay.bus.dispatch(
                        envelope.type, sender, info.payload, handlers=handlers
                    )
        except PayloadError as exc:
            self._again(info, f"invalid payload on replay: {exc}", "PayloadError", [])
            return
        if failures:
            first = failures[0]
            self._again(
                info,
                f"handler failed on replay: {first.exception!r}",
                type(first.exception).__name__,
                failures,
            )

    def _again(
        self, info: DeadLetterInfo, reason: str, error: str, failures: list[HandlerFailure]
    ) -> None:
        """Dead-letter a record that failed again, to the topic it was replayed from."""
        self.state.replayed -= 1
        self.state.failed += 1
        assert self._dead_letters is not None
        record = info.record
        origin = (
            info.topic or record.topic,
            info.partition if info.partition is not None else record.partition,
            info.offset if info.offset is not None else record.offset,
        )
        self._letters.append(
            self._dead_letters.letter(
                record,
                record.topic,
                reason,
                error,
                failures,
                (info.attempts or 0) + 1,
                origin=origin,
            )
        )

    def _skip(self, where: str, why: str) -> None:
        self.state.skipped += 1
        log.warning("not replaying %s: %s", where, why)

    def confirm(self) -> None:
        """Wait until what was sent is delivered; ``TransportError`` if some was not."""
        if self._producer is None:
            return
        if self._sent:
            self._producer.flush(self.replay.timeout)
            failed = [(r, o) for r, o in self._sent if not o or o[0] is not None]
            self._sent = []
            if failed:
                record, outcome = failed[0]
                why = outcome[0] if outcome else "no delivery report"
                raise TransportError(
                    f"{len(failed)} replayed record(s) not delivered, e.g. "
                    f"{record.topic}[{record.partition}]@{record.offset}: {why}; "
                    "run the same command again to resume"
                )
        if self._letters and self._dead_letters is not None:
            letters, self._letters = self._letters, []
            self._dead_letters.confirm(letters)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(self.replay.timeout)


@dataclass
class PurgePlan:
    """What ``purge`` deletes: per partition, the records from ``first`` to ``before``."""

    topic: str
    partitions: dict[int, tuple[int, int]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(before - first for first, before in self.partitions.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "count": self.count,
            "partitions": {
                str(p): {"first": f, "before": b} for p, (f, b) in self.partitions.items()
            },
        }


def plan_purge(
    transport: Transport,
    topic: str,
    codec: MsgpackCodec,
    *,
    until: float | None = None,
    partition: int | None = None,
    to_offset: int | None = None,
    timeout: float = 10.0,
) -> PurgePlan:
    """The records of dead-letter topic ``topic`` a purge deletes: all of them, or those
    dead-lettered before ``until`` (up to the first one that is not), or those up to
    ``to_offset`` (included), of every partition or of ``partition``. Kafka deletes a log
    from its start only, so nothing else can be selected."""
    partitions = transport.list_topics(timeout=timeout).get(topic)
    if partitions is None:
        raise TransportError(f"topic {topic!r} does not exist")
    marks = transport.watermarks(topic, timeout)
    cut = {p: high for p, (_low, high) in marks.items()}
    if until is not None:
        with TopicReader(transport, topic, None, timeout=timeout) as reader:
            open_partitions = set(cut)
            for record in reader:
                if record.partition in open_partitions:
                    at = record.timestamp_ms
                    if at is None or at / 1000 >= until:
                        cut[record.partition] = min(cut[record.partition], record.offset)
                        open_partitions.discard(record.partition)
    plan = PurgePlan(topic)
    for p, (low, _high) in marks.items():
        if partition is not None and p != partition:
            continue
        before = cut[p] if to_offset is None else min(cut[p], to_offset + 1)
        if before > low:
            plan.partitions[p] = (low, before)
    return plan


def purge(transport: Transport, plan: PurgePlan, timeout: float = 30.0) -> None:
    """Delete what ``plan`` says (``Transport.delete_records``)."""
    before = {p: b for p, (_first, b) in plan.partitions.items()}
    transport.delete_records(plan.topic, before, timeout)


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode()
    except UnicodeDecodeError:
        import base64

        return "base64:" + base64.b64encode(value).decode()


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
