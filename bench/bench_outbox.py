"""Outbox mode against direct mode on a real Kafka broker (KAFKA_BOOTSTRAP), same run.

    python bench/bench_outbox.py                  # 100k events, 3 alternating rounds
    python bench/bench_outbox.py -n 20000 --json results.json

Each round emits ``n`` events through a Bridge and stops the clock when the last one is
delivered (``stats.delivered == n``): emit -> broker ack, end to end. Modes: ``direct``
(no outbox), ``outbox`` (SQLite WAL, synchronous=NORMAL), ``outbox-full`` (fsync per
commit) with 1 emitting thread, and both again with 4 emitting threads, where concurrent
emits share commits. Prints events/s and the ratio to direct mode (target: outbox >= 0.3).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bridge import Bridge, KafkaTransport, Route
from bridge._outbox import Outbox
from eventbus import EventBus

PAYLOAD: dict[str, Any] = {"user_id": 42, "email": "someone@example.com", "plan": "pro", "n": 0}


def bootstrap() -> str:
    address = os.environ.get("KAFKA_BOOTSTRAP")
    if not address:
        sys.exit("set KAFKA_BOOTSTRAP (scripts/kafka start prints it)")
    return address


def run(mode: str, n: int, threads: int, topic: str, workdir: Path) -> float:
    """Emit ``n`` events from ``threads`` threads; return events/s until all delivered."""
    bus = EventBus()
    transport = KafkaTransport({"bootstrap.servers": bootstrap()})
    outbox: Outbox | None = None
    if mode != "direct":
        sync = "FULL" if mode == "outbox-full" else "NORMAL"
        outbox = Outbox(str(workdir / f"{uuid.uuid4().hex}.db"), synchronous=sync)
    bridge = Bridge(
        bus,
        transport=transport,
        service="bench",
        routes=[Route.outbound("user.*", topic=topic, key="user_id")],
        outbox=outbox,
        create_topics=False,
    )
    per_thread = n // threads

    def emit(worker: int) -> None:
        payload = {**PAYLOAD, "user_id": worker}
        for i in range(per_thread):
            payload["n"] = i
            bus.emit("user.registered", **payload)

    with bridge:
        workers = [threading.Thread(target=emit, args=(w,)) for w in range(threads)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        total = per_thread * threads
        deadline = time.monotonic() + 300
        while bridge.stats.delivered < total and time.monotonic() < deadline:
            time.sleep(0.001)
        elapsed = time.perf_counter() - start
    transport.close()
    assert bridge.stats.delivered == total, f"{mode}: {bridge.stats.delivered} of {total}"
    return total / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=100_000, help="events per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    topic = f"bench-outbox-{uuid.uuid4().hex[:8]}"
    KafkaTransport({"bootstrap.servers": bootstrap()}).ensure_topics([topic], 1)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-outbox-") as tmp:
        workdir = Path(tmp)
        run("direct", min(args.n, 5000), 1, topic, workdir)  # warm up
        for threads in (1, 4):
            modes = ("direct", "outbox", "outbox-full")
            eps: dict[str, list[float]] = {m: [] for m in modes}
            for _ in range(args.rounds):  # alternate, so machine noise hits all alike
                for mode in modes:
                    eps[mode].append(run(mode, args.n, threads, topic, workdir))
            direct = statistics.median(eps["direct"])
            for mode in modes:
                median = statistics.median(eps[mode])
                results.append(
                    {
                        "mode": mode,
                        "threads": threads,
                        "events": args.n,
                        "eps": round(median),
                        "ratio_to_direct": round(median / direct, 3),
                    }
                )
                print(
                    f"{mode:<12} {threads} thread(s): {median:>9,.0f} events/s"
                    f"   ratio to direct {median / direct:.2f}"
                )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
