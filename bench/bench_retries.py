"""Main-path throughput with failing records on delayed retry topics, on a real broker.

    python bench/bench_retries.py [--records 200000] [--rounds 3] [--failing 0.01]

One topic of one partition holds ``records`` events. A bridge with
``retry_delays=[60]`` and ``max_attempts=1`` consumes it; its handler fails for a
fraction ``failing`` of them (those go to the retry topic, and are not due during the
run), and the same run consumes it with a handler that never fails. Printed: the
events/s of the records handled on the main topic in each case (best of ``rounds``,
alternating) and their ratio (target >= 0.9): what a failing record costs the records
behind it when it waits on a retry topic instead of in place.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bridge import Bridge, KafkaTransport, Route
from eventbus import EventBus


def bootstrap() -> str:
    address = os.environ.get("KAFKA_BOOTSTRAP")
    if not address:
        sys.exit("set KAFKA_BOOTSTRAP (scripts/kafka start prints it)")
    return address


def fill(topic: str, records: int) -> None:
    bus = EventBus()
    with Bridge(
        bus,
        transport=KafkaTransport({"bootstrap.servers": bootstrap()}),
        service="filler",
        routes=[Route.outbound("job.*", topic=topic)],
    ) as bridge:
        for seq in range(records):
            bus.emit("job.done", seq=seq)
        while bridge.stats.produced < records:
            time.sleep(0.01)
    assert bridge.stats.delivered == records


def consume(topic: str, records: int, every: int) -> tuple[float, int]:
    """Events/s of the main-path records, and how many went to the retry topic.
    ``every``: the handler fails for seq % every == 0 (0: never)."""
    bus = EventBus()
    handled = [0]
    first = last = 0.0

    @bus.on("job.done")
    def handle(sender: Any, *, seq: int) -> None:
        nonlocal first, last
        if every and seq % every == 0:
            raise ConnectionError("down")
        if not handled[0]:
            first = time.perf_counter()
        handled[0] += 1
        last = time.perf_counter()

    expected = records - (len(range(0, records, every)) if every else 0)
    transport = KafkaTransport({"bootstrap.servers": bootstrap(), "auto.offset.reset": "earliest"})
    bridge = Bridge(
        bus,
        transport=transport,
        service=f"bench-{uuid.uuid4()}",
        routes=[Route.inbound("job.*", topic=topic, retry_delays=[60])],
        max_attempts=1,
        partitions=1,
    )
    with bridge:
        deadline = time.monotonic() + 600
        while handled[0] < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        scheduled = len(range(0, records, every)) if every else 0
        while bridge.stats.retries_scheduled < scheduled and time.monotonic() < deadline:
            time.sleep(0.01)
        retried = bridge.stats.retries_scheduled
    assert handled[0] == expected, f"handled {handled[0]} of {expected}"
    return (expected - 1) / (last - first), retried


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--failing", type=float, default=0.01)
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    args = parser.parse_args()
    topic = f"bench-retry-{uuid.uuid4().hex[:8]}"
    KafkaTransport({"bootstrap.servers": bootstrap()}).ensure_topics([topic], 1)
    fill(topic, args.records)
    every = round(1 / args.failing)
    clean: list[float] = []
    failing: list[float] = []
    retried = 0
    for _ in range(args.rounds):
        clean.append(consume(topic, args.records, 0)[0])
        eps, retried = consume(topic, args.records, every)
        failing.append(eps)
    result = {
        "bench": "retry topics",
        "records": args.records,
        "failing": 1 / every,
        "retried": retried,
        "clean_eps": round(max(clean)),
        "failing_eps": round(max(failing)),
        "ratio": round(max(failing) / max(clean), 3),
        "target": 0.9,
        "rounds_clean": [round(x) for x in clean],
        "rounds_failing": [round(x) for x in failing],
    }
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
