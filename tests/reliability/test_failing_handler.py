"""Fault 4: a handler that always fails is retried as configured, then dead-lettered,
and the partition keeps flowing: the events after it are handled, in order."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from bridge import Bridge, KafkaTransport, Route
from eventbus import EventBus
from tests.bridge.helpers import wait_for
from tests.reliability.conftest import scaled
from tests.reliability.helpers import emit_events, read_all

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
EVENTS = scaled(10_000, 500)
ATTEMPTS = 3


def test_always_failing_handler_is_retried_then_dead_lettered(
    kafka_bootstrap: str, make_topic: Callable[..., str], figures: Callable[..., None]
) -> None:
    topic, dlq = make_topic(), make_topic()
    bus = EventBus()
    calls: Counter[int] = Counter()
    handled: list[int] = []

    @bus.on("load.item")
    def handle(sender: Any, *, n: int, key: int) -> None:
        calls[n] += 1
        if n % 10 == 0:  # every tenth event: this handler always fails on it
            raise RuntimeError(f"cannot handle {n}")
        handled.append(n)

    bridge = Bridge(
        bus,
        transport=KafkaTransport(
            {"bootstrap.servers": kafka_bootstrap, "auto.offset.reset": "earliest"}
        ),
        service="failing",
        routes=[Route.inbound("load.*", topic=topic, dlq=dlq)],
        max_attempts=ATTEMPTS,
        backoff=0.001,
        create_topics=False,
    )
    t0 = time.monotonic()
    with bridge:
        emit_events(kafka_bootstrap, topic, EVENTS)
        wait_for(lambda: bridge.stats.received == EVENTS, timeout=600, what="all received")
    elapsed = time.monotonic() - t0

    failing = [n for n in range(EVENTS) if n % 10 == 0]
    dead = read_all(kafka_bootstrap, dlq)
    headers = [dict(m.headers()) for m in dead]
    figures(
        events=EVENTS,
        failing=len(failing),
        dead_lettered=len(dead),
        retries=bridge.stats.retried,
        seconds=round(elapsed, 1),
    )
    assert handled == [n for n in range(EVENTS) if n % 10]  # in order, none lost
    assert all(calls[n] == ATTEMPTS for n in failing)
    assert bridge.stats.retried == len(failing) * (ATTEMPTS - 1)
    assert len(dead) == len(failing)
    assert {h["eventbus-dlq-attempts"] for h in headers} == {str(ATTEMPTS).encode()}
    assert all(b"cannot handle" in h["eventbus-dlq-reason"] for h in headers)
