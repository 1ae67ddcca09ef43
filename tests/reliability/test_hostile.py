"""Fault 3: hostile records interleaved with valid ones.

Random bytes, truncated msgpack, huge values, deep nesting, unknown extension types,
lying length headers, wrong or missing CloudEvents headers: every hostile record lands in
the dead-letter topic with a reason, every valid one is handled, the bridge stays
healthy, and its memory does not grow with the number of records.
"""

from __future__ import annotations

import gc
import logging
import random
import re
import tracemalloc
import uuid
from collections.abc import Callable

import msgpack
import pytest

from bridge import Bridge, KafkaTransport, MsgpackCodec, Producer, Route
from eventbus import EventBus
from tests.bridge.helpers import wait_for
from tests.reliability.conftest import scaled
from tests.reliability.helpers import read_all

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
HOSTILE = scaled(10_000, 400)
MAX_SIZE = 64 * 1024  # the receiving codec's limit; "huge" values exceed it


def good_headers(ce_type: bytes = b"in.item") -> list[tuple[str, bytes]]:
    return [
        ("ce_specversion", b"1.0"),
        ("ce_id", str(uuid.uuid4()).encode()),
        ("ce_source", b"hostile-test"),
        ("ce_type", ce_type),
        ("content-type", b"application/vnd.msgpack"),
    ]


def without(headers: list[tuple[str, bytes]], name: str) -> list[tuple[str, bytes]]:
    return [h for h in headers if h[0] != name]


def nested(depth: int) -> bytes:
    return b"\x81\xa1x" + b"\x91" * depth + b"\xc0"  # {"x": [[[...nil...]]]}


def hostile(rng: random.Random, i: int) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    """The ``i``-th hostile record: (value, headers)."""
    ok = msgpack.packb({"n": -1})
    kinds: list[Callable[[], tuple[bytes | None, list[tuple[str, bytes]]]]] = [
        lambda: (rng.randbytes(rng.randint(1, 300)), good_headers()),
        lambda: (msgpack.packb({"n": 1, "s": "x" * 40})[: rng.randint(1, 40)], good_headers()),
        lambda: (msgpack.packb({"n": 1, "blob": b"\x00" * (MAX_SIZE * 3)}), good_headers()),
        lambda: (nested(rng.randint(40, 5000)), good_headers()),
        lambda: (
            msgpack.packb({"x": msgpack.ExtType(rng.randint(5, 127), b"abc")}),
            good_headers(),
        ),
        lambda: (b"\x81\xa1x\xdd\x7f\xff\xff\xff", good_headers()),  # claims 2**31 items
        lambda: (msgpack.packb([1, 2, 3]), good_headers()),  # not a map
        lambda: (None, good_headers()),
        lambda: (ok, without(good_headers(), "ce_id")),
        lambda: (ok, [(k, b"0.3" if k == "ce_specversion" else v) for k, v in good_headers()]),
        lambda: (ok, []),
        lambda: (ok, good_headers(b"\xff\xfe")),  # ce_type not UTF-8
        lambda: (ok, [(k, b"text/plain" if k == "content-type" else v) for k, v in good_headers()]),
        lambda: (
            msgpack.packb({"x": msgpack.ExtType(1, b"short")}),
            good_headers(),
        ),  # bad datetime
    ]
    return kinds[i % len(kinds)]()


def traced() -> tuple[int, int]:
    """Traced Python memory of the bridge now: without and with the Kafka client's
    current fetch batch.

    The transport holds the last batch of fetched records (values up to 192 KiB here)
    until the next fetch: bounded by the batch, so the growth check leaves allocations
    of ``bridge/_kafka.py`` out."""
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, "*/logging/*"), tracemalloc.Filter(False, "*/_pytest/*")]
    )
    total = sum(stat.size for stat in snapshot.statistics("filename"))
    without = snapshot.filter_traces([tracemalloc.Filter(False, "*/bridge/_kafka.py")])
    return sum(stat.size for stat in without.statistics("filename")), total


def send(producer: Producer, topic: str, rng: random.Random, start: int, count: int) -> None:
    """Send ``count`` hostile and ``count`` valid records, interleaved at random."""
    order = [True] * count + [False] * count
    rng.shuffle(order)
    hostile_i = valid_i = start
    for is_hostile in order:
        if is_hostile:
            value, headers = hostile(rng, hostile_i)
            headers.append(("x-test-hostile", str(hostile_i).encode()))
            hostile_i += 1
        else:
            value, headers = msgpack.packb({"n": valid_i}), good_headers()
            valid_i += 1
        producer.produce(topic, value, None, headers)  # type: ignore[arg-type]
    assert producer.flush(60) == 0


def test_hostile_records_are_dead_lettered_and_valid_ones_handled(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    figures: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # pytest keeps every log record of a test, with its arguments: 10k dead-letter
    # warnings would look like a leak of the bridge. Drop them (the reasons are checked
    # in the dead-letter headers).
    quiet = logging.getLogger("bridge")
    monkeypatch.setattr(quiet, "propagate", False)
    monkeypatch.setattr(quiet, "handlers", [logging.NullHandler()])
    topic, dlq = make_topic(partitions=2), make_topic()
    rng = random.Random(20261128)
    bus = EventBus()
    handled: list[int] = []
    bus.on("in.item")(lambda sender, *, n: handled.append(n))
    transport = KafkaTransport({"bootstrap.servers": kafka_bootstrap})
    bridge = Bridge(
        bus,
        transport=transport,
        service="hostile",
        routes=[Route.inbound("in.*", topic=topic, dlq=dlq)],
        codec=MsgpackCodec(max_size=MAX_SIZE),
        unrouted="dlq",  # a wrong ce_type must not vanish either
        dedup_size=1000,
        create_topics=False,
    )
    producer = transport.producer()
    half = HOSTILE // 2
    with bridge:
        tracemalloc.start()
        try:
            send(producer, topic, rng, 0, half)
            wait_for(lambda: bridge.stats.received == 2 * half, timeout=600, what="1st half")
            first_half = traced()
            send(producer, topic, rng, half, half)
            wait_for(lambda: bridge.stats.received == 4 * half, timeout=600, what="2nd half")
            second_half = traced()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert bridge.healthy
    producer.close()

    dead = read_all(kafka_bootstrap, dlq)
    dead_ids = sorted(int(dict(m.headers())["x-test-hostile"]) for m in dead)
    reasons = [dict(m.headers()).get("eventbus-dlq-reason", b"") for m in dead]
    after_first, after_second = first_half[0], second_half[0]
    growth = after_second - after_first
    figures(
        hostile=2 * half,
        valid=2 * half,
        dead_lettered=len(dead),
        handled=len(handled),
        traced_after_first_half_kib=after_first // 1024,
        traced_after_second_half_kib=after_second // 1024,
        growth_kib=growth // 1024,
        growth_with_fetch_buffer_kib=(second_half[1] - first_half[1]) // 1024,
        peak_kib=peak // 1024,
        reasons=sorted({re.sub(r"\d+", "N", r.decode())[:70] for r in reasons}),
    )
    assert dead_ids == list(range(2 * half))  # each hostile record once, none valid
    assert all(reasons)
    assert sorted(handled) == list(range(2 * half))
    assert bridge.stats.dead_lettered == 2 * half
    assert growth < 1024 * 1024, f"memory grew by {growth} bytes over {half} records"
