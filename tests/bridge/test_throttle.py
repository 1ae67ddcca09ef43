"""Repeated conditions are logged once, then counted: a broker outage or a missing topic
does not write one line per record, and nothing is hidden (the counts are logged)."""

from __future__ import annotations

import logging

import pytest

from bridge import Bridge, MemoryTransport, Route
from bridge._throttle import LogThrottle
from eventbus import EventBus
from tests.bridge.helpers import wait_for


def test_a_condition_is_logged_once_per_interval_with_its_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    throttle = LogThrottle(logging.getLogger("t"), interval=10, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="t"):
        for i in range(5):
            throttle.log(logging.ERROR, "a", "topic %s failed (%d)", "x", i)
        throttle.log(logging.ERROR, "b", "another condition")
        now[0] = 11
        throttle.log(logging.ERROR, "a", "topic %s failed (%d)", "x", 5)
        throttle.log(logging.ERROR, "a", "topic %s failed (%d)", "x", 6)
        throttle.flush()
    assert [r.getMessage() for r in caplog.records] == [
        "topic x failed (0)",
        "another condition",
        "topic x failed (5) (and 4 more like it in the last 10 s)",
        "topic x failed (6) (1 more like it since the first)",
    ]


def test_failed_deliveries_of_one_topic_are_one_line_and_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = MemoryTransport()
    transport.broker.fail_next(50)
    bus = EventBus()
    reported: list[object] = []
    bridge = Bridge(
        bus,
        transport=transport,
        service="svc",
        routes=[Route.outbound("a.*", topic="a")],
        on_delivery_failure=reported.append,
    )
    with caplog.at_level(logging.ERROR, logger="bridge"), bridge:
        for n in range(50):
            bus.emit("a.b", n=n)
        wait_for(lambda: bridge.stats.delivery_failed == 50, what="50 failures")
    lines = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
    assert len(reported) == 50  # every failure still reaches the callback and the counters
    assert len(lines) == 2, lines
    assert lines[1].endswith("(49 more like it since the first)")
