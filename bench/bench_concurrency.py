"""I/O-bound inbound handlers on a real Kafka broker (KAFKA_BOOTSTRAP): concurrency=16 vs 1.

    python bench/bench_concurrency.py [--records 2000] [--keys 16] [--latency 0.005]
    python bench/bench_concurrency.py --lag 1000000   # RSS while a backlog is consumed

One topic of one partition holds ``records`` events over ``keys`` keys. A handler that
waits ``latency`` seconds (``time.sleep`` for the sync handler, ``await asyncio.sleep``
for the async one, on the application's event loop via ``async with bridge``) handles
them, with ``concurrency=1`` and ``concurrency=16`` in the same run. Printed: events/s of
each and the ratio (target >= 12). Each run checks that every key's events arrived in
the order they were emitted, and that every event was handled once.

``--lag N``: N events wait on the topic when a ``concurrency=16`` bridge starts, with a
0.5 ms handler; the RSS of the process is sampled every N/20 handled events. Flat
means the bridge does not buffer the backlog (it takes at most ``concurrency +
batch_size`` records at a time and pauses fetching when the handlers stay busy).
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench_bridge import bootstrap, report

from bridge import Bridge, KafkaTransport, Route
from eventbus import EventBus


def fill(topic: str, records: int, keys: int) -> None:
    bus = EventBus()
    with Bridge(
        bus,
        transport=KafkaTransport({"bootstrap.servers": bootstrap()}),
        service="filler",
        routes=[Route.outbound("job.*", topic=topic, key="key")],
    ) as bridge:
        for seq in range(records):
            bus.emit("job.done", key=seq % keys, seq=seq)
        while bridge.stats.produced < records:
            time.sleep(0.01)


class Seen:
    """What the handlers saw: how many, when, and whether each key's events came in the
    order they were emitted (checked as they come: nothing kept per event)."""

    def __init__(self, records: int, keys: int) -> None:
        self.records = records
        self.lock = threading.Lock()
        self.next_seq = list(range(keys))  # per key, the sequence number expected next
        self.out_of_order = 0
        self.count = 0
        self.first = self.last = 0.0

    def add(self, key: int, seq: int) -> None:
        with self.lock:
            now = time.perf_counter()
            if not self.count:
                self.first = now
            self.count += 1
            self.last = now
            if seq != self.next_seq[key]:
                self.out_of_order += 1
            self.next_seq[key] = seq + len(self.next_seq)

    def check(self) -> None:
        assert self.count == self.records, f"handled {self.count} of {self.records}"
        assert not self.out_of_order, f"{self.out_of_order} events out of their key's order"


def bridge_for(bus: EventBus, topic: str, concurrency: int) -> Bridge:
    transport = KafkaTransport({"bootstrap.servers": bootstrap(), "auto.offset.reset": "earliest"})
    return Bridge(
        bus,
        transport=transport,
        service=f"bench-{uuid.uuid4()}",
        routes=[Route.inbound("job.*", topic=topic)],
        create_topics=False,
        concurrency=concurrency,
    )


def run_sync(topic: str, records: int, keys: int, latency: float, concurrency: int) -> float:
    bus, seen = EventBus(), Seen(records, keys)

    @bus.on("job.done")
    def handle(sender: Any, *, key: int, seq: int) -> None:
        time.sleep(latency)
        seen.add(key, seq)

    with bridge_for(bus, topic, concurrency):
        deadline = time.monotonic() + 600
        while seen.count < records and time.monotonic() < deadline:
            time.sleep(0.01)
    seen.check()
    return (records - 1) / (seen.last - seen.first)


def run_async(topic: str, records: int, keys: int, latency: float, concurrency: int) -> float:
    bus, seen = EventBus(), Seen(records, keys)

    @bus.on("job.done")
    async def handle(sender: Any, *, key: int, seq: int) -> None:
        await asyncio.sleep(latency)
        seen.add(key, seq)

    async def app() -> None:
        async with bridge_for(bus, topic, concurrency):
            deadline = time.monotonic() + 600
            while seen.count < records and time.monotonic() < deadline:
                await asyncio.sleep(0.01)

    asyncio.run(app())
    seen.check()
    return (records - 1) / (seen.last - seen.first)


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def bench_lag(records: int, keys: int) -> dict[str, Any]:
    topic = f"bench-lag-{uuid.uuid4().hex[:8]}"
    KafkaTransport({"bootstrap.servers": bootstrap()}).ensure_topics([topic], 1)
    fill(topic, records, keys)
    bus, seen = EventBus(), Seen(records, keys)
    samples: list[float] = []
    step = max(1, records // 20)

    @bus.on("job.done")
    def handle(sender: Any, *, key: int, seq: int) -> None:
        time.sleep(0.0005)
        seen.add(key, seq)
        if seen.count % step == 0:
            samples.append(rss_mb())

    with bridge_for(bus, topic, 16) as b:
        deadline = time.monotonic() + 3600
        while seen.count < records and time.monotonic() < deadline:
            time.sleep(0.05)
        received = b.stats.received
    seen.check()
    settled = samples[2:]  # after the first tenth: imports, buffers, the first fetches
    return {
        "bench": "memory under lag",
        "records": records,
        "received": received,
        "rss_mb": [round(x, 1) for x in samples],
        "growth_mb": max(settled) - min(settled) if settled else float("nan"),
        "events_per_s": (records - 1) / (seen.last - seen.first),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--keys", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.005)
    parser.add_argument("--lag", type=int, help="measure RSS while N waiting events are read")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    if args.lag:
        report([bench_lag(args.lag, args.keys)], args.json)
        return 0
    topic = f"bench-io-{uuid.uuid4().hex[:8]}"
    KafkaTransport({"bootstrap.servers": bootstrap()}).ensure_topics([topic], 1)
    fill(topic, args.records, args.keys)
    results = []
    for kind, run in (("sync", run_sync), ("async", run_async)):
        one = run(topic, args.records, args.keys, args.latency, 1)
        many = run(topic, args.records, args.keys, args.latency, 16)
        results.append(
            {
                "bench": f"io-bound {kind}",
                "records": args.records,
                "keys": args.keys,
                "latency_ms": args.latency * 1000,
                "concurrency_1_eps": one,
                "concurrency_16_eps": many,
                "ratio": many / one,
                "target": 12,
            }
        )
    report(results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
