"""A bridge hosted on the application's event loop (``async with bridge``), on
MemoryTransport and the real broker."""

from __future__ import annotations

import asyncio
import random
import threading
from typing import Any

import pytest

from bridge import Bridge, MemoryTransport, Remote, Route, Transport
from eventbus import EventBus
from tests.bridge.helpers import make_bridge as bridge
from tests.bridge.helpers import read, unique


async def until(predicate: Any, what: str, timeout: float = 20.0) -> None:
    """Await (without blocking the loop) until ``predicate()`` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)


class LoopBound:
    """Stands for an asyncpg pool or an httpx.AsyncClient: usable on its own loop only."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.lock = asyncio.Lock()
        self.calls: list[Any] = []

    async def write(self, item: Any) -> None:
        assert asyncio.get_running_loop() is self.loop, "used from a foreign event loop"
        async with self.lock:
            await asyncio.sleep(0)
            self.calls.append(item)


def test_async_handlers_run_on_the_apps_loop_and_sync_handlers_off_it(
    transport: Transport,
) -> None:
    topic = unique("aio-loop")

    async def app() -> None:
        pool = LoopBound()
        loop_thread = threading.get_ident()
        out, inbound = EventBus(), EventBus()
        sync_threads: list[int] = []
        senders: list[Any] = []

        @inbound.on("user.registered")
        async def welcome(sender: Any, *, user_id: int) -> None:
            senders.append(sender)
            await pool.write(user_id)

        @inbound.on("user.registered")
        def audit(sender: Any, *, user_id: int) -> None:
            sync_threads.append(threading.get_ident())

        route = Route.inbound("user.*", topic=topic)
        async with bridge(inbound, transport, "mail", route, concurrency=4):
            with bridge(out, transport, "users", Route.outbound("user.*", topic=topic)):
                for user_id in range(5):
                    out.emit("user.registered", user_id=user_id)
                await until(lambda: len(pool.calls) == 5 and len(sync_threads) == 5, "handlers")
        assert sorted(pool.calls) == list(range(5))
        assert loop_thread not in sync_threads  # sync handlers never block the loop
        assert all(type(s) is Remote and s.source == "users" for s in senders)

    asyncio.run(app())


@pytest.mark.parametrize("seed", [3])
def test_key_order_holds_for_async_handlers(transport: Transport, seed: int) -> None:
    rng = random.Random(seed)
    topic = unique("aio-order")

    async def app() -> None:
        out, inbound = EventBus(), EventBus()
        seen: dict[int, list[int]] = {}
        running: dict[int, int] = {}
        overlap: list[int] = []
        most = [0]

        @inbound.on("acct.moved")
        async def handle(sender: Any, *, acct: int, seq: int) -> None:
            running[acct] = running.get(acct, 0) + 1
            if running[acct] > 1:
                overlap.append(acct)
            most[0] = max(most[0], sum(running.values()))
            await asyncio.sleep(rng.random() * 0.003)
            running[acct] -= 1
            seen.setdefault(acct, []).append(seq)

        route = Route.inbound("acct.*", topic=topic)
        async with bridge(inbound, transport, "ledger", route, concurrency=8, partitions=2):
            with bridge(
                out,
                transport,
                "api",
                Route.outbound("acct.*", topic=topic, key="acct"),
                partitions=2,
            ):
                for seq in range(20):
                    for acct in range(8):
                        out.emit("acct.moved", acct=acct, seq=seq)
                await until(lambda: sum(map(len, seen.values())) == 160, "160 events")
        assert seen == {acct: list(range(20)) for acct in range(8)}
        assert not overlap and most[0] > 1

    asyncio.run(app())


def test_sync_emit_inside_the_loop_publishes_without_blocking(transport: Transport) -> None:
    first, second = unique("aio-in"), unique("aio-out")

    async def app() -> None:
        a, b = EventBus(), EventBus()
        got: list[int] = []
        b.on("order.shipped")(lambda sender, *, n: got.append(n))

        @a.on("order.placed")
        async def ship(sender: Any, *, n: int) -> None:
            a.emit("order.shipped", n=n)  # sync emit on the loop, to an outbound route

        routes = [
            Route.inbound("order.placed", topic=first),
            Route.outbound("order.shipped", topic=second),
        ]
        async with bridge(a, transport, "shop", *routes, concurrency=2):
            with (
                bridge(b, transport, "mail", Route.inbound("order.shipped", topic=second)),
                bridge(EventBus(), transport, "api", Route.outbound("order.*", topic=first)) as c,
            ):
                for n in range(10):
                    c.bus.emit("order.placed", n=n)
                await until(lambda: sorted(got) == list(range(10)), "the shipped events")

    asyncio.run(app())


def test_failing_async_handler_is_retried_then_dead_lettered(transport: Transport) -> None:
    topic = unique("aio-fail")
    calls: list[int] = []

    async def app() -> Bridge:
        inbound = EventBus()

        @inbound.on("n.x")
        async def flaky(sender: Any, *, n: int) -> None:
            calls.append(n)
            if n == 0 or calls.count(1) == 1:  # n=0 always fails; n=1 fails once
                raise RuntimeError(f"down {n}")

        route = Route.inbound("n.x", topic=topic)
        async with bridge(inbound, transport, "w", route, max_attempts=3) as b:
            with bridge(EventBus(), transport, "api", Route.outbound("n.x", topic=topic)) as o:
                o.bus.emit("n.x", n=0)
                await until(lambda: b.stats.dead_lettered == 1, "the dead letter")
                o.bus.emit("n.x", n=1)
                await until(lambda: b.stats.handled == 1, "n=1 after one retry")
        return b

    b = asyncio.run(app())
    assert calls == [0, 0, 0, 1, 1]
    assert b.stats.retried == 3
    [letter] = read(transport, f"{topic}.dlq", 1)
    assert b"down 0" in dict(letter.headers)["eventbus-dlq-reason"]


def test_blocking_stop_on_the_loop_is_refused() -> None:
    async def app() -> None:
        transport = MemoryTransport()
        b = bridge(EventBus(), transport, "w", Route.inbound("n.x", topic="t"))
        await b.start_async()
        with pytest.raises(RuntimeError, match="stop_async"):
            b.stop()
        await b.stop_async()
        assert not b.healthy

    asyncio.run(app())
