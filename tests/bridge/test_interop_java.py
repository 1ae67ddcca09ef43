"""A foreign client reads the bridge's records: Kafka's own Java ConsoleConsumer.

It sees the CloudEvents headers as plain text and the key as the partition key; the value
is the payload as a plain msgpack map (checked byte for byte against ``msgpack.packb``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import msgpack

from bridge import Bridge, KafkaTransport, Route
from eventbus import EventBus
from tests.conftest import console_consumer


def test_java_console_consumer_reads_a_bridge_record(
    kafka_bootstrap: str, kafka_topic: str, kafka_libs: Path
) -> None:
    bus = EventBus()
    with Bridge(
        bus,
        transport=KafkaTransport({"bootstrap.servers": kafka_bootstrap}),
        service="user-service",
        routes=[Route.outbound("user.*", topic=kafka_topic, key="user_id")],
    ) as bridge:
        bus.emit("user.registered", user_id=42, email="a@example.com")
    assert bridge.stats.delivered == 1

    cmd = console_consumer(
        kafka_bootstrap,
        kafka_topic,
        kafka_libs,
        "print.headers=true",
        "print.key=true",
        "print.value=false",
    )
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    [line] = run.stdout.splitlines()
    headers_text, key = line.split("\t")[:2]
    headers = dict(item.split(":", 1) for item in headers_text.split(","))
    assert key == "42"
    assert headers["ce_specversion"] == "1.0"
    assert headers["ce_type"] == "user.registered"
    assert headers["ce_source"] == "user-service"
    assert headers["content-type"] == "application/vnd.msgpack"
    assert headers["eventbus-origin"] == bridge.id
    # The value: a plain msgpack map, the same bytes any msgpack library writes.
    expected = msgpack.packb({"user_id": 42, "email": "a@example.com"}, use_bin_type=True)
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": "interop",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([kafka_topic])
    try:
        msg = None
        for _ in range(60):
            msg = consumer.poll(1.0)
            if msg is not None and not msg.error():
                break
        assert msg is not None and msg.value() == expected
    finally:
        consumer.close()
