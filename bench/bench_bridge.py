"""Bridge benchmarks on a real Kafka broker (KAFKA_BOOTSTRAP), each against a raw baseline.

    python bench/bench_bridge.py produce   # emit -> delivered, vs a hand-written producer
    python bench/bench_bridge.py consume   # Kafka -> handler, vs a raw dispatching loop
    python bench/bench_bridge.py latency   # emit in one process -> handler in another, 1k/s
    python bench/bench_bridge.py memory    # RSS over 1M emitted events
    python bench/bench_bridge.py all --json results.json

Ratios are events/s of the bridge over events/s of the baseline, measured in the same run
with alternating rounds (higher is better). Targets: produce >= 0.8; consume >= 0.7 of the
hand-written loop that reads the CloudEvents headers and calls the handler found by
``ce_type`` (the unpack-only loop's ratio is printed for reference), and
``concurrency=16`` >= 0.8 of ``concurrency=1`` with a trivial handler; latency p99 < 20 ms;
memory flat. produce and consume also run the same events with JSON data
(``content_type="application/json"``) and print ``json_ratio`` and ``json_to_msgpack``
(reported, no target: JSON is expected to be slower).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack
from confluent_kafka import Consumer, Producer

from bridge import Bridge, KafkaTransport, Route
from eventbus import EventBus

PAYLOAD: dict[str, Any] = {"user_id": 42, "email": "someone@example.com", "plan": "pro", "n": 0}
PRODUCER_DEFAULTS = {"enable.idempotence": True, "acks": "all", "linger.ms": 5}


def bootstrap() -> str:
    address = os.environ.get("KAFKA_BOOTSTRAP")
    if not address:
        sys.exit("set KAFKA_BOOTSTRAP (scripts/kafka start prints it)")
    return address


def topic_name(kind: str) -> str:
    return f"bench-{kind}-{uuid.uuid4().hex[:8]}"


# -- produce -------------------------------------------------------------------------


def raw_produce(n: int, topic: str, *, prebuilt: bool = False) -> float:
    """A hand-written confluent-kafka producer writing the same records as the bridge.

    Per event it does what an application would do by hand: pack the payload with msgpack,
    build the CloudEvents headers (a UUID, the time), produce with a delivery callback and
    ``poll(0)``. With ``prebuilt`` the value and headers are built once and reused: the
    ceiling of the client itself, reported for reference.
    """
    source, origin = b"bench", str(uuid.uuid4()).encode()
    fixed_value = msgpack.packb(PAYLOAD, use_bin_type=True)
    fixed_headers = _raw_headers(source, origin)
    producer = Producer({"bootstrap.servers": bootstrap(), **PRODUCER_DEFAULTS})
    delivered = 0

    def on_delivery(err: Any, msg: Any) -> None:
        nonlocal delivered
        if err is None:
            delivered += 1

    start = time.perf_counter()
    for _ in range(n):
        if prebuilt:
            value, headers = fixed_value, fixed_headers
        else:
            value = msgpack.packb(PAYLOAD, use_bin_type=True)
            headers = _raw_headers(source, origin)
        key = str(PAYLOAD["user_id"]).encode()
        while True:
            try:
                producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush(60)
    elapsed = time.perf_counter() - start
    assert delivered == n, f"baseline delivered {delivered} of {n}"
    return n / elapsed


def _raw_headers(source: bytes, origin: bytes) -> list[tuple[str, bytes]]:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return [
        ("ce_specversion", b"1.0"),
        ("ce_id", str(uuid.uuid4()).encode()),
        ("ce_source", source),
        ("ce_type", b"user.registered"),
        ("ce_time", now.encode()),
        ("content-type", b"application/vnd.msgpack"),
        ("eventbus-origin", origin),
    ]


def bridge_produce(n: int, topic: str, content_type: str | None = None, **options: Any) -> float:
    """emit -> delivered through a bridge; ``content_type="application/json"``: JSON data."""
    bus = EventBus()
    transport = KafkaTransport({"bootstrap.servers": bootstrap()})
    bridge = Bridge(
        bus,
        transport=transport,
        service="bench",
        routes=[Route.outbound("user.*", topic=topic, key="user_id", content_type=content_type)],
        **options,
    )
    with bridge:
        emit = bus.emit
        start = time.perf_counter()
        for _ in range(n):
            emit("user.registered", **PAYLOAD)
        deadline = time.monotonic() + 60
        while bridge.stats.produced < n and time.monotonic() < deadline:
            time.sleep(0.001)
        elapsed = time.perf_counter() - start
    transport.close()
    assert bridge.stats.delivered == n, f"bridge delivered {bridge.stats.delivered} of {n}"
    return n / elapsed


def bench_produce(n: int, rounds: int) -> dict[str, Any]:
    topic = topic_name("produce")
    KafkaTransport({"bootstrap.servers": bootstrap()}).ensure_topics([topic], 1)
    raw_produce(min(n, 5000), topic)  # warm up the broker and the connection
    raws, ours, ceilings, as_json = [], [], [], []
    for _ in range(rounds):
        raws.append(raw_produce(n, topic))
        ours.append(bridge_produce(n, topic))
        ceilings.append(raw_produce(n, topic, prebuilt=True))
        as_json.append(bridge_produce(n, topic, content_type="application/json"))
    raw, bridge = statistics.median(raws), statistics.median(ours)
    ceiling = statistics.median(ceilings)
    bridge_json = statistics.median(as_json)
    return {
        "bench": "produce",
        "events": n,
        "raw_eps": raw,
        "bridge_eps": bridge,
        "ratio": bridge / raw,
        "target": 0.8,
        "prebuilt_eps": ceiling,
        "ratio_to_prebuilt": bridge / ceiling,
        "bridge_json_eps": bridge_json,
        "json_ratio": bridge_json / raw,
        "json_to_msgpack": bridge_json / bridge,
    }


# -- consume -------------------------------------------------------------------------


def fill(topic: str, n: int, content_type: str | None = None) -> None:
    bus = EventBus()
    route = Route.outbound("user.*", topic=topic, key="user_id", content_type=content_type)
    with Bridge(
        bus,
        transport=KafkaTransport({"bootstrap.servers": bootstrap()}),
        service="filler",
        routes=[route],
    ) as bridge:
        for i in range(n):
            bus.emit("user.registered", **{**PAYLOAD, "n": i})
        while bridge.stats.produced < n:
            time.sleep(0.01)


def raw_consume(n: int, topic: str, *, dispatch: bool = False, headers: bool = False) -> float:
    """A raw consumer loop: poll, unpack the value, store the offset.

    With ``dispatch`` it also does the least a hand-written consumer of these records
    must: read the headers, look the handler up by ``ce_type`` and call it. With
    ``headers`` it only adds reading the headers (``msg.headers()``): the most any
    consumer that looks at the CloudEvents headers can reach with this client.
    """
    handlers = {b"user.registered": lambda **payload: None}
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap(),
            "group.id": f"raw-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.offset.store": False,
        }
    )
    consumer.subscribe([topic])
    count = 0
    start = 0.0
    try:
        while count < n:
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            if count == 0:
                start = time.perf_counter()
            payload = msgpack.unpackb(msg.value(), raw=False)
            if headers:
                msg.headers()
            if dispatch:
                headers = dict(msg.headers() or ())
                handler = handlers.get(headers.get("ce_type", b""))
                if handler is not None:
                    handler(**payload)
            consumer.store_offsets(msg)
            count += 1
        return (n - 1) / (time.perf_counter() - start)
    finally:
        consumer.close()


def bridge_consume(n: int, topic: str, concurrency: int = 1, **options: Any) -> float:
    bus = EventBus()
    seen: list[float] = []  # the time of the first and of the last event

    @bus.on("user.registered")
    def handler(sender: Any, **payload: Any) -> None:
        if not seen or payload["n"] == n - 1:
            seen.append(time.perf_counter())

    transport = KafkaTransport({"bootstrap.servers": bootstrap(), "auto.offset.reset": "earliest"})
    bridge = Bridge(
        bus,
        transport=transport,
        service=f"bench-{uuid.uuid4()}",
        routes=[Route.inbound("user.*", topic=topic)],
        create_topics=False,
        concurrency=concurrency,
        **options,
    )
    with bridge:
        deadline = time.monotonic() + 120
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
    handled = bridge.stats.handled
    assert handled == n, f"bridge handled {handled} of {n}"
    return (n - 1) / (seen[1] - seen[0])


def bench_consume(n: int, rounds: int) -> dict[str, Any]:
    topic = topic_name("consume")
    KafkaTransport({"bootstrap.servers": bootstrap()}).ensure_topics([topic], 1)
    fill(topic, n)
    json_topic = topic_name("consume-json")
    KafkaTransport({"bootstrap.servers": bootstrap()}).ensure_topics([json_topic], 1)
    fill(json_topic, n, content_type="application/json")
    raws, ours, concurrent, dispatching, header_reading = [], [], [], [], []
    as_json = []
    for _ in range(rounds):
        as_json.append(bridge_consume(n, json_topic))
        raws.append(raw_consume(n, topic))
        ours.append(bridge_consume(n, topic))
        concurrent.append(bridge_consume(n, topic, concurrency=16))
        dispatching.append(raw_consume(n, topic, dispatch=True))
        header_reading.append(raw_consume(n, topic, headers=True))
    raw, bridge = statistics.median(raws), statistics.median(ours)
    bridge_16 = statistics.median(concurrent)
    raw_dispatch = statistics.median(dispatching)
    raw_headers = statistics.median(header_reading)
    bridge_json = statistics.median(as_json)
    return {
        "bench": "consume",
        "events": n,
        "raw_dispatch_eps": raw_dispatch,
        "bridge_eps": bridge,
        "ratio": bridge / raw_dispatch,
        "target": 0.7,
        "bridge_concurrency_16_eps": bridge_16,
        "concurrency_16_to_1": bridge_16 / bridge,
        "raw_eps": raw,
        "ratio_to_unpack_only": bridge / raw,
        "raw_headers_eps": raw_headers,
        "headers_ceiling": raw_headers / raw,
        "bridge_json_eps": bridge_json,
        "json_ratio": bridge_json / raw_dispatch,
        "json_to_msgpack": bridge_json / bridge,
    }


# -- latency -------------------------------------------------------------------------

RECEIVER = """
import json, sys, time
from bridge import Bridge, KafkaTransport, Route
from eventbus import EventBus
topic, n, bootstrap = sys.argv[1], int(sys.argv[2]), sys.argv[3]
bus = EventBus()
lat = []
bus.on("lat.ping")(lambda s, *, t, **kw: lat.append(time.time() - t))
bus.on("lat.warm")(lambda s, **kw: print("warm", flush=True))
with Bridge(bus, transport=KafkaTransport({"bootstrap.servers": bootstrap}), service="lat-rx",
            routes=[Route.inbound("lat.*", topic=topic)]):
    print("ready", flush=True)
    deadline = time.monotonic() + 120
    while len(lat) < n and time.monotonic() < deadline:
        time.sleep(0.01)
print(json.dumps(lat), flush=True)
"""


def bench_latency(rate: int, seconds: float) -> dict[str, Any]:
    topic = topic_name("latency")
    n = int(rate * seconds)
    KafkaTransport({"bootstrap.servers": bootstrap()}).ensure_topics([topic], 1)
    rx = subprocess.Popen(
        [sys.executable, "-c", RECEIVER, topic, str(n), bootstrap()],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert rx.stdout is not None
    assert rx.stdout.readline().strip() == "ready"
    bus = EventBus()
    with Bridge(
        bus,
        transport=KafkaTransport({"bootstrap.servers": bootstrap()}),
        service="lat-tx",
        routes=[Route.outbound("lat.*", topic=topic)],
    ):
        # Steady state: the first record of a new idempotent producer waits for its
        # producer id (up to 0.5 s); one round trip before the clock starts.
        bus.emit("lat.warm")
        assert rx.stdout.readline().strip() == "warm"
        start = time.perf_counter()
        for i in range(n):
            due = start + i / rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            bus.emit("lat.ping", t=time.time(), i=i)
        out, _ = rx.communicate(timeout=120)
    lat = sorted(json.loads(out.strip().splitlines()[-1]))
    assert len(lat) == n, f"received {len(lat)} of {n}"
    q = statistics.quantiles(lat, n=100)
    return {
        "bench": "latency",
        "events": n,
        "rate": rate,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        "max_ms": lat[-1] * 1000,
        "target_p99_ms": 20,
    }


# -- memory --------------------------------------------------------------------------


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def bench_memory(n: int) -> dict[str, Any]:
    topic = topic_name("memory")
    bus = EventBus()
    samples: list[tuple[int, float]] = []
    with Bridge(
        bus,
        transport=KafkaTransport({"bootstrap.servers": bootstrap()}),
        service="mem",
        routes=[Route.outbound("mem.*", topic=topic, key="k")],
    ) as bridge:
        step = n // 10
        for i in range(n):
            bus.emit("mem.event", k=i % 1000, i=i, body="x" * 100)
            if i % step == step - 1:
                while bridge.stats.produced < i + 1:  # sample with the producer queue empty
                    time.sleep(0.01)
                samples.append((i + 1, rss_mb()))
        while bridge.stats.produced < n:
            time.sleep(0.01)
    # Growth after the first tenth, when buffers and caches are warm.
    growth = samples[-1][1] - samples[1][1]
    return {
        "bench": "memory",
        "events": n,
        "rss_mb": [round(m, 1) for _, m in samples],
        "growth_mb_after_warmup": round(growth, 1),
        "delivered": bridge.stats.delivered,
    }


def report(results: list[dict[str, Any]], path: Path | None) -> None:
    """Print one JSON line per result (floats rounded); also write them all to ``path``."""
    for r in results:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}))
    if path:
        path.write_text(json.dumps(results, indent=2))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("which", choices=["produce", "consume", "latency", "memory", "all"])
    parser.add_argument("-n", type=int, default=100_000, help="events per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-events", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    results = []
    if args.which in ("produce", "all"):
        results.append(bench_produce(args.n, args.rounds))
    if args.which in ("consume", "all"):
        results.append(bench_consume(args.n, args.rounds))
    if args.which in ("latency", "all"):
        results.append(bench_latency(1000, 10))
    if args.which in ("memory", "all"):
        results.append(bench_memory(args.memory_events))
    report(results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
