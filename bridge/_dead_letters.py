"""Dead letters: inbound records that could not be handled, with the reason, on a topic.

A dead letter keeps the original key, value and headers and adds ``eventbus-dlq-*``
headers (reason, error, topic, partition, offset, attempts, service; for handler failures
handler, handlers (a JSON list of every failed one) and a bounded traceback). Its
delivery is confirmed before the original record's offset may be stored, so a record
is never committed unless it was handled or its dead letter is safely on the broker.
"""

from __future__ import annotations

import json
import logging
import threading
import traceback
from collections.abc import Sequence

from eventbus import HandlerFailure, handler_name

from ._envelope import DLQ_PREFIX
from ._errors import TransportError
from ._transport import Producer, Record, Transport

log = logging.getLogger("bridge")

LOG_TRACEBACK_LIMIT = 4000
"""Characters of a handler's traceback logged with its dead letter (head and tail kept)."""


class DeadLetter:
    """A record on its way to a dead-letter topic, and the outcome of its delivery."""

    __slots__ = ("counted", "delivered", "error", "headers", "record", "topic")

    def __init__(
        self, record: Record, topic: str, headers: list[tuple[str, bytes]], counted: bool = True
    ) -> None:
        self.record = record
        self.topic = topic
        self.headers = headers
        self.counted = counted  # a dead letter; False: a record on its way to a retry topic
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


class DeadLetters:
    """Produces dead letters and confirms their delivery, retrying failed ones.

    Dead letters go through ``shared`` (a producer that reports every delivery, owned by
    someone else) when given, else through a producer of ``transport``'s made at the
    first dead letter and closed by ``close``. Thread safe: any inbound worker may send
    and confirm.
    """

    def __init__(
        self,
        service: str,
        transport: Transport,
        shared: Producer | None,
        *,
        drain_timeout: float,
        backoff: float,
        max_backoff: float,
        stopping: threading.Event,
    ) -> None:
        self.service = service
        self._transport = transport
        self._shared = shared
        self._producer: Producer | None = shared
        self._lock = threading.Lock()
        self.drain_timeout = drain_timeout
        self.backoff = backoff or 0.1
        self.max_backoff = max_backoff
        self._stopping = stopping

    def letter(
        self,
        record: Record,
        topic: str,
        reason: str,
        error: str,
        failures: Sequence[HandlerFailure],
        attempts: int,
        *,
        origin: tuple[str, int, int] | None = None,
        extra: Sequence[tuple[str, bytes]] = (),
    ) -> DeadLetter:
        """Build the dead letter of ``record`` and produce it, without waiting.

        ``origin`` is the (topic, partition, offset) the record was first read from when
        that is not ``record``'s own (a record of a retry topic); ``extra`` headers are
        added after the ``eventbus-dlq-*`` ones.
        """
        topic_, partition, offset = origin or (record.topic, record.partition, record.offset)
        headers = [h for h in record.headers if not h[0].startswith(DLQ_PREFIX)]
        headers += [
            (DLQ_PREFIX + "reason", reason.encode(errors="replace")[:4096]),
            (DLQ_PREFIX + "error", error.encode()),
            (DLQ_PREFIX + "topic", topic_.encode()),
            (DLQ_PREFIX + "partition", str(partition).encode()),
            (DLQ_PREFIX + "offset", str(offset).encode()),
            (DLQ_PREFIX + "attempts", str(attempts).encode()),
            (DLQ_PREFIX + "service", self.service.encode()),
        ]
        if failures:
            names = [handler_name(f.handler) for f in failures]
            headers += [
                (DLQ_PREFIX + "handler", names[0].encode()),
                (DLQ_PREFIX + "handlers", json.dumps(names).encode()),
                (DLQ_PREFIX + "traceback", traceback_summary(failures)),
            ]
        headers += extra
        if failures:
            log.warning(
                "bridge %s: dead-lettering %s to %s: %s; the last failure of %s:\n%s",
                self.service,
                where(record),
                topic,
                reason,
                handler_name(failures[0].handler),
                bounded_traceback(failures[0].exception),
            )
        else:
            log.warning(
                "bridge %s: dead-lettering %s to %s: %s", self.service, where(record), topic, reason
            )
        letter = DeadLetter(record, topic, headers)
        self._send(letter)
        return letter

    def forward(self, record: Record, topic: str, headers: list[tuple[str, bytes]]) -> DeadLetter:
        """Produce ``record`` with ``headers`` to ``topic`` (a retry topic), without waiting;
        confirmed with the dead letters, not counted as one."""
        letter = DeadLetter(record, topic, headers, counted=False)
        self._send(letter)
        return letter

    def _producer_now(self) -> Producer:
        with self._lock:
            if self._producer is None:
                self._producer = self._transport.producer()
            return self._producer

    def _send(self, letter: DeadLetter) -> None:
        producer = self._producer_now()
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

    def confirm(self, letters: list[DeadLetter]) -> tuple[int, set[tuple[str, int]]]:
        """Wait until ``letters`` are delivered, resending failed ones with backoff.

        Returns how many dead letters were delivered (records forwarded to a retry topic
        are confirmed the same way, and not counted), and the partitions whose letters
        could not be confirmed because the bridge is stopping: their offsets must not be
        stored (the records come again).
        """
        producer = self._producer_now()
        delivered = 0
        delay = self.backoff
        while letters:
            producer.flush(self.drain_timeout)
            failed = []
            for letter in letters:
                if letter.wait(self.drain_timeout):
                    delivered += letter.counted
                else:
                    failed.append(letter)
            if not failed:
                break
            log.error(
                "bridge %s: %d dead letter(s) not delivered (%s); retrying",
                self.service,
                len(failed),
                failed[0].error or "no delivery report",
            )
            if self._stopping.wait(delay):
                return delivered, {(f.record.topic, f.record.partition) for f in failed}
            delay = min(delay * 2, self.max_backoff)
            for letter in failed:
                self._send(letter)
            letters = failed
        return delivered, set()

    def close(self, timeout: float) -> None:
        """Flush and close the producer made for dead letters, if one was."""
        if self._producer is not None and self._producer is not self._shared:
            self._producer.close(timeout)


def bounded_traceback(exc: BaseException, limit: int = LOG_TRACEBACK_LIMIT) -> str:
    """The traceback of ``exc`` as text, at most about ``limit`` characters: a long one
    keeps its start and its end (where the error was raised)."""
    text = "".join(traceback.format_exception(exc)).rstrip()
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n  ... ({len(text) - 2 * half} characters left out) ...\n{text[-half:]}"


TRACEBACK_LIMIT = 8192
"""At most this many bytes of traceback text go into ``eventbus-dlq-traceback``."""


def traceback_summary(failures: Sequence[HandlerFailure], limit: int = TRACEBACK_LIMIT) -> bytes:
    """The tracebacks of ``failures``, each under its handler's name, at most ``limit``
    bytes in all: the innermost frames, and the exception's text cut to a quarter of
    each one's share (a huge message must not push the frames out)."""
    share = max(512, limit // len(failures)) if failures else limit
    parts = []
    for failure in failures:
        exc = failure.exception
        tb = traceback.TracebackException.from_exception(exc, limit=-8)
        frames = "".join(tb.stack.format()).encode(errors="replace")
        message = "".join(tb.format_exception_only()).encode(errors="replace")
        if len(message) > share // 4:
            message = message[: share // 4 - 4] + b"...\n"
        head = f"handler {handler_name(failure.handler)}:\n".encode()
        room = share - len(head) - len(message)
        if len(frames) > room:
            frames = b"...\n" + frames[-(room - 4) :] if room > 4 else b""
        parts.append(head + frames + message)
    return b"\n".join(parts)[:limit]


def where(record: Record) -> str:
    """``topic[partition]@offset``, for log lines."""
    return f"{record.topic}[{record.partition}]@{record.offset}"
