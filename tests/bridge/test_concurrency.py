"""Key-ordered concurrency (``Bridge(concurrency=N)``), on MemoryTransport and the real broker.

Records with the same key run one at a time and in order, different keys in parallel;
offsets are stored only up to the lowest unfinished record of each partition (the
watermark); fetching pauses while too many records wait.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest

from bridge import Bridge, ConfigError, MemoryTransport, Route, Transport
from bridge._inbound import PAUSE_AFTER
from eventbus import EventBus
from tests.bridge.helpers import make_bridge as bridge
from tests.bridge.helpers import read, unique, wait_for


class Tracker:
    """Records the order handlers saw per key, and how many ran at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[Any, list[int]] = {}
        self.active: dict[Any, int] = {}
        self.running = 0
        self.most = 0
        self.overlap_within_key = False

    def enter(self, key: Any) -> None:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.active[key] = self.active.get(key, 0) + 1
            if self.active[key] > 1:
                self.overlap_within_key = True

    def leave(self, key: Any, seq: int) -> None:
        with self.lock:
            self.running -= 1
            self.active[key] -= 1
            self.seen.setdefault(key, []).append(seq)

    def total(self) -> int:
        with self.lock:
            return sum(map(len, self.seen.values()))


@pytest.mark.parametrize("seed", [1, 2])
def test_per_key_order_holds_under_random_handler_latencies(
    transport: Transport, seed: int
) -> None:
    rng = random.Random(seed)
    topic = unique("conc-order")
    out, inbound = EventBus(), EventBus()
    track = Tracker()

    @inbound.on("acct.moved")
    def handle(sender: Any, *, acct: int, seq: int) -> None:
        track.enter(acct)
        time.sleep(rng.random() * 0.003)
        track.leave(acct, seq)

    route = Route.inbound("acct.*", topic=topic)
    with (
        bridge(inbound, transport, "ledger", route, partitions=3, concurrency=8) as b,
        bridge(out, transport, "api", Route.outbound("acct.*", topic=topic, key="acct")),
    ):
        for seq in range(30):
            for acct in range(12):
                out.emit("acct.moved", acct=acct, seq=seq)
        wait_for(lambda: track.total() == 360, timeout=30, what="360 events handled")
        wait_for(lambda: b.stats.handled == 360, what="the counters")
    assert track.seen == {acct: list(range(30)) for acct in range(12)}
    assert not track.overlap_within_key
    assert track.most > 1  # different keys did run in parallel


def test_a_slow_key_does_not_hold_back_the_others_and_its_offset_is_not_committed(
    transport: Transport,
) -> None:
    topic = unique("conc-slow")
    out, inbound = EventBus(), EventBus()
    release = threading.Event()
    slow_started = threading.Event()
    got: list[tuple[str, int]] = []

    @inbound.on("job.run")
    def handle(sender: Any, *, who: str, n: int) -> None:
        if who == "slow" and n == 0:
            slow_started.set()
            release.wait(30)
        got.append((who, n))

    route = Route.inbound("job.*", topic=topic)
    with bridge(out, transport, "api", Route.outbound("job.*", topic=topic, key="who")):
        with bridge(inbound, transport, "jobs", route, concurrency=4, drain_timeout=0.2):
            out.emit("job.run", who="slow", n=0)
            assert slow_started.wait(30)
            for n in range(1, 4):
                out.emit("job.run", who="slow", n=n)  # must wait behind slow 0
            for n in range(20):
                out.emit("job.run", who=f"fast-{n % 4}", n=n)
            wait_for(lambda: len(got) == 20, what="the other keys, while slow 0 runs")
            assert all(who != "slow" for who, _ in got)
            # stop() now: slow 0 is still running past drain_timeout, so it is abandoned
            # uncommitted, and with it everything after it in the partition.
        release.set()
        again: list[tuple[str, int]] = []
        inbound2 = EventBus()
        inbound2.on("job.run")(lambda s, *, who, n: again.append((who, n)))
        with bridge(inbound2, transport, "jobs", route, concurrency=4):
            wait_for(lambda: len(again) == 24, what="the redelivered records")
    assert [n for who, n in again if who == "slow"] == [0, 1, 2, 3]


def test_retries_and_dead_letters_of_one_key_do_not_hold_back_other_keys(
    transport: Transport,
) -> None:
    topic = unique("conc-retry")
    out, inbound = EventBus(), EventBus()
    order: list[tuple[str, int]] = []
    failed_once = threading.Event()
    bad_attempts: list[int] = []
    good_keys_seen = threading.Event()

    @inbound.on("pay.made")
    def handle(sender: Any, *, who: str, n: int) -> None:
        if who == "bad" and n == 0:
            bad_attempts.append(n)
            failed_once.set()
            if len(bad_attempts) == 3:
                # The last attempt fails only once the test saw the good keys: they must
                # run while bad 0 retries, however slow the machine (not within 1.5 s).
                good_keys_seen.wait(30)
            raise RuntimeError("card declined")
        order.append((who, n))

    route = Route.inbound("pay.*", topic=topic)
    with (
        bridge(inbound, transport, "pay", route, concurrency=4, max_attempts=3, backoff=0.5) as b,
        bridge(out, transport, "api", Route.outbound("pay.*", topic=topic, key="who")),
    ):
        out.emit("pay.made", who="bad", n=0)
        assert failed_once.wait(30)
        out.emit("pay.made", who="bad", n=1)
        for n in range(10):
            out.emit("pay.made", who=f"good-{n % 3}", n=n)
        try:
            wait_for(lambda: len(order) >= 10, what="the good keys, while bad 0 retries")
            assert b.stats.dead_lettered == 0  # the bad key is still retrying
            assert ("bad", 1) not in order  # waits behind bad 0
        finally:
            good_keys_seen.set()
        wait_for(lambda: ("bad", 1) in order, what="bad 1 after bad 0 was dead-lettered")
        wait_for(lambda: b.stats.dead_lettered == 1, what="the dead letter counted")
    assert len(bad_attempts) == 3
    [letter] = read(transport, route.dead_letter_topic, 1)
    assert dict(letter.headers)["eventbus-dlq-attempts"] == b"3"


def test_records_taken_are_bounded_while_handlers_are_busy(transport: Transport) -> None:
    topic = unique("conc-pause")
    out, inbound = EventBus(), EventBus()
    release = threading.Event()
    handled: list[int] = []

    @inbound.on("n.x")
    def handle(sender: Any, *, n: int) -> None:
        release.wait(30)
        handled.append(n)

    route = Route.inbound("n.x", topic=topic)
    with (
        bridge(inbound, transport, "w", route, concurrency=2, batch_size=5) as b,
        bridge(out, transport, "api", Route.outbound("n.x", topic=topic, key="n")),
    ):
        for n in range(300):
            out.emit("n.x", n=n)
        # At most concurrency + batch_size (2 + 5) taken and not done. Wait until the
        # bridge took that many, then give a bug many poll cycles to show itself, past
        # the moment fetching is paused (PAUSE_AFTER).
        wait_for(lambda: b.stats.received >= 7, what="the first records taken")
        deadline = time.monotonic() + PAUSE_AFTER + 0.5
        while time.monotonic() < deadline:
            assert b.stats.received == 7, b.stats.received
            time.sleep(0.05)
        release.set()
        wait_for(lambda: len(handled) == 300, timeout=30, what="every record after resuming")
    assert sorted(handled) == list(range(300))


def test_stop_under_load_drains_and_a_restart_loses_nothing(transport: Transport) -> None:
    topic = unique("conc-stop")
    out = EventBus()
    seen: set[int] = set()
    lock = threading.Lock()

    def handler(sender: Any, *, n: int) -> None:
        time.sleep(0.001)
        with lock:
            seen.add(n)

    route = Route.inbound("n.x", topic=topic)
    first, second = EventBus(), EventBus()
    first.on("n.x")(handler)
    second.on("n.x")(handler)
    with bridge(out, transport, "api", Route.outbound("n.x", topic=topic, key="n"), partitions=2):
        with bridge(first, transport, "w", route, concurrency=8, partitions=2) as b:
            for n in range(400):
                out.emit("n.x", n=n)
            wait_for(lambda: b.stats.handled >= 50, what="work in flight")
        # stop() returned: the in-flight records finished and offsets are committed
        with bridge(second, transport, "w", route, concurrency=8, partitions=2):
            wait_for(lambda: len(seen) == 400, timeout=30, what="every record, once restarted")


def test_rebalance_with_work_in_flight_loses_nothing(transport: Transport) -> None:
    topic = unique("conc-rebalance")
    out = EventBus()
    seen: dict[str, set[int]] = {"a": set(), "b": set()}
    lock = threading.Lock()

    def handler_of(name: str) -> Any:
        def handle(sender: Any, *, n: int) -> None:
            time.sleep(0.002)
            with lock:
                seen[name].add(n)

        return handle

    a, b = EventBus(), EventBus()
    a.on("n.x")(handler_of("a"))
    b.on("n.x")(handler_of("b"))
    route = Route.inbound("n.x", topic=topic)
    opts: dict[str, Any] = {"concurrency": 8, "partitions": 2, "ready_timeout": 60}
    with bridge(out, transport, "api", Route.outbound("n.x", topic=topic, key="n"), partitions=2):
        with bridge(a, transport, "w", route, **opts) as first:
            for n in range(300):
                out.emit("n.x", n=n)
            wait_for(lambda: first.stats.handled >= 30, what="work in flight")
            with bridge(b, transport, "w", route, **opts):  # a partition moves to b
                for n in range(300, 600):
                    out.emit("n.x", n=n)
                wait_for(lambda: len(seen["a"] | seen["b"]) == 600, timeout=60, what="all")
    assert seen["b"], "the second member took a partition"


def test_concurrency_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="concurrency"):
        Bridge(EventBus(), transport=MemoryTransport(), service="s", routes=[], concurrency=0)


def test_a_busy_member_still_hands_over_partitions_when_the_group_rebalances(
    transport: Transport,
) -> None:
    topic = unique("conc-busy")
    out = EventBus()
    release = threading.Event()
    seen: dict[str, set[int]] = {"a": set(), "b": set()}

    a, b = EventBus(), EventBus()

    @a.on("n.x")
    def stuck(sender: Any, *, n: int) -> None:
        release.wait(60)
        seen["a"].add(n)

    b.on("n.x")(lambda sender, *, n: seen["b"].add(n))
    route = Route.inbound("n.x", topic=topic)
    opts: dict[str, Any] = {"partitions": 2, "ready_timeout": 60, "drain_timeout": 0.5}
    with bridge(out, transport, "api", Route.outbound("n.x", topic=topic, key="n"), partitions=2):
        with bridge(a, transport, "w", route, concurrency=2, batch_size=5, **opts) as first:
            for n in range(100):
                out.emit("n.x", n=n)
            wait_for(lambda: first.stats.received >= 7, what="the first member saturated")
            # The first member keeps polling while its handlers are stuck: the group can
            # move a partition to the second member, whose records are then handled.
            with bridge(b, transport, "w", route, **opts):
                wait_for(lambda: len(seen["b"]) >= 20, timeout=60, what="the moved partition")
                release.set()
                wait_for(lambda: len(seen["a"] | seen["b"]) == 100, timeout=60, what="all")
