"""OpenTelemetry spans: one trace across three bridges on the real broker, and their details.

The SDK's in-memory exporter collects the spans; each bridge gets the test's provider
(``tracer_provider=``), so no global state leaks into other tests.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from bridge import Bridge, KafkaTransport, MemoryTransport, Route, trace_context
from bridge._tracing import tracing_for
from eventbus import EventBus
from tests.bridge.helpers import read, wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def _spans(exporter: InMemorySpanExporter, count: int) -> list[ReadableSpan]:
    wait_for(lambda: len(exporter.get_finished_spans()) >= count, 30, f"{count} spans")
    return list(exporter.get_finished_spans())


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def _parent_is(child: ReadableSpan, parent: ReadableSpan) -> bool:
    assert child.parent is not None and parent.context is not None
    return child.parent.span_id == parent.context.span_id


@pytest.mark.kafka
def test_a_chain_across_three_bridges_is_one_trace(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    placed, paid = make_topic(), make_topic()
    transports = [KafkaTransport({"bootstrap.servers": kafka_bootstrap}) for _ in range(3)]
    bus_a, bus_b, bus_c = EventBus(), EventBus(), EventBus()
    handled = threading.Event()
    seen_in_c: dict[str, Any] = {}

    @bus_b.on("order.placed")
    def charge(sender: Any, *, order_id: int) -> None:
        bus_b.emit("order.paid", order_id=order_id, amount="19.90")

    @bus_c.on("order.paid")
    def ship(sender: Any, **payload: Any) -> None:
        seen_in_c["span"] = trace.get_current_span().get_span_context()
        handled.set()

    common: dict[str, Any] = {"tracer_provider": provider, "ready_timeout": 60}
    bridges = [
        Bridge(
            bus_a,
            transport=transports[0],
            service="checkout",
            routes=[Route.outbound("order.placed", topic=placed, key="order_id")],
            **common,
        ),
        Bridge(
            bus_b,
            transport=transports[1],
            service="payments",
            routes=[
                Route.inbound("order.placed", topic=placed),
                Route.outbound("order.paid", topic=paid, key="order_id"),
            ],
            **common,
        ),
        Bridge(
            bus_c,
            transport=transports[2],
            service="shipping",
            routes=[Route.inbound("order.paid", topic=paid)],
            **common,
        ),
    ]
    try:
        for bridge in reversed(bridges):
            bridge.start()
        with provider.get_tracer("test").start_as_current_span("POST /orders"):
            bus_a.emit("order.placed", order_id=7)
        assert handled.wait(60), "the event did not reach the third bridge"
        spans = _spans(exporter, 5)
    finally:
        for bridge in bridges:
            bridge.stop()
        for transport in transports:
            transport.close()

    root = _one(spans, "POST /orders")
    send_placed = _one(spans, f"send {placed}")
    process_placed = _one(spans, f"process {placed}")
    send_paid = _one(spans, f"send {paid}")
    process_paid = _one(spans, f"process {paid}")
    print("\n" + render_tree(spans))

    assert len({s.context.trace_id for s in spans if s.context}) == 1  # one trace
    assert root.parent is None
    assert _parent_is(send_placed, root)
    assert _parent_is(process_placed, send_placed)  # the creation context is the parent
    assert _parent_is(send_paid, process_placed)  # the handler's emit is inside the span
    assert _parent_is(process_paid, send_paid)
    # ... and the consumer spans also link to the creation context, as the conventions ask
    for process, send in ((process_placed, send_placed), (process_paid, send_paid)):
        assert [link.context.span_id for link in process.links] == [send.context.span_id]
    assert seen_in_c["span"].span_id == process_paid.context.span_id

    assert send_placed.kind is SpanKind.PRODUCER and process_placed.kind is SpanKind.CONSUMER
    assert {
        k: send_placed.attributes[k]
        for k in (
            "messaging.system",
            "messaging.operation.name",
            "messaging.operation.type",
            "messaging.destination.name",
            "messaging.kafka.message.key",
            "cloudevents.event_type",
            "cloudevents.event_source",
            "cloudevents.event_spec_version",
        )
    } == {
        "messaging.system": "kafka",
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.destination.name": placed,
        "messaging.kafka.message.key": "7",
        "cloudevents.event_type": "order.placed",
        "cloudevents.event_source": "checkout",
        "cloudevents.event_spec_version": "1.0",
    }
    attrs = process_paid.attributes
    assert attrs["messaging.operation.name"] == attrs["messaging.operation.type"] == "process"
    assert attrs["messaging.destination.name"] == paid
    assert attrs["messaging.destination.partition.id"] == "0"
    assert attrs["messaging.kafka.offset"] == 0
    assert attrs["messaging.consumer.group.name"] == "shipping"
    assert attrs["messaging.kafka.message.key"] == "7"
    assert attrs["cloudevents.event_source"] == "payments"
    assert attrs["messaging.message.id"] == attrs["cloudevents.event_id"]
    assert attrs["messaging.message.id"] == send_paid.attributes["messaging.message.id"]
    assert attrs["messaging.message.body.size"] > 0
    assert all(s.status.status_code is StatusCode.UNSET for s in spans)


def render_tree(spans: list[ReadableSpan]) -> str:
    """The spans as an indented tree (parents before children), for the docs and -s runs."""
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        children.setdefault(span.parent.span_id if span.parent else None, []).append(span)
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for span in children.get(parent, []):
            assert span.context is not None
            attrs = span.attributes or {}
            where = ""
            if span.kind is SpanKind.PRODUCER:
                where = f" by {attrs['cloudevents.event_source']}: {attrs['cloudevents.event_type']}"
            elif span.kind is SpanKind.CONSUMER:
                where = f" in {attrs['messaging.consumer.group.name']}, linked to its parent"
            lines.append(f"{'  ' * depth}{span.name}  [{span.kind.name}]{where}")
            walk(span.context.span_id, depth + 1)

    walk(None, 0)
    return "\n".join(lines)


def _memory_bridges(
    provider: TracerProvider | None, key: str | None = None, **kw: Any
) -> tuple[MemoryTransport, EventBus, Bridge, EventBus, Bridge]:
    transport = MemoryTransport()
    sender, receiver = EventBus(), EventBus()
    out = Bridge(
        sender,
        transport=transport,
        service="a",
        routes=[Route.outbound("t.*", topic="t", key=key)],
        tracer_provider=provider,
        partitions=4,
    )
    inbound = Bridge(
        receiver,
        transport=transport,
        service="b",
        routes=[Route.inbound("t.*", topic="t")],
        tracer_provider=provider,
        backoff=0.001,
        **kw,
    )
    return transport, sender, out, receiver, inbound


def test_retries_and_the_dead_letter_are_span_events_and_the_status(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    transport, sender, out, receiver, inbound = _memory_bridges(provider, max_attempts=3)
    calls = []

    @receiver.on("t.fail")
    def fail(sender: Any, **payload: Any) -> None:
        calls.append(1)
        raise ValueError(f"attempt {len(calls)}")

    with inbound, out:
        sender.emit("t.fail", n=1)
        wait_for(lambda: inbound.stats.dead_lettered == 1, what="a dead letter")
    span = _one(_spans(exporter, 2), "process t")
    assert [e.name for e in span.events] == [
        "exception",
        "retry",
        "exception",
        "retry",
        "exception",
        "dead_letter",
    ]
    assert [e.attributes["eventbus.attempt"] for e in span.events if e.name == "retry"] == [2, 3]
    messages = [e.attributes["exception.message"] for e in span.events if e.name == "exception"]
    assert messages == ["attempt 1", "attempt 2", "attempt 3"]
    letter = span.events[-1].attributes
    assert letter["eventbus.dlq.topic"] == "t.dlq" and letter["eventbus.attempts"] == 3
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "ValueError"
    transport.close()


def test_an_undecodable_record_is_a_failed_span_and_a_new_trace(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    transport, _, _, _, inbound = _memory_bridges(provider)
    with inbound:
        producer = transport.producer()
        producer.produce("t", b"\xc1", None, [("ce_type", b"t.x")])
        producer.flush(5)
        wait_for(lambda: inbound.stats.dead_lettered == 1, what="a dead letter")
    span = _one(_spans(exporter, 1), "process t")
    assert span.parent is None and not span.links  # no creation context in the record
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "decode"
    transport.close()


def test_a_trace_context_block_without_a_span_is_the_send_spans_parent(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    transport, sender, out, _, _ = _memory_bridges(provider)
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with out, trace_context(parent, "k=v"):
        sender.emit("t.one", n=1)
    span = _one(_spans(exporter, 1), "send t")
    assert span.context is not None and span.parent is not None
    assert f"{span.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert f"{span.parent.span_id:016x}" == "b7ad6b7169203331"
    (record,) = read(transport, "t", 1)
    headers = dict(record.headers)
    context = span.context
    assert headers["traceparent"] == f"00-{context.trace_id:032x}-{context.span_id:016x}-01".encode()
    assert headers["tracestate"] == b"k=v"
    assert [name for name, _ in record.headers].count("traceparent") == 1
    transport.close()


def test_without_a_provider_nothing_changes() -> None:
    # No provider given and none configured globally: no tracing at all.
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert tracing_for(None, bridge_id="x", group="g") is None
    transport, sender, out, _, _ = _memory_bridges(None)
    with out:
        sender.emit("t.one", n=1)
    (record,) = read(transport, "t", 1)
    assert "traceparent" not in dict(record.headers)  # no span, no context to carry
    transport.close()


ABSENT = """
import sys
sys.modules["opentelemetry"] = None  # as without the otel extra
from bridge import Bridge, ConfigError, MemoryTransport, Route
from eventbus import EventBus
from tests.bridge.helpers import read
transport, bus = MemoryTransport(), EventBus()
with Bridge(bus, transport=transport, service="a", routes=[Route.outbound("t.*", topic="t")]):
    bus.emit("t.one", n=1)
(record,) = read(transport, "t", 1)
print(sorted(name for name, _ in record.headers))
try:
    Bridge(bus, transport=transport, service="a", routes=[], tracer_provider=object())
except ConfigError as exc:
    print(exc)
"""


def test_without_the_otel_extra_the_bridge_works_and_a_provider_is_a_clear_error() -> None:
    done = subprocess.run(
        [sys.executable, "-c", ABSENT], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    headers, error = done.stdout.splitlines()
    assert "traceparent" not in headers and "ce_id" in headers
    assert error == "tracer_provider needs OpenTelemetry: pip install 'eventbus-bridge[otel]'"


def _handler_spans_match_records(
    spans: list[ReadableSpan], seen: dict[tuple[str, str], int], count: int
) -> None:
    process = {
        s.attributes["messaging.message.id"]: s.context.span_id
        for s in spans
        if s.name == "process t" and s.attributes and s.context
    }
    assert len(process) == count
    # every handler ran inside the span of its own record, whichever thread or task ran it
    assert {event_id: span for (event_id, _), span in seen.items()} == process


def test_concurrent_handlers_each_run_in_their_records_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    transport, sender, out, receiver, inbound = _memory_bridges(provider, "k", concurrency=4)
    seen: dict[tuple[str, str], int] = {}
    threads: set[int] = set()
    lock = threading.Lock()

    @receiver.on("t.work")
    def work(sender: Any, **payload: Any) -> None:
        time.sleep(0.002)  # let the records of other keys overlap this one
        span_id = trace.get_current_span().get_span_context().span_id
        with lock:
            seen[(sender.id, "sync")] = span_id
            threads.add(threading.get_ident())

    with inbound, out:
        for n in range(20):
            sender.emit("t.work", n=n, k=str(n % 5))
        wait_for(lambda: len(seen) == 20, what="20 handled events")
    assert len(threads) > 1  # the records really ran on several threads
    _handler_spans_match_records(_spans(exporter, 40), seen, 20)
    transport.close()


def test_async_handlers_each_run_in_their_records_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    import asyncio

    transport, sender, out, receiver, inbound = _memory_bridges(provider, "k", concurrency=4)
    seen: dict[tuple[str, str], int] = {}

    @receiver.on("t.work")
    async def work(sender: Any, **payload: Any) -> None:
        await asyncio.sleep(0.001)  # interleave the records' tasks
        seen[(sender.id, "async")] = trace.get_current_span().get_span_context().span_id

    async def app() -> None:
        async with inbound:
            with out:
                for n in range(20):
                    sender.emit("t.work", n=n, k=str(n % 5))
            deadline = asyncio.get_running_loop().time() + 20
            while len(seen) < 20 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.005)

    asyncio.run(app())
    assert len(seen) == 20
    _handler_spans_match_records(_spans(exporter, 40), seen, 20)
    transport.close()
