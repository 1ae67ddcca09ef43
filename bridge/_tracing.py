"""OpenTelemetry spans of the bridge, per the messaging semantic conventions (``otel`` extra).

Only ``opentelemetry-api`` is used. Without it, or without a configured tracer provider
(the API's default is a proxy that records nothing), ``tracing_for`` returns None and the
bridge makes no span and pays nothing but a ``None`` check per record.

* **send**: a PRODUCER span per outbound record (``send <topic>``), a child of the
  current span (or of a ``trace_context()`` block's context when there is no span). Its
  context is what the record's ``traceparent``/``tracestate`` headers carry (through the
  globally configured propagator), so it is the record's creation context. It covers
  handing the record to the client (or the outbox); delivery is reported later and
  elsewhere (``on_delivery_failure``, metrics), as a delivered record costs no Python.
* **process**: a CONSUMER span per inbound record (``process <topic>``) around decoding,
  dispatch to the handlers, retries and dead-lettering. Its parent is the creation context
  from the record's headers, and it also links to that context. The conventions ask for
  the link ("for each message it accounts for, the Process span SHOULD link to the
  message's creation context") and leave the parent to the instrumentation; one record
  per span, pushed to handlers the application does not call itself, makes the creation
  context an unambiguous parent, so a chain of events across services is one trace, and
  tools that follow links still find the producer. A record without a context starts a
  new trace. The span is the current one while the handlers run, in the thread or task
  that runs them (contextvars), so their spans and emits are its children.
* Retries are span events (``retry``, with each failed handler's exception recorded);
  a dead letter is an event (``dead_letter``) and sets the status to ERROR with
  ``error.type``. An exception that escapes processing is recorded the same way.

Attributes: ``messaging.system=kafka``, ``messaging.operation.name``/``.type``
(``send``/``process``), ``messaging.destination.name``,
``messaging.destination.partition.id`` and ``messaging.kafka.offset`` (process),
``messaging.kafka.message.key``, ``messaging.consumer.group.name`` (process),
``messaging.message.id`` (the CloudEvents id), ``messaging.message.body.size`` and
``cloudevents.event_id``/``event_type``/``event_source``/``event_spec_version``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from eventbus import HandlerFailure, handler_name

from ._envelope import ORIGIN, current_trace
from ._transport import Record

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.propagators.textmap import Getter
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode
except ImportError:  # the otel extra is not installed: no spans
    trace = None  # type: ignore[assignment]

T = TypeVar("T")
INSTRUMENTATION = "eventbus-bridge"
_TRACE_HEADERS = frozenset({"traceparent", "tracestate", "baggage"})
Headers = list[tuple[str, bytes]]


def tracing_for(provider: Any, *, bridge_id: str, group: str) -> Tracing | None:
    """The bridge's ``Tracing``, or None when no span is to be made.

    ``provider`` is an OpenTelemetry ``TracerProvider``; None means the global one, and
    only when one was configured (``trace.set_tracer_provider``, or the
    ``opentelemetry-instrument`` wrapper) before the bridge was made.
    """
    if trace is None:
        if provider is not None:
            from ._errors import ConfigError

            raise ConfigError(
                "tracer_provider needs OpenTelemetry: pip install 'eventbus-bridge[otel]'"
            )
        return None
    if provider is None:
        provider = trace.get_tracer_provider()
        if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
            return None
    return Tracing(provider.get_tracer(INSTRUMENTATION), bridge_id=bridge_id, group=group)


def _header_getter() -> Any:
    """A propagator getter for record headers: bytes values, maybe bad ones."""

    class HeaderGetter(Getter[Mapping[str, Any]]):  # defined here: the API may be absent
        def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
            value = carrier.get(key)
            if type(value) is bytes:
                return [value.decode(errors="replace")]
            return None

        def keys(self, carrier: Mapping[str, Any]) -> list[str]:
            return list(carrier)

    return HeaderGetter()


class Tracing:
    """Makes the send and process spans of one bridge with one tracer. Thread safe."""

    __slots__ = ("_getter", "_origin", "_tracer", "group")

    def __init__(self, tracer: Any, *, bridge_id: str, group: str) -> None:
        self._tracer = tracer
        self._origin = bridge_id.encode()
        self.group = group
        self._getter = _header_getter()

    # -- outbound -------------------------------------------------------------------

    @contextlib.contextmanager
    def sending(
        self, topic: str, key: bytes | None, value: bytes, headers: Headers
    ) -> Iterator[Headers]:
        """A PRODUCER span around queueing one record; yields the headers to write.

        The headers are ``headers`` with the trace context of the new span in place of
        any they had.
        """
        parent = None
        if not trace.get_current_span().get_span_context().is_valid:
            known = current_trace()  # a trace_context() block, no span: its context
            if known is not None:
                parent = propagate.extract(
                    {"traceparent": known[0], "tracestate": known[1]}, getter=self._getter
                )
        found = dict(headers)
        attributes = _attributes(found, topic, "send", key, value)
        span = self._tracer.start_span(
            f"send {topic}", context=parent, kind=SpanKind.PRODUCER, attributes=attributes
        )
        # Not made current: no application code runs while the record is queued.
        try:
            carrier: dict[str, str] = {}
            propagate.inject(carrier, context=trace.set_span_in_context(span))
            traced = [h for h in headers if h[0] not in _TRACE_HEADERS]
            traced.extend((name, text.encode()) for name, text in carrier.items())
            yield traced
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            span.end()

    # -- inbound --------------------------------------------------------------------

    def processing(self, process: Callable[[Record], T]) -> Callable[[Record], T]:
        """``process`` (one record to the end) inside a CONSUMER span per record.

        The span is the current one in the thread that runs ``process``. A record this
        bridge produced (an echo, skipped anyway) gets no span.
        """

        def traced_process(record: Record) -> T:
            span = self._process_span(record)
            if span is None:
                return process(record)
            with trace.use_span(span, end_on_exit=True, record_exception=True):
                return process(record)

        return traced_process

    def processing_async(
        self, process: Callable[[Record, Any], Awaitable[T]]
    ) -> Callable[[Record, Any], Awaitable[T]]:
        """``processing`` for the coroutine that processes a record on an event loop.

        The span is the current one in the record's task (each task has its context).
        """

        async def traced_process(record: Record, stopped: Any) -> T:
            span = self._process_span(record)
            if span is None:
                return await process(record, stopped)
            with trace.use_span(span, end_on_exit=True, record_exception=True):
                return await process(record, stopped)

        return traced_process

    def _process_span(self, record: Record) -> Any:
        """A started CONSUMER span for ``record``, or None for an echo of this bridge."""
        found = dict(record.headers)
        if found.get(ORIGIN) == self._origin:
            return None
        parent = propagate.extract(found, getter=self._getter)
        creation = trace.get_current_span(parent).get_span_context()
        attributes = _attributes(found, record.topic, "process", record.key, record.value)
        attributes["messaging.destination.partition.id"] = str(record.partition)
        attributes["messaging.kafka.offset"] = record.offset
        attributes["messaging.consumer.group.name"] = self.group
        return self._tracer.start_span(
            f"process {record.topic}",
            # No creation context: a new trace, not a child of whatever is current.
            context=parent if creation.is_valid else otel_context.Context(),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=[Link(creation)] if creation.is_valid else None,
        )

    @staticmethod
    def retrying(attempt: int, failures: Sequence[HandlerFailure]) -> None:
        """Record on the current span that ``failures`` failed and attempt ``attempt`` follows."""
        span = trace.get_current_span()
        for failure in failures:
            span.record_exception(
                failure.exception, {"eventbus.handler": handler_name(failure.handler)}
            )
        span.add_event("retry", {"eventbus.attempt": attempt, "eventbus.failed": len(failures)})

    @staticmethod
    def dead_lettered(
        topic: str, reason: str, error: str, failures: Sequence[HandlerFailure], attempts: int
    ) -> None:
        """Record on the current span that its record goes to the dead-letter ``topic``."""
        span = trace.get_current_span()
        for failure in failures:
            span.record_exception(
                failure.exception, {"eventbus.handler": handler_name(failure.handler)}
            )
        span.add_event(
            "dead_letter",
            {
                "eventbus.dlq.topic": topic,
                "eventbus.dlq.reason": reason,
                "eventbus.attempts": attempts,
            },
        )
        span.set_attribute("error.type", error)
        span.set_status(Status(StatusCode.ERROR, reason))


def _attributes(
    found: Mapping[str, Any], topic: str, operation: str, key: bytes | None, value: bytes | None
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": "kafka",
        "messaging.operation.name": operation,
        "messaging.operation.type": operation,
        "messaging.destination.name": topic,
        "messaging.message.body.size": len(value or b""),
    }
    if type(key) is bytes:
        attributes["messaging.kafka.message.key"] = key.decode(errors="replace")
    for header, name in _CLOUDEVENTS:
        raw = found.get(header)
        if type(raw) is bytes:
            attributes[name] = raw.decode(errors="replace")
    if "cloudevents.event_id" in attributes:
        attributes["messaging.message.id"] = attributes["cloudevents.event_id"]
    return attributes


_CLOUDEVENTS = (
    ("ce_id", "cloudevents.event_id"),
    ("ce_type", "cloudevents.event_type"),
    ("ce_source", "cloudevents.event_source"),
    ("ce_specversion", "cloudevents.event_spec_version"),
)
