"""Delayed retry topics (``retry_delays``), on MemoryTransport and the real broker.

Delays are short; each is checked against the due time the bridge wrote in the retry
record, never against a guessed sleep.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import Any

import pytest

from bridge import (
    Bridge,
    ConfigError,
    MsgpackCodec,
    Route,
    Transport,
)
from bridge._retry_topics import RetryTopics
from bridge._routes import format_delay
from bridge._transport import Record
from eventbus import EventBus, handler_name
from tests.bridge.helpers import read, wait_for


class Worker:
    """``flaky`` fails for the n in ``bad`` while ``broken`` is set; ``steady`` never fails.
    Every call is recorded with its wall-clock time."""

    def __init__(
        self, transport: Transport, topic: str, delays: list[float], **options: Any
    ) -> None:
        self.bus = EventBus()
        self.broken = threading.Event()
        self.broken.set()
        self.bad: set[int] = set()
        self.fail_times: dict[int, int] = {}  # n -> how many more calls fail (any flag)
        self.flaky_calls: list[tuple[int, float]] = []
        self.steady_calls: list[int] = []
        self.steady_at: dict[int, float] = {}

        @self.bus.on("order.*")
        def steady(sender: Any, n: int, **_: Any) -> None:
            self.steady_calls.append(n)
            self.steady_at[n] = time.time()

        @self.bus.on("order.*")
        def flaky(sender: Any, n: int, **_: Any) -> None:
            self.flaky_calls.append((n, time.time()))
            if self.fail_times.get(n, 0) > 0:
                self.fail_times[n] -= 1
                raise ConnectionError(f"service down for {n}, once")
            if self.broken.is_set() and n in self.bad:
                raise ConnectionError(f"service down for {n}")

        self.flaky_name = handler_name(flaky)
        self.route = Route.inbound("order.*", topic=topic, retry_delays=delays)
        self.bridge = Bridge(
            self.bus,
            transport=transport,
            service="worker",
            routes=[self.route],
            max_attempts=1,
            **options,
        )

    def calls(self, n: int) -> list[float]:
        return [at for m, at in self.flaky_calls if m == n]


def emit(transport: Transport, topic: str, ns: list[int]) -> None:
    bus = EventBus()
    route = Route.outbound("order.*", topic=topic, key="k")
    with Bridge(bus, transport=transport, service="shop", routes=[route]):
        for n in ns:
            bus.emit("order.placed", n=n, k="one-key")


def new_topic() -> str:
    return f"orders-{uuid.uuid4().hex[:10]}"


def test_retry_topics_are_named_after_their_delays_and_checked() -> None:
    route = Route.inbound("a.*", topic="orders", retry_delays=[10, 60, 600, 0.25, 10])
    assert route.retry_topics == (
        "orders.retry.10s",
        "orders.retry.1m",
        "orders.retry.10m",
        "orders.retry.250ms",
        "orders.retry.10s",
    )
    custom = Route.inbound(
        "a.*", topic="orders", retry_delays=[5], retry_topic="retry-{delay}-{topic}"
    )
    assert custom.retry_topics == ("retry-5s-orders",)
    assert format_delay(90) == "90s" and format_delay(7200) == "2h" and format_delay(86400) == "1d"
    for bad in ([0], [-1], ["10s"], [True], [10] * 21, [8 * 86400]):
        with pytest.raises(ConfigError, match="retry"):
            Route.inbound("a.*", topic="orders", retry_delays=bad)
    for template in (
        "{topic}.retry",
        "{topic.__class__}{delay}",
        "{0}{delay}",
        "bad topic {delay}",
    ):
        with pytest.raises(ConfigError):
            Route.inbound("a.*", topic="orders", retry_delays=[1], retry_topic=template)
    with pytest.raises(ConfigError, match="inbound"):
        Route("a.b", "orders", "out", retry_delays=(1.0,))


def test_records_wait_on_retry_topics_while_the_partition_flows_then_the_dlq(
    transport: Transport,
) -> None:
    topic = new_topic()
    # The first delay is the time the 5 records behind the failed one have to be fetched
    # and handled to show that the partition did not wait: 2 s, for a loaded machine
    # (fetching them may wait for the retry record's produce to be acknowledged).
    worker = Worker(transport, topic, [2.0, 0.5])
    worker.bad = {0}
    with worker.bridge as bridge:
        emit(transport, topic, [0, 1, 2, 3, 4, 5])
        # the records after the failing one, same key, same partition, are not held up
        wait_for(lambda: sorted(worker.steady_calls) == [0, 1, 2, 3, 4, 5], 30, "the others")
        wait_for(lambda: bridge.stats.dead_lettered == 1, 30, "the dead letter")
        stats = bridge.stats
        assert stats.retries_scheduled == 2 and stats.retries_due == 2
        assert stats.retries_handled == 0
    first, second = (read(transport, t, 1)[0] for t in worker.route.retry_topics)
    due1 = int(dict(first.headers)["eventbus-retry-due"]) / 1000
    due2 = int(dict(second.headers)["eventbus-retry-due"]) / 1000
    failed, retry1, retry2 = worker.calls(0)
    assert retry1 >= due1 and retry2 >= due2  # never before due
    # the partition did not wait: the records behind it were handled before it was due
    assert max(worker.steady_at[n] for n in range(1, 6)) < due1
    # due = the failure's time + the delay, in whole milliseconds; the upper bound leaves
    # half a second for the process to be descheduled between the call and the due time
    assert 1.998 <= due1 - failed < 2.5 and 0.498 <= due2 - retry1 < 1.0
    assert worker.steady_calls.count(0) == 1  # only the failed handler ran again
    headers = dict(second.headers)
    assert headers["eventbus-retry-attempt"] == b"2"
    assert headers["eventbus-retry-topic"] == topic.encode()
    assert headers["eventbus-retry-offset"] == b"0" and headers["eventbus-retry-partition"] == b"0"
    assert (
        headers["eventbus-retry-first-failure"]
        == dict(first.headers)["eventbus-retry-first-failure"]
    )
    assert json.loads(headers["eventbus-rerun-handlers"]) == [worker.flaky_name]
    assert b"service down for 0" in headers["eventbus-retry-reason"]
    [dead] = read(transport, topic + ".dlq", 1)
    letter = dict(dead.headers)
    assert letter["eventbus-dlq-topic"] == topic.encode()
    assert letter["eventbus-dlq-partition"] == b"0" and letter["eventbus-dlq-offset"] == b"0"
    assert letter["eventbus-dlq-attempts"] == b"2"
    assert json.loads(letter["eventbus-dlq-handlers"]) == [worker.flaky_name]
    assert b"after 2 delayed retries" in letter["eventbus-dlq-reason"]
    assert b"service down for 0" in letter["eventbus-dlq-traceback"]
    assert MsgpackCodec().decode(dead.value or b"") == {"n": 0, "k": "one-key"}


def test_with_concurrency_retries_wait_and_the_rest_flows(transport: Transport) -> None:
    topic = new_topic()
    worker = Worker(transport, topic, [0.6, 0.3], concurrency=4)
    worker.bad = {1, 4}
    bus = EventBus()
    route = Route.outbound("order.*", topic=topic, key="k")
    with worker.bridge as bridge, Bridge(bus, transport=transport, service="shop", routes=[route]):
        for n in range(8):
            bus.emit("order.placed", n=n, k=f"key-{n % 3}")
        wait_for(lambda: sorted(worker.steady_calls) == list(range(8)), 30, "every record")
        wait_for(lambda: bridge.stats.retries_due == 4, 30, "two retries of each failing one")
        wait_for(lambda: bridge.stats.dead_lettered == 2, 30, "the dead letters")
    for n in (1, 4):
        failed, retry1, retry2 = worker.calls(n)
        # (due times are whole milliseconds: 2 ms of rounding)
        assert retry1 - failed >= 0.598 and retry2 - retry1 >= 0.298
    assert all(len(worker.calls(n)) == 1 for n in (0, 2, 3, 5, 6, 7))
    assert sorted(worker.steady_calls) == list(range(8))


def test_a_retry_succeeds_once_the_cause_is_gone(transport: Transport) -> None:
    topic = new_topic()
    worker = Worker(transport, topic, [0.5, 5.0])
    worker.fail_times = {7: 1}  # fails on its first delivery only
    with worker.bridge as bridge:
        emit(transport, topic, [7])
        # retries_handled is counted as the retry's handler returns, handled only once
        # its batch is done: wait for both, not the first alone.
        wait_for(
            lambda: bridge.stats.retries_handled == 1 and bridge.stats.handled == 1,
            30,
            "the retry handled and counted",
        )
        stats = bridge.stats
        assert stats.retries_scheduled == 1 and stats.retries_due == 1
        assert stats.dead_lettered == 0 and stats.handled == 1  # the retry
    assert bridge.stats.handled == 1 and bridge.stats.retries_handled == 1  # no more
    assert len(worker.calls(7)) == 2 and worker.steady_calls == [7]


@pytest.mark.parametrize("concurrency", [1, 4])
def test_retries_are_counted_per_route_in_stats_and_metrics(
    transport: Transport, concurrency: int
) -> None:
    """Two routes with retry_delays, one without: scheduled / due / handled per route
    (by its topic) in ``stats.retries_by_route`` and as the ``route`` label in /metrics;
    the bridge's totals are their sums. (concurrency 1 and 4 count on different paths.)"""
    import urllib.request

    from bridge._metrics import serve_metrics

    a, b, plain = new_topic(), new_topic(), new_topic()
    bus = EventBus()
    calls: list[int] = []

    @bus.on("a.*")
    @bus.on("b.*")
    @bus.on("c.*")
    def handle(sender: Any, n: int) -> None:
        calls.append(n)
        if n in (2, 3) or (n == 1 and calls.count(1) == 1):
            raise ConnectionError(f"down for {n}")  # 1 once, 2 and 3 always

    routes = [
        Route.inbound("a.*", topic=a, retry_delays=[0.2, 0.2]),
        Route.inbound("b.*", topic=b, retry_delays=[0.2]),
        Route.inbound("c.*", topic=plain),
    ]
    bridge = Bridge(
        bus,
        transport=transport,
        service="worker",
        routes=routes,
        max_attempts=1,
        concurrency=concurrency,
    )
    server = serve_metrics(bridge, "127.0.0.1", 0)
    try:
        with bridge:
            sender = EventBus()
            outbound = [
                Route.outbound("a.*", topic=a),
                Route.outbound("b.*", topic=b),
                Route.outbound("c.*", topic=plain),
            ]
            with Bridge(sender, transport=transport, service="shop", routes=outbound):
                for name, n in [("a.x", 0), ("a.x", 1), ("a.x", 2), ("b.x", 3), ("b.x", 4)]:
                    sender.emit(name, n=n)
                sender.emit("c.x", n=5)
            stats = bridge.stats
            wait_for(
                lambda: (
                    (stats.dead_lettered, stats.retries_due, stats.retries_handled) == (2, 4, 1)
                ),
                30,
                "the retries and the two dead letters",
            )
            url = f"http://127.0.0.1:{server.port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
    finally:
        server.close()
    # a: 1 fails once (one retry, handled), 2 always (two retries, then the DLQ);
    # b: 3 always (one retry, then the DLQ); plain has no retry topics
    by_route = {
        topic: (c.retries_scheduled, c.retries_due, c.retries_handled)
        for topic, c in stats.retries_by_route.items()
    }
    assert by_route == {a: (3, 3, 1), b: (1, 1, 0)}
    assert (stats.retries_scheduled, stats.retries_due, stats.retries_handled) == (4, 4, 1)
    for route, (scheduled, due, handled) in by_route.items():
        labels = f'{{route="{route}",service="worker"}}'
        assert f"eventbus_bridge_retries_scheduled_total{labels} {scheduled}.0" in text
        assert f"eventbus_bridge_retries_due_total{labels} {due}.0" in text
        assert f"eventbus_bridge_retries_handled_total{labels} {handled}.0" in text
    assert f'route="{plain}"' not in text
    assert 'eventbus_bridge_retries_scheduled_total{service="worker"}' not in text


def test_retry_records_survive_a_restart_and_nothing_runs_twice(transport: Transport) -> None:
    topic = new_topic()
    # The first bridge must be stopped before the retry is due (else it fails again there,
    # the cause not fixed yet, and is dead-lettered). Measured under load (10 on 2 cores):
    # failure to "scheduled" (the retry record acknowledged) 0.5-0.75 s, stop 0.15 s.
    worker = Worker(transport, topic, [5.0])
    worker.bad = {3}
    with worker.bridge as bridge:
        emit(transport, topic, [3])
        wait_for(lambda: bridge.stats.retries_scheduled == 1, 30, "the retry")
    # stopped while the retry waits (its partition paused); a new bridge takes over
    worker.broken.clear()
    again = Bridge(
        worker.bus, transport=transport, service="worker", routes=[worker.route], max_attempts=1
    )
    with again:
        wait_for(lambda: again.stats.retries_handled == 1, 30, "the retry after the restart")
    assert len(worker.calls(3)) == 2 and worker.steady_calls == [3]


def test_hostile_retry_headers_are_dead_lettered_and_the_stream_goes_on(
    transport: Transport,
) -> None:
    topic = new_topic()
    worker = Worker(transport, topic, [0.5])
    retry_topic = worker.route.retry_topics[0]
    codec = MsgpackCodec()
    now = int(time.time() * 1000)

    def record(n: int, **retry: Any) -> list[tuple[str, bytes]]:
        fields = {
            "attempt": b"1",
            "first-failure": str(now).encode(),
            "due": str(now).encode(),
            "reason": b"r",
            "topic": topic.encode(),
            "partition": b"0",
            "offset": b"0",
        }
        fields.update(retry)
        headers = [
            ("ce_specversion", b"1.0"),
            ("ce_id", f"id-{n}".encode()),
            ("ce_source", b"shop"),
            ("ce_type", b"order.placed"),
        ]
        headers += [("eventbus-retry-" + k, v) for k, v in fields.items() if v is not None]
        headers += [("eventbus-rerun-service", b"worker")]
        handlers = retry.get("handlers", json.dumps([worker.flaky_name]).encode())
        headers += [("eventbus-rerun-handlers", handlers), ("eventbus-rerun-id", f"x{n}".encode())]
        return headers

    hostile = [
        record(1, due=b"soon"),
        record(2, due=str(now + 10**12).encode()),  # due in 30 years: stale
        record(3, attempt=b"2"),  # the topic has one delay
        record(4, topic=None),
        record(5, attempt=b"-1"),
        record(6, handlers=b'["os.system"]'),
        record(7, handlers=b"[[]]"),
    ]
    producer = transport.producer()
    with worker.bridge as bridge:
        for n, headers in enumerate(hostile, 1):
            producer.produce(retry_topic, codec.encode({"n": n, "k": "x"}), None, headers)
        producer.produce(retry_topic, codec.encode({"n": 99, "k": "x"}), None, record(99))
        assert producer.flush(10) == 0
        wait_for(lambda: bridge.stats.retries_handled == 1, 30, "the valid retry")
        wait_for(lambda: bridge.stats.dead_lettered == len(hostile), 30, "the dead letters")
        assert bridge.healthy
    producer.close()
    reasons = [
        dict(r.headers)["eventbus-dlq-reason"].decode() for r in read(transport, topic + ".dlq", 7)
    ]
    assert all("retry headers" in r for r in reasons), reasons
    assert worker.calls(99) and not any(worker.calls(n) for n in range(1, 8))


def test_hold_pauses_at_the_first_record_not_due_and_resumes_when_due() -> None:
    """The consumer thread never sleeps for a retry: it pauses and rewinds, then resumes."""
    now = [1000.0]
    retries = RetryTopics([Route.inbound("a.*", topic="t", retry_delays=[5])], clock=lambda: now[0])
    calls: list[tuple[str, Any]] = []

    class FakeConsumer:
        def pause(self, partitions: list[tuple[str, int]]) -> None:
            calls.append(("pause", partitions))

        def seek(self, record: Record) -> None:
            calls.append(("seek", (record.partition, record.offset)))

        def resume(self, partitions: list[tuple[str, int]]) -> None:
            calls.append(("resume", partitions))

    def retry(partition: int, offset: int, due: float, service: str = "svc") -> Record:
        headers = [
            ("eventbus-retry-due", str(int(due * 1000)).encode()),
            ("eventbus-rerun-service", service.encode()),
        ]
        return Record("t.retry.5s", partition, offset, None, b"", headers)

    due_now = retry(0, 0, 999.0)
    later = retry(0, 1, 1004.0)
    after_it = retry(0, 2, 999.0)  # behind a held record: comes again after it
    other = retry(1, 0, 1003.0)
    foreign = retry(2, 0, 1004.0, service="billing")  # skipped by prepare(), not held
    stale = retry(3, 0, 1000.0 + 3600)  # beyond the delay: dead-lettered by prepare()
    main = Record("t", 0, 7, None, b"", [])
    consumer: Any = FakeConsumer()
    kept = retries.hold(consumer, [due_now, later, main, after_it, other, foreign, stale], "svc")
    assert kept == [due_now, main, foreign, stale]
    assert calls == [
        ("pause", [("t.retry.5s", 0)]),
        ("seek", (0, 1)),
        ("pause", [("t.retry.5s", 1)]),
        ("seek", (1, 0)),
    ]
    calls.clear()
    now[0] = 1003.5
    assert retries.hold(consumer, [], "svc") == []
    assert calls == [("resume", [("t.retry.5s", 1)])]
    now[0] = 1004.0
    retries.hold(consumer, [], "svc")
    assert calls[-1] == ("resume", [("t.retry.5s", 0)]) and not retries.paused


def test_on_the_apps_event_loop_only_the_failed_async_handler_is_retried(
    transport: Transport,
) -> None:
    topic = new_topic()
    calls: list[tuple[str, int]] = []
    failing = {2: 1}  # n -> failures left

    async def app() -> None:
        bus = EventBus()

        @bus.on("order.placed")
        async def notify(sender: Any, n: int, **_: Any) -> None:
            assert asyncio.get_running_loop() is loop
            calls.append(("notify", n))
            if failing.get(n):
                failing[n] -= 1
                raise ConnectionError("mail server down")

        @bus.on("order.placed")
        def book(sender: Any, n: int, **_: Any) -> None:
            calls.append(("book", n))

        loop = asyncio.get_running_loop()
        route = Route.inbound("order.*", topic=topic, retry_delays=[0.3])
        bridge = Bridge(
            bus, transport=transport, service="aio", routes=[route], max_attempts=1, concurrency=2
        )
        async with bridge:
            await asyncio.to_thread(emit, transport, topic, [1, 2, 3])
            deadline = loop.time() + 30
            # Records 1 and 3 and the retry of 2: the retry may be due before 3 is fetched.
            while (
                bridge.stats.retries_handled < 1 or bridge.stats.handled < 3
            ) and loop.time() < deadline:
                await asyncio.sleep(0.01)
            assert bridge.stats.retries_handled == 1 and bridge.stats.handled == 3

    asyncio.run(app())
    assert calls.count(("notify", 2)) == 2 and calls.count(("book", 2)) == 1
    assert sorted(c for c in calls if c[1] != 2) == [
        ("book", 1),
        ("book", 3),
        ("notify", 1),
        ("notify", 3),
    ]
