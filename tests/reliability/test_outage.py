"""Fault 2: the broker stops for 10 s (scaled) in the middle of an outbound stream.

With the outbox nothing is lost. Without it, records that expire during the outage
(``message.timeout.ms``) are lost, but every one of them is reported through the
delivery-failure path: delivered + reported failed == emitted, never a silent loss.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from bridge import Bridge, DeliveryError, KafkaTransport, Route
from eventbus import EventBus
from tests.bridge.helpers import wait_for
from tests.reliability.broker import PrivateBroker
from tests.reliability.conftest import scaled
from tests.reliability.helpers import read_all

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
OUTAGE = scaled(10.0, 3.0)  # seconds the broker is frozen
RATE = 500  # events per second, before, during and after the outage


class Stream:
    """Emits ``out.item`` events at RATE from a thread until stopped."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.emitted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            self.bus.emit("out.item", n=self.emitted, key=self.emitted % 8)
            self.emitted += 1
            self._stop.wait(max(0.0, start + self.emitted / RATE - time.monotonic()))

    def __enter__(self) -> Stream:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def outage(broker: PrivateBroker, stream: Stream) -> None:
    wait_for(lambda: stream.emitted >= RATE, what="1 s of stream before the outage")
    broker.freeze()
    try:
        time.sleep(OUTAGE)  # the outage itself: deliberate
    finally:
        broker.thaw()
    target = stream.emitted + RATE
    wait_for(lambda: stream.emitted >= target, what="1 s of stream after the outage")


@pytest.mark.parametrize("with_outbox", [True, False], ids=["outbox", "direct"])
def test_broker_stopped_during_an_outbound_stream(
    private_broker: PrivateBroker,
    tmp_path: Path,
    figures: Callable[..., None],
    with_outbox: bool,
) -> None:
    topic = f"outage-{tmp_path.name[-20:]}".replace("_", "-")
    config: dict[str, Any] = {"bootstrap.servers": private_broker.bootstrap}
    if not with_outbox:
        config["message.timeout.ms"] = 2000  # records expire during the outage
    failures: list[DeliveryError] = []
    bus = EventBus()
    bridge = Bridge(
        bus,
        transport=KafkaTransport(config),
        service="outage",
        routes=[Route.outbound("out.*", topic=topic, key="key")],
        outbox=str(tmp_path / "outbox.db") if with_outbox else None,
        on_delivery_failure=failures.append,
        drain_timeout=120,
    )
    with bridge, Stream(bus) as stream:
        outage(private_broker, stream)
    emitted = stream.emitted
    stats = bridge.stats

    records = read_all(private_broker.bootstrap, topic)
    in_topic = [msgpack.unpackb(m.value())["n"] for m in records]
    failed = {msgpack.unpackb(f.record.value)["n"] for f in failures}  # type: ignore[attr-defined]
    missing = set(range(emitted)) - set(in_topic)
    figures(
        outage_s=OUTAGE,
        emitted=emitted,
        delivered=stats.delivered,
        reported_failed=stats.delivery_failed,
        in_topic=len(in_topic),
        duplicates=len(in_topic) - len(set(in_topic)),
        lost=len(missing),
        lost_unreported=len(missing - failed),
    )
    assert stats.delivered + stats.delivery_failed == emitted
    assert missing <= failed  # never a silent loss
    if with_outbox:
        assert not missing and stats.delivery_failed == 0 and stats.delivered == emitted
