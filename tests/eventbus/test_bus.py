"""The EventBus: subscribing, emitting, ordering, isolation, blinker interop."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import blinker
import pytest

from eventbus import ANY, EmitError, Event, EventBus, HandlerFailure, InvalidNameError


def test_emit_calls_handler_with_sender_and_payload(bus: EventBus) -> None:
    calls: list[tuple[Any, dict[str, Any]]] = []

    @bus.on("user.registered")
    def handler(sender: Any, **payload: Any) -> None:
        calls.append((sender, payload))

    bus.emit("user.registered", "me", user_id=42, email="a@example.com")
    bus.emit("user.registered", user_id=43)
    assert calls == [("me", {"user_id": 42, "email": "a@example.com"}), (None, {"user_id": 43})]


def test_on_returns_handler_unchanged(bus: EventBus) -> None:
    def handler(sender: Any) -> None: ...

    assert bus.on("a.b")(handler) is handler


def test_lambda_handler_is_held_strongly(bus: EventBus) -> None:
    seen: list[int] = []
    bus.on("x.y")(lambda sender, **kw: seen.append(kw["n"]))
    gc.collect()
    bus.emit("x.y", n=1)
    assert seen == [1]


def test_signal_is_real_blinker_signal_and_both_paths_meet(bus: EventBus) -> None:
    sig = bus.signal("user.registered")
    assert isinstance(sig, blinker.NamedSignal) and sig.name == "user.registered"
    assert bus.signal("user.registered") is sig
    via_bus: list[Any] = []
    via_blinker: list[Any] = []
    bus.on("user.registered")(lambda s, **kw: via_bus.append(kw))
    sig.connect(lambda s, **kw: via_blinker.append(kw), weak=False)
    sig.send(None, n=1)  # plain blinker send reaches the bus handler
    bus.emit("user.registered", n=2)  # bus emit reaches the blinker receiver
    assert via_bus == [{"n": 1}, {"n": 2}]
    assert via_blinker == [{"n": 1}, {"n": 2}]


def test_adopts_existing_namespace() -> None:
    ns = blinker.Namespace()
    existing = ns.signal("order.placed")
    got: list[Any] = []
    bus = EventBus(ns)
    bus.on("order.*")(lambda s, **kw: got.append(kw))
    assert bus.signal("order.placed") is existing
    existing.send("shop", id=1)
    assert got == [{"id": 1}]


@pytest.mark.parametrize("name", ["", ".a", "a.", "a..b", "a b", "a/b", "user.*"])
def test_invalid_names_are_rejected(bus: EventBus, name: str) -> None:
    with pytest.raises(InvalidNameError):
        bus.emit(name)
    with pytest.raises(InvalidNameError):
        bus.signal(name)


@pytest.mark.parametrize("bad", [None, 42, b"user.registered"])
def test_non_string_names_are_type_errors(bus: EventBus, bad: Any) -> None:
    with pytest.raises(TypeError):
        bus.signal(bad)
    with pytest.raises(TypeError):
        bus.on(bad)


def test_invalid_pattern_rejected(bus: EventBus) -> None:
    with pytest.raises(InvalidNameError):
        bus.on("user.**x")
    with pytest.raises(InvalidNameError):
        bus.on("user..*")(lambda s: None)


def test_glob_matching_rules(bus: EventBus) -> None:
    got: dict[str, list[str]] = {"one": [], "many": [], "all": [], "infix": []}
    bus.on_event("user.*")(lambda e: got["one"].append(e.name))
    bus.on_event("user.**")(lambda e: got["many"].append(e.name))
    bus.on_event("**")(lambda e: got["all"].append(e.name))
    bus.on_event("user.reg*")(lambda e: got["infix"].append(e.name))
    for name in ("user.registered", "user.email.changed", "users.x", "order.placed"):
        bus.emit(name)
    assert got["one"] == ["user.registered"]
    assert got["many"] == ["user.registered", "user.email.changed"]
    assert got["all"] == ["user.registered", "user.email.changed", "users.x", "order.placed"]
    assert got["infix"] == ["user.registered"]


def test_glob_covers_signals_created_later_and_before(bus: EventBus) -> None:
    before = bus.signal("user.before")
    got: list[str] = []
    bus.on_event("user.*")(lambda e: got.append(e.name))
    later = bus.namespace.signal("user.later")  # created on the namespace, not via the bus
    before.send(None)
    later.send(None)
    bus.emit("user.emitted")
    assert got == ["user.before", "user.later", "user.emitted"]


def test_handlers_run_in_registration_order_across_globs(bus: EventBus) -> None:
    order: list[int] = []
    for i in range(20):
        target = "a.b" if i % 3 else ("a.*" if i % 2 else "**")
        bus.on(target)(lambda s, i=i, **kw: order.append(i))
    bus.emit("a.b")
    assert order == list(range(20))
    order.clear()
    bus.signal("a.b").send(None)  # the same order through blinker
    assert order == list(range(20))


def test_off_unsubscribes(bus: EventBus) -> None:
    got: list[str] = []

    def handler(sender: Any, **kw: Any) -> None:
        got.append("x")

    bus.on("a.b")(handler)
    bus.on("a.*")(handler)
    assert bus.off(handler, "a.*") == 1
    bus.emit("a.b")
    assert got == ["x"]
    assert bus.off(handler) == 1
    bus.emit("a.b")
    bus.signal("a.b").send(None)
    assert got == ["x"]


def test_sender_filter(bus: EventBus) -> None:
    class Sender:
        pass

    alice, bob = Sender(), Sender()
    got: list[Any] = []
    bus.on("x.y", sender=alice)(lambda s, **kw: got.append(s))
    bus.emit("x.y", alice)
    bus.emit("x.y", bob)
    bus.emit("x.y")
    assert got == [alice]


def test_sender_filter_dropped_when_sender_is_collected(bus: EventBus) -> None:
    class Sender:
        pass

    sender = Sender()
    bus.on("x.y", sender=sender)(lambda s, **kw: None)
    assert len(bus._slots["x.y"].entries) == 1
    del sender
    gc.collect()
    assert bus._slots["x.y"].entries == ()


def test_sender_filter_with_unweakrefable_sender(bus: EventBus) -> None:
    got: list[Any] = []
    bus.on("x.y", sender="svc")(lambda s, **kw: got.append(s))
    bus.emit("x.y", "svc")
    bus.emit("x.y", "other")
    assert got == ["svc"]


def test_failing_handler_does_not_stop_others_and_errors_are_grouped(bus: EventBus) -> None:
    ran: list[str] = []

    @bus.on("a.b")
    def first(sender: Any, **kw: Any) -> None:
        ran.append("first")
        raise ValueError("boom")

    @bus.on("a.b")
    def second(sender: Any, **kw: Any) -> None:
        ran.append("second")

    @bus.on("a.*")
    def third(sender: Any, **kw: Any) -> None:
        ran.append("third")
        raise KeyError("k")

    with pytest.raises(EmitError) as info:
        bus.emit("a.b", n=1)
    assert ran == ["first", "second", "third"]
    err = info.value
    assert isinstance(err, ExceptionGroup)
    assert [type(e) for e in err.exceptions] == [ValueError, KeyError]
    assert [f.handler for f in err.failures] == [first, third]
    assert err.event == "a.b" and "first" in str(err)
    assert any("first" in note for note in err.exceptions[0].__notes__)


def test_failures_through_plain_blinker_send_are_grouped_too(bus: EventBus) -> None:
    ran: list[str] = []
    bus.on("a.b")(lambda s, **kw: 1 / 0)
    bus.on("a.b")(lambda s, **kw: ran.append("ok"))
    with pytest.raises(EmitError):
        bus.signal("a.b").send(None)
    assert ran == ["ok"]


def test_except_star_works_on_emit_error(bus: EventBus) -> None:
    bus.on("a.b")(lambda s, **kw: 1 / 0)
    caught = []
    try:
        bus.emit("a.b")
    except* ZeroDivisionError as group:
        caught.append(group)
    assert len(caught) == 1


def test_foreign_blinker_receiver_failure_is_isolated(bus: EventBus) -> None:
    ran: list[str] = []

    def bad(sender: Any, **kw: Any) -> None:
        raise RuntimeError("foreign")

    bus.signal("a.b").connect(bad)
    bus.on("a.b")(lambda s, **kw: ran.append("bus"))
    with pytest.raises(EmitError) as info:
        bus.emit("a.b")
    assert ran == ["bus"]
    assert info.value.failures[0].handler is bad


def test_log_policy_logs_and_continues(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus(on_error="log")
    ran: list[str] = []
    bus.on("a.b")(lambda s, **kw: 1 / 0)
    bus.on("a.b")(lambda s, **kw: ran.append("ok"))
    with caplog.at_level(logging.ERROR, logger="eventbus"):
        bus.emit("a.b")
    assert ran == ["ok"]
    assert "failed for event 'a.b'" in caplog.text and "ZeroDivisionError" in caplog.text


def test_callback_policy_receives_each_failure() -> None:
    got: list[HandlerFailure] = []
    bus = EventBus(on_error=got.append)
    bus.on("a.b")(lambda s, **kw: 1 / 0)
    bus.on("a.b")(lambda s, **kw: [][1])
    bus.emit("a.b")
    assert [type(f.exception) for f in got] == [ZeroDivisionError, IndexError]


def test_bad_policy_rejected() -> None:
    with pytest.raises(ValueError):
        EventBus(on_error="ignore")  # type: ignore[arg-type]


def test_failure_retry_calls_only_that_handler(bus: EventBus) -> None:
    calls: list[str] = []
    attempts = iter([ValueError("once"), None])

    @bus.on("a.b")
    def flaky(sender: Any, **kw: Any) -> None:
        calls.append(f"flaky {kw['n']}")
        exc = next(attempts)
        if exc:
            raise exc

    bus.on("a.b")(lambda s, **kw: calls.append("steady"))
    failures = bus.dispatch("a.b", None, {"n": 7})
    assert calls == ["flaky 7", "steady"]
    failures[0].retry()
    assert calls == ["flaky 7", "steady", "flaky 7"]


def test_dispatch_returns_failures_without_policy(bus: EventBus) -> None:
    bus.on("a.b")(lambda s, **kw: 1 / 0)
    failures = bus.dispatch("a.b", "remote", {})
    assert len(failures) == 1 and isinstance(failures[0].exception, ZeroDivisionError)
    assert bus.dispatch("a.c", None, {}) == []


def test_async_handlers_awaited_by_emit_async(bus: EventBus) -> None:
    order: list[str] = []

    @bus.on("a.b")
    async def slow(sender: Any, **kw: Any) -> None:
        await asyncio.sleep(0)
        order.append("async")

    bus.on("a.b")(lambda s, **kw: order.append("sync"))
    asyncio.run(bus.emit_async("a.b"))
    assert order == ["async", "sync"]


def test_emit_async_isolates_failures(bus: EventBus) -> None:
    ran: list[str] = []

    async def bad(sender: Any, **kw: Any) -> None:
        raise ValueError("x")

    bus.on("a.b")(bad)
    bus.on("a.b")(lambda s, **kw: ran.append("ok"))
    with pytest.raises(EmitError):
        asyncio.run(bus.emit_async("a.b"))
    assert ran == ["ok"]


def test_sync_emit_runs_async_handler_without_loop(bus: EventBus) -> None:
    got: list[int] = []

    async def handler(sender: Any, **kw: Any) -> None:
        got.append(kw["n"])

    bus.on("a.b")(handler)
    bus.emit("a.b", n=1)
    assert got == [1]


def test_sync_emit_inside_loop_reports_async_handler(bus: EventBus) -> None:
    async def handler(sender: Any, **kw: Any) -> None: ...

    bus.on("a.b")(handler)

    async def main() -> None:
        with pytest.raises(EmitError) as info:
            bus.emit("a.b")
        assert "emit_async" in str(info.value.exceptions[0])

    asyncio.run(main())


def test_muted_bus_and_muted_signal(bus: EventBus) -> None:
    got: list[int] = []
    bus.on("a.b")(lambda s, **kw: got.append(1))
    with bus.muted():
        bus.emit("a.b")
        bus.signal("a.b").send(None)
    with bus.signal("a.b").muted():
        bus.emit("a.b")
    bus.emit("a.b")
    assert got == [1]


def test_capture_records_only_inside_block(bus: EventBus) -> None:
    bus.emit("user.before", n=0)
    with bus.capture("user.*") as events:
        bus.emit("user.registered", "svc", user_id=42)
        bus.emit("order.placed", id=1)
        bus.signal("user.deleted").send(None, user_id=1)
    bus.emit("user.after", n=2)
    assert events == [
        Event("user.registered", "svc", {"user_id": 42}),
        Event("user.deleted", None, {"user_id": 1}),
    ]
    assert events[0].payload["user_id"] == 42


def test_emit_from_many_threads_while_subscribing(bus: EventBus) -> None:
    counts: list[int] = []
    lock = threading.Lock()

    def count(sender: Any, **kw: Any) -> None:
        with lock:
            counts.append(kw["n"])

    bus.on("t.x")(count)
    errors: list[BaseException] = []

    def emitter() -> None:
        try:
            for i in range(2000):
                bus.emit("t.x", n=i)
        except BaseException as exc:  # pragma: no cover - only on failure
            errors.append(exc)

    def subscriber() -> None:
        for i in range(200):
            fn = bus.on(f"t.{'*' if i % 2 else 'x'}")(lambda s, **kw: None)
            bus.off(fn)

    threads = [threading.Thread(target=emitter) for _ in range(4)]
    threads.append(threading.Thread(target=subscriber))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(counts) == 8000  # the steady handler saw every emit exactly once


def test_any_is_blinkers_any() -> None:
    assert ANY is blinker.ANY


def test_repr(bus: EventBus) -> None:
    bus.on("a.b")(lambda s: None)
    assert "handlers=1" in repr(bus)


def test_dispatch_async_awaits_async_handlers_and_runs_sync_ones_on_the_executor() -> None:
    bus = EventBus()
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    order: list[str] = []
    threads: dict[str, int] = {}

    @bus.on("a.b")
    async def first(sender: object, *, n: int) -> None:
        await asyncio.sleep(0)
        threads["first"] = threading.get_ident()
        order.append("first")

    @bus.on("a.b")
    def second(sender: object, *, n: int) -> None:
        threads["second"] = threading.get_ident()
        order.append(f"second {var.get()}")
        raise ValueError("boom")

    async def main() -> None:
        var.set("carried")
        with ThreadPoolExecutor(1) as pool:
            failures = await bus.dispatch_async("a.b", None, {"n": 1}, executor=pool)
            assert [f.handler for f in failures] == [second]
            assert "in handler" in str(failures[0].exception.__notes__)
            with pytest.raises(ValueError, match="boom"):
                await failures[0].retry()  # awaitable, on the executor again
        threads["loop"] = threading.get_ident()

    asyncio.run(main())
    assert order == ["first", "second carried", "second carried"]
    assert threads["first"] == threads["loop"] != threads["second"]


def test_dispatch_async_without_executor_runs_sync_handlers_inline_and_validates() -> None:
    bus = EventBus()
    got: list[int] = []
    bus.on("a.b")(lambda sender, *, n: got.append(n))
    assert asyncio.run(bus.dispatch_async("a.b", None, {"n": 2})) == []
    assert got == [2]
    with bus.muted():
        assert asyncio.run(bus.dispatch_async("a.b", None, {"n": 3})) == []
    assert got == [2]


def test_subscriptions_lists_what_has_handlers() -> None:
    bus = EventBus()
    assert bus.subscriptions() == []
    bus.on("user.*")(lambda sender, **_: None)
    bus.on_event("order.placed")(lambda event: None)
    bus.on("user.*")(lambda sender, **_: None)  # listed once
    bus.signal("audit.logged").connect(lambda sender, **_: None, weak=False)  # blinker direct
    bus.signal("unused.signal")  # a signal without receivers is not listed
    assert bus.subscriptions() == ["user.*", "order.placed", "audit.logged"]
