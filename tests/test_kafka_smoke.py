"""Smoke tests of the test broker itself: consumer groups commit, and Kafka's own Java
client reads what confluent-kafka wrote. If these fail, every other Kafka test is suspect."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import console_consumer

pytestmark = pytest.mark.kafka

N = 25


def _consumer(bootstrap: str, group: str):  # -> confluent_kafka.Consumer
    from confluent_kafka import Consumer

    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,  # offsets are stored by hand once processed
        }
    )


def test_consumer_group_stores_and_commits_offsets(kafka_bootstrap: str, kafka_topic: str):
    from confluent_kafka import Producer, TopicPartition

    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(N):
        producer.produce(kafka_topic, key=f"k{i}", value=f"v{i}")
    assert producer.flush(30) == 0

    group = f"smoke-{uuid.uuid4().hex}"
    consumer = _consumer(kafka_bootstrap, group)
    consumer.subscribe([kafka_topic])
    values = []
    deadline = time.monotonic() + 60
    while len(values) < N and time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        values.append(msg.value().decode())
        consumer.store_offsets(message=msg)
    consumer.commit(asynchronous=False)  # commits the stored offsets
    consumer.close()
    assert values == [f"v{i}" for i in range(N)]

    # A new member of the same group resumes after the last committed record: nothing new.
    consumer = _consumer(kafka_bootstrap, group)
    try:
        committed = consumer.committed([TopicPartition(kafka_topic, 0)], timeout=30)
        assert [tp.offset for tp in committed] == [N]
        consumer.subscribe([kafka_topic])
        deadline = time.monotonic() + 60
        while not consumer.assignment() and time.monotonic() < deadline:
            assert consumer.poll(0.5) is None
        assert consumer.assignment(), "the second consumer was never assigned a partition"
        assert consumer.poll(2.0) is None
        # ... and it is live: a record produced now is the only one it gets.
        producer.produce(kafka_topic, key="late", value="late")
        assert producer.flush(30) == 0
        msg = None
        while msg is None and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
        assert msg is not None and msg.error() is None
        assert (msg.offset(), msg.value()) == (N, b"late")
    finally:
        consumer.close()


def test_java_console_consumer_reads_confluent_record(
    kafka_bootstrap: str, kafka_topic: str, kafka_libs: Path
):
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(
        kafka_topic,
        key=b"order-42",
        value=b"hello from python",
        headers=[("trace-id", b"abc123"), ("source", b"pytest")],
    )
    assert producer.flush(30) == 0

    cmd = console_consumer(
        kafka_bootstrap, kafka_topic, kafka_libs, "print.headers=true", "print.key=true"
    )
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    # Default separators: headers "k:v,k:v", then TAB key, TAB value.
    assert run.stdout.splitlines() == ["trace-id:abc123,source:pytest\torder-42\thello from python"]
    assert "Processed a total of 1 messages" in run.stderr
