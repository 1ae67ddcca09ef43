"""Small helpers shared by the bridge tests: wait on conditions, read topics."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from bridge import Bridge, Record, Route, Transport
from eventbus import EventBus


def wait_for(
    predicate: Callable[[], object], timeout: float = 30.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until true; fail the test with ``what`` after ``timeout`` s.

    The default is long on purpose: most waits include a broker round trip or a group
    join, which take seconds on a loaded CI machine (2 cores). It only costs time when
    the test fails anyway."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def read(transport: Transport, topic: str, count: int, timeout: float = 20.0) -> list[Record]:
    """Read ``count`` records of ``topic`` from the beginning with a throwaway group."""
    consumer = transport.consumer(f"reader-{uuid.uuid4()}", [topic], from_beginning=True)
    records: list[Record] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"read {len(records)} of {count} records from {topic}")
            record = consumer.poll(0.2)
            if record is not None:
                records.append(record)
    finally:
        consumer.close()
    return records


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_bridge(
    bus: EventBus, transport: Transport, service: str, *routes: Route, **kw: Any
) -> Bridge:
    """A bridge with a short retry backoff (tests wait for retries, not for time)."""
    kw.setdefault("backoff", 0.001)
    return Bridge(bus, transport=transport, service=service, routes=routes, **kw)
