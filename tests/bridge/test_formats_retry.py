"""Delayed retry topics (``retry_delays``) on routes of the ``json`` and ``go-micro``
formats, on MemoryTransport and the real broker: the record on the retry topic keeps the
original value (the format's own payload), and the bridge reads it back with the route's
format, as the same event (same id: for a ``json`` record without an id field, the
position it was first read at)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from bridge import Bridge, Remote, Route, Transport
from bridge._formats import go_message
from eventbus import EventBus
from tests.bridge.helpers import read, unique, wait_for


def value_of(fmt: str) -> bytes:
    if fmt == "json":
        return b'{"student": "Ada", "age": 36}'
    body = base64.b64encode(b'{"student":"Ada","age":36}').decode()
    header = {"Content-Type": "application/json", "Micro-Id": "m-1", "Micro-Topic": "x"}
    return go_message(header, body)


@pytest.mark.parametrize("fmt", ["json", "go-micro"])
def test_a_retried_record_keeps_its_format_and_its_id(transport: Transport, fmt: str) -> None:
    topic = unique(f"retry-{fmt}")
    bus = EventBus()
    calls: list[tuple[dict[str, Any], str, str]] = []

    @bus.on("student.created")
    def handle(sender: Remote, **payload: Any) -> None:
        calls.append((payload, sender.id, sender.topic))
        if len(calls) == 1:
            raise ConnectionError("down, once")

    route = Route.inbound("student.created", topic=topic, format=fmt, retry_delays=[0.2])
    other = Route.inbound("student.created", topic=unique("ce"))  # a topic per format
    value = value_of(fmt)
    with Bridge(bus, transport=transport, service="py", routes=[route, other], max_attempts=1) as b:
        producer = transport.producer()
        producer.produce(topic, value, None, [])
        assert producer.flush(30) == 0
        producer.close()
        wait_for(lambda: len(calls) == 2, 30, "the first call and the retry")
        wait_for(lambda: b.stats.retries_handled == 1, 30, "the retry counted")
    assert b.stats.dead_lettered == 0
    first, again = calls
    assert first == again  # the same payload, id and origin topic
    assert first[0] == {"student": "Ada", "age": 36}
    assert first[1] == (f"{topic}/0/0" if fmt == "json" else "m-1")
    assert first[2] == topic
    [retried] = read(transport, route.retry_topics[0], 1)
    assert retried.value == value  # the original format's payload, untouched
    assert json.loads(retried.value) == json.loads(value)
