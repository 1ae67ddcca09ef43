"""The bridge's semantics on MemoryTransport: no broker needed.

The same promises are checked on the real broker in test_bridge_kafka.py.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import msgpack
import pytest

from bridge import (
    Bridge,
    ConfigError,
    DeliveryError,
    MemoryTransport,
    MsgpackCodec,
    NotReadyError,
    Remote,
    Route,
    Transport,
    current_trace,
    trace_context,
)
from eventbus import EmitError, EventBus, event
from tests.bridge.helpers import make_bridge, read, wait_for


class Names:
    """Unique topic names per test: ``tp.users`` is ``users-<random>`` within one test."""

    def __init__(self) -> None:
        self._suffix = uuid.uuid4().hex[:8]

    def __getattr__(self, name: str) -> str:
        return f"{name.replace('_', '-')}-{self._suffix}"


@pytest.fixture
def tp() -> Names:
    return Names()


@pytest.fixture
def memory() -> Iterator[MemoryTransport]:
    t = MemoryTransport()
    yield t
    t.close()


def test_outbound_record_has_key_headers_and_plain_msgpack_value(
    tp: Names,
    transport: Transport,
) -> None:
    bus = EventBus()
    with make_bridge(
        bus, transport, "user-service", Route.outbound("user.*", topic=tp.users, key="user_id")
    ) as b:
        bus.emit("user.registered", user_id=42, email="a@example.com")
    [record] = read(transport, tp.users, 1)
    assert record.key == b"42"
    assert msgpack.unpackb(record.value, raw=False) == {"user_id": 42, "email": "a@example.com"}
    headers = dict(record.headers)
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_type"] == b"user.registered"
    assert headers["ce_source"] == b"user-service"
    assert uuid.UUID(headers["ce_id"].decode()).version == 4
    assert dt.datetime.fromisoformat(headers["ce_time"].decode().replace("Z", "+00:00")).tzinfo
    assert headers["content-type"] == b"application/vnd.msgpack"
    assert headers["eventbus-origin"] == b.id.encode()
    assert b.stats.delivered == 1 and b.stats.delivery_failed == 0


@event("order.placed")
@dataclass
class OrderPlaced:
    order_id: int
    total: Decimal
    at: dt.datetime
    customer: uuid.UUID
    day: dt.date
    blob: bytes
    lines: list[dict[str, Any]]
    note: str | None = None


def test_two_buses_exchange_every_supported_type(tp: Names, transport: Transport) -> None:
    shop, billing = EventBus(), EventBus()
    got: list[tuple[Any, OrderPlaced]] = []
    billing.on("order.placed")(lambda sender, **kw: got.append((sender, OrderPlaced(**kw))))
    order = OrderPlaced(
        order_id=7,
        total=Decimal("19.99"),
        at=dt.datetime(2026, 11, 28, 10, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        customer=uuid.uuid4(),
        day=dt.date(2026, 11, 28),
        blob=b"\x00\xff",
        lines=[{"sku": "a", "qty": 2, "price": 1.5, "tags": ["x"], "gift": True, "none": None}],
    )
    with (
        make_bridge(billing, transport, "billing", Route.inbound("order.*", topic=tp.orders)),
        make_bridge(
            shop, transport, "shop", Route.outbound("order.*", topic=tp.orders, key="order_id")
        ),
    ):
        shop.emit(order)
        wait_for(lambda: got, what="the order in billing")
    sender, received = got[0]
    assert received == order
    assert received.at.utcoffset() == dt.timedelta(hours=2)
    assert isinstance(sender, Remote) and sender.source == "shop" and sender.topic == tp.orders


def test_typed_event_on_receiving_bus_gets_instance(tp: Names, transport: Transport) -> None:
    shop, billing = EventBus(), EventBus()
    got: list[OrderPlaced] = []
    billing.on(OrderPlaced)(got.append)
    order = OrderPlaced(
        7, Decimal(1), dt.datetime.now(dt.UTC), uuid.uuid4(), dt.date.today(), b"", []
    )
    with (
        make_bridge(billing, transport, "billing", Route.inbound("order.placed", topic=tp.orders)),
        make_bridge(shop, transport, "shop", Route.outbound("order.placed", topic=tp.orders)),
    ):
        shop.emit(order)
        wait_for(lambda: got)
    assert got == [order]


def test_invalid_typed_payload_is_dead_lettered_at_once(tp: Names, transport: Transport) -> None:
    sender_bus, receiver = EventBus(), EventBus()
    calls: list[Any] = []
    receiver.on(OrderPlaced)(calls.append)
    receiver.on("order.placed")(lambda s, **kw: calls.append(kw))
    with (
        make_bridge(
            receiver, transport, "billing", Route.inbound("order.placed", topic=tp.orders)
        ) as rb,
        make_bridge(sender_bus, transport, "shop", Route.outbound("order.*", topic=tp.orders)),
    ):
        sender_bus.emit("order.placed", order_id="not an int")
        sender_bus.emit("order.other", n=1)  # not routed inbound: skipped, stream goes on
        wait_for(lambda: rb.stats.dead_lettered == 1 and rb.stats.unrouted == 1)
    assert calls == []
    [dead] = read(transport, tp.orders + ".dlq", 1)
    headers = dict(dead.headers)
    assert headers["eventbus-dlq-error"] == b"PayloadError"
    assert b"missing field(s) total" in headers["eventbus-dlq-reason"]
    assert headers["eventbus-dlq-attempts"] == b"0"


def test_failing_handler_retried_then_dead_lettered_and_stream_continues(
    tp: Names,
    transport: Transport,
) -> None:
    out, inbound = EventBus(), EventBus()
    attempts: list[int] = []
    handled: list[int] = []

    @inbound.on("job.run")
    def flaky(sender: Any, *, n: int) -> None:
        if n == 1:
            attempts.append(n)
            raise ValueError(f"job {n} is broken")
        handled.append(n)

    with (
        make_bridge(
            inbound,
            transport,
            "worker",
            Route.inbound("job.*", topic=tp.jobs, dlq=tp.jobs_dead),
            max_attempts=4,
        ) as wb,
        make_bridge(out, transport, "api", Route.outbound("job.*", topic=tp.jobs)),
    ):
        for n in range(3):
            out.emit("job.run", n=n)
        wait_for(lambda: handled == [0, 2], what="the jobs after the broken one")
    assert attempts == [1, 1, 1, 1]
    assert wb.stats.retried == 3 and wb.stats.dead_lettered == 1
    [dead] = read(transport, tp.jobs_dead, 1)
    headers = dict(dead.headers)
    assert msgpack.unpackb(dead.value) == {"n": 1}
    assert headers["ce_type"] == b"job.run"  # original headers kept
    assert headers["eventbus-dlq-attempts"] == b"4"
    assert headers["eventbus-dlq-error"] == b"ValueError"
    assert headers["eventbus-dlq-handler"].endswith(b"flaky")
    assert headers["eventbus-dlq-topic"] == tp.jobs.encode()
    assert headers["eventbus-dlq-partition"] == b"0"
    assert headers["eventbus-dlq-offset"] == b"1"
    assert headers["eventbus-dlq-service"] == b"worker"
    assert b"job 1 is broken" in headers["eventbus-dlq-reason"]


def test_retry_runs_only_the_failing_handler(tp: Names, transport: Transport) -> None:
    out, inbound = EventBus(), EventBus()
    steady: list[int] = []
    tries: list[int] = []

    inbound.on("job.run")(lambda s, **kw: steady.append(kw["n"]))

    @inbound.on("job.run")
    def flaky_once(sender: Any, **kw: Any) -> None:
        tries.append(kw["n"])
        if len(tries) == 1:
            raise RuntimeError("first time fails")

    with (
        make_bridge(inbound, transport, "worker", Route.inbound("job.run", topic=tp.jobs)) as wb,
        make_bridge(out, transport, "api", Route.outbound("job.run", topic=tp.jobs)),
    ):
        out.emit("job.run", n=5)
        wait_for(lambda: wb.stats.handled == 1)
    assert steady == [5] and tries == [5, 5] and wb.stats.dead_lettered == 0


def test_undecodable_records_are_dead_lettered_and_stream_continues(
    tp: Names,
    transport: Transport,
) -> None:
    bus = EventBus()
    got: list[int] = []
    bus.on("a.b")(lambda s, **kw: got.append(kw["n"]))
    good = [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_source", b"t"), ("ce_type", b"a.b")]
    with make_bridge(bus, transport, "svc", Route.inbound("a.b", topic=tp.t)) as b:
        producer = transport.producer()
        bad_records = [
            (b"\xc1", good),  # invalid msgpack
            (msgpack.packb([1, 2]), good),  # not a map
            (msgpack.packb({"n": 1}), good[1:]),  # no specversion
            (msgpack.packb({"n": 1}), [*good, ("content-type", b"application/json")]),
            (msgpack.packb({"n": 1}), [*good, ("content-type", b"text/plain")]),
        ]
        for value, headers in bad_records:
            producer.produce(tp.t, value, None, headers)
        producer.produce(
            tp.t, msgpack.packb({"n": 2}), None, [*good[:1], ("ce_id", b"2"), *good[2:]]
        )
        producer.flush(5)
        wait_for(lambda: got == [2] and b.stats.dead_lettered == 5)
        producer.close()
    dead = read(transport, tp.t + ".dlq", 5)
    assert {dict(r.headers)["eventbus-dlq-error"] for r in dead} == {b"decode"}
    reasons = [dict(r.headers)["eventbus-dlq-reason"] for r in dead]
    assert any(b"ce_specversion" in r for r in reasons)
    assert any(b"malformed JSON" in r for r in reasons)  # msgpack labelled JSON
    assert any(b"neither msgpack nor JSON" in r for r in reasons)


def test_both_direction_route_neither_loops_nor_runs_handlers_twice(
    tp: Names,
    transport: Transport,
) -> None:
    bus = EventBus()
    calls: list[int] = []
    bus.on("chat.message")(lambda s, **kw: calls.append(kw["n"]))
    with make_bridge(bus, transport, "chat", Route.both("chat.*", topic=tp.chat)) as b:
        bus.emit("chat.message", n=1)
        wait_for(lambda: b.stats.echoes == 1, what="own record to come back")
    assert calls == [1]
    assert len(read(transport, tp.chat, 1)) == 1
    assert b.stats.handled == 0


def test_inbound_event_is_not_republished_by_the_same_bridge(
    tp: Names, transport: Transport
) -> None:
    a_bus, b_bus = EventBus(), EventBus()
    with (
        make_bridge(
            b_bus,
            transport,
            "b",
            Route.inbound("x.*", topic=tp.inbox),
            Route.outbound("x.*", topic=tp.outbox),
        ) as b,
        make_bridge(a_bus, transport, "a", Route.outbound("x.*", topic=tp.inbox)),
    ):
        a_bus.emit("x.y", n=1)
        wait_for(lambda: b.stats.handled == 1)
        b_bus.emit("x.z", n=2)  # a local event still goes out
        wait_for(lambda: b.stats.delivered == 1)
    [record] = read(transport, tp.outbox, 1)
    assert dict(record.headers)["ce_type"] == b"x.z"


def test_duplicate_ids_are_dropped(tp: Names, transport: Transport) -> None:
    bus = EventBus()
    got: list[int] = []
    bus.on("a.b")(lambda s, **kw: got.append(kw["n"]))
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"same"),
        ("ce_source", b"t"),
        ("ce_type", b"a.b"),
    ]
    with make_bridge(bus, transport, "svc", Route.inbound("a.b", topic=tp.t)) as b:
        producer = transport.producer()
        for n in range(3):
            producer.produce(tp.t, msgpack.packb({"n": n}), None, headers)
        producer.flush(5)
        wait_for(lambda: b.stats.received == 3)
        producer.close()
    assert got == [0] and b.stats.duplicates == 2


def test_missing_key_field_is_an_error_at_emit(tp: Names, transport: Transport) -> None:
    bus = EventBus()
    with make_bridge(
        bus, transport, "svc", Route.outbound("user.*", topic=tp.users, key="user_id")
    ):
        with pytest.raises(EmitError) as info:
            bus.emit("user.registered", email="a@example.com")
    assert "user_id" in str(info.value.exceptions[0])


def test_unencodable_payload_is_an_error_at_emit(tp: Names, transport: Transport) -> None:
    bus = EventBus()
    with make_bridge(bus, transport, "svc", Route.outbound("user.*", topic=tp.users)) as b:
        with pytest.raises(EmitError) as info:
            bus.emit("user.registered", tags={"a", "b"})
    assert "tags" in str(info.value.exceptions[0])
    assert b.stats.produced == 0


def test_event_matching_two_routes_goes_once_to_each(tp: Names, transport: Transport) -> None:
    bus = EventBus()
    routes = (
        Route.outbound("user.*", topic=tp.users),
        Route.outbound(["user.registered", "audit.**"], topic=tp.audit),
    )
    with make_bridge(bus, transport, "svc", *routes) as b:
        bus.emit("user.registered", n=1)
        bus.signal("user.created.later")  # globs cover signals created later
        bus.emit("user.deleted", n=2)
        wait_for(lambda: b.stats.delivered == 3)
    assert [dict(r.headers)["ce_type"] for r in read(transport, tp.users, 2)] == [
        b"user.registered",
        b"user.deleted",
    ]
    assert len(read(transport, tp.audit, 1)) == 1


def test_restart_resumes_after_committed_offsets(tp: Names, transport: Transport) -> None:
    out = EventBus()
    got: list[int] = []
    inbound = EventBus()
    inbound.on("n.x")(lambda s, **kw: got.append(kw["n"]))
    route = Route.inbound("n.x", topic=tp.numbers)
    with make_bridge(out, transport, "src", Route.outbound("n.x", topic=tp.numbers)) as src:
        with make_bridge(inbound, transport, "dst", route):
            for n in range(5):
                out.emit("n.x", n=n)
            wait_for(lambda: len(got) == 5)
        for n in range(5, 10):  # while the consumer is away
            out.emit("n.x", n=n)
        wait_for(lambda: src.stats.delivered == 10)
        with make_bridge(inbound, transport, "dst", route):
            wait_for(lambda: len(got) == 10)
    assert got == list(range(10))


def test_ready_after_start_even_with_latest_reset(tp: Names, transport: Transport) -> None:
    out, inbound = EventBus(), EventBus()
    got: list[int] = []
    inbound.on("n.x")(lambda s, **kw: got.append(kw["n"]))
    with make_bridge(out, transport, "src", Route.outbound("n.x", topic=tp.fresh)):
        with make_bridge(inbound, transport, "dst", Route.inbound("n.x", topic=tp.fresh)):
            out.emit("n.x", n=1)  # right after start() returned
            wait_for(lambda: got == [1])


def test_per_key_order_across_partitions(tp: Names, transport: Transport) -> None:
    out, inbound = EventBus(), EventBus()
    seen: dict[int, list[int]] = {}
    inbound.on("acct.*")(lambda s, **kw: seen.setdefault(kw["acct"], []).append(kw["seq"]))
    with (
        make_bridge(
            inbound, transport, "ledger", Route.inbound("acct.*", topic=tp.accts), partitions=4
        ),
        make_bridge(
            out,
            transport,
            "api",
            Route.outbound("acct.*", topic=tp.accts, key="acct"),
            partitions=4,
        ),
    ):
        for seq in range(50):
            for acct in range(5):
                out.emit("acct.moved", acct=acct, seq=seq)
        wait_for(lambda: sum(map(len, seen.values())) == 250)
    assert all(v == list(range(50)) for v in seen.values())


def test_trace_context_travels_with_events(tp: Names, transport: Transport) -> None:
    a, b = EventBus(), EventBus()
    traces: list[Any] = []
    b.on("t.x")(lambda s, **kw: traces.append(current_trace()))
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with (
        make_bridge(b, transport, "b", Route.inbound("t.x", topic=tp.tr)),
        make_bridge(a, transport, "a", Route.outbound("t.x", topic=tp.tr)),
    ):
        with trace_context(parent, "k=v"):
            a.emit("t.x")
        wait_for(lambda: traces)
    assert traces == [(parent.encode(), b"k=v")]
    assert current_trace() is None


def test_delivery_failures_are_reported(tp: Names, memory: MemoryTransport) -> None:
    bus = EventBus()
    failures: list[Exception] = []
    with make_bridge(
        bus, memory, "svc", Route.outbound("a.*", topic=tp.t), on_delivery_failure=failures.append
    ) as b:
        memory.broker.fail_next(1)
        bus.emit("a.b", n=1)
        bus.emit("a.b", n=2)
        wait_for(lambda: b.stats.produced == 2)
    assert len(failures) == 1 and "not delivered" in str(failures[0])
    assert b.stats.delivery_failed == 1 and b.stats.delivered == 1


def test_failure_reports_carry_key_and_value_and_stats_count_in_flight(
    tp: Names, memory: MemoryTransport
) -> None:
    bus = EventBus()
    failures: list[DeliveryError] = []
    with make_bridge(
        bus,
        memory,
        "svc",
        Route.outbound("a.*", topic=tp.t, key="k"),
        on_delivery_failure=failures.append,
    ) as b:
        memory.broker.pause_delivery()  # an outage: records wait in the producer
        bus.emit("a.b", k="one", n=1)
        bus.emit("a.b", k="two", n=2)
        assert (b.stats.in_flight, b.stats.produced, b.stats.delivered) == (2, 0, 0)
        memory.broker.fail_next(1)
        memory.broker.resume_delivery()
        wait_for(lambda: b.stats.produced == 2)
        assert (b.stats.in_flight, b.stats.delivered, b.stats.delivery_failed) == (0, 1, 1)
    [failure] = failures
    assert failure.record.key == b"one" and msgpack.unpackb(failure.record.value)["n"] == 1
    assert failure.record.offset == -1


def test_handler_exceptions_never_kill_the_consumer(tp: Names, transport: Transport) -> None:
    out, inbound = EventBus(), EventBus()
    ok: list[int] = []

    @inbound.on("a.b")
    def explode(sender: Any, **kw: Any) -> None:
        if kw["n"] % 2:
            raise SystemError("odd")
        ok.append(kw["n"])

    with (
        make_bridge(inbound, transport, "w", Route.inbound("a.b", topic=tp.t), max_attempts=1) as w,
        make_bridge(out, transport, "src", Route.outbound("a.b", topic=tp.t)),
    ):
        for n in range(6):
            out.emit("a.b", n=n)
        wait_for(lambda: ok == [0, 2, 4] and w.stats.dead_lettered == 3)
        assert w.healthy


def test_stop_during_retry_does_not_store_the_record(tp: Names, transport: Transport) -> None:
    out, inbound = EventBus(), EventBus()
    entered = threading.Event()
    calls: list[int] = []

    @inbound.on("a.b")
    def failing(sender: Any, **kw: Any) -> None:
        calls.append(kw["n"])
        entered.set()
        raise RuntimeError("down")

    route = Route.inbound("a.b", topic=tp.t)
    with make_bridge(out, transport, "src", Route.outbound("a.b", topic=tp.t)):
        with make_bridge(inbound, transport, "w", route, backoff=30.0) as w:
            out.emit("a.b", n=1)
            assert entered.wait(30)
        assert w.stats.dead_lettered == 0 and w.stats.handled == 0
        inbound.off(failing)
        again: list[int] = []
        inbound.on("a.b")(lambda s, **kw: again.append(kw["n"]))
        with make_bridge(inbound, transport, "w", route):
            wait_for(lambda: again == [1], what="the redelivered record")


def test_bad_routes_and_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="topic"):
        Route.outbound("a.b", topic="bad topic")
    with pytest.raises(ConfigError, match="direction"):
        Route(("a.b",), "t", "sideways")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Route.inbound("a..b", topic="t")
    with pytest.raises(ConfigError, match="differ"):
        Route.inbound("a.b", topic="t", dlq="t")
    with pytest.raises(ConfigError):
        Route.outbound([], topic="t")
    bus, t = EventBus(), MemoryTransport()
    with pytest.raises(ConfigError, match="service"):
        Bridge(bus, transport=t, service="", routes=[])
    with pytest.raises(ConfigError, match="max_attempts"):
        Bridge(bus, transport=t, service="s", routes=[], max_attempts=0)
    with pytest.raises(ConfigError, match="Route"):
        Bridge(bus, transport=t, service="s", routes=["a.b"])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="outbox"):
        Bridge(bus, transport=t, service="s", routes=[], outbox=42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="outbox"):
        Bridge(bus, transport=t, service="s", routes=[], outbox="")


def test_start_twice_is_an_error_and_stop_is_idempotent(tp: Names, transport: Transport) -> None:
    b = make_bridge(EventBus(), transport, "s", Route.outbound("a.b", topic=tp.t))
    b.start()
    with pytest.raises(RuntimeError):
        b.start()
    b.stop()
    b.stop()
    assert not b.healthy


def test_codec_is_pluggable_per_bridge(tp: Names) -> None:
    codec = MsgpackCodec(max_size=64)
    t = MemoryTransport()
    bus = EventBus()
    with make_bridge(bus, t, "s", Route.outbound("a.b", topic=tp.t), codec=codec):
        with pytest.raises(EmitError):
            bus.emit("a.b", blob=b"x" * 100)


def test_not_ready_is_a_clear_error(tp: Names) -> None:
    class NeverReady(MemoryTransport):
        def consumer(self, *args: Any, **kwargs: Any) -> Any:
            inner = super().consumer(*args, **kwargs)
            inner.is_ready = lambda: False  # type: ignore[method-assign]
            return inner

    bus = EventBus()
    b = Bridge(
        bus,
        transport=NeverReady(),
        service="s",
        routes=[Route.inbound("a.b", topic=tp.t)],
        ready_timeout=0.3,
    )
    with pytest.raises(NotReadyError, match="not ready within"):
        b.start()
    assert not b.healthy


def test_consumer_lag_is_reported(tp: Names, transport: Transport) -> None:
    out, inbound = EventBus(), EventBus()
    inbound.on("n.x")(lambda s, **kw: None)
    with (
        make_bridge(inbound, transport, "dst", Route.inbound("n.x", topic=tp.lag)) as dst,
        make_bridge(out, transport, "src", Route.outbound("n.x", topic=tp.lag)),
    ):
        assert dst.stats.consumer_lag in (None, 0)
        for n in range(5):
            out.emit("n.x", n=n)
        wait_for(lambda: dst.stats.handled == 5)
        wait_for(lambda: dst.stats.consumer_lag == 0, what="the lag measured at 0")
