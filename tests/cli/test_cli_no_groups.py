"""``tail`` and ``dlq ls``/``show``/``purge --until`` read without a consumer group: nothing
is committed and no group is left behind on the broker (``Transport.reader``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions

from bridge import Bridge, KafkaTransport, MemoryTransport, Route
from eventbus import EventBus

from .helpers import cli


def groups_reading(admin: Any, topic: str, groups: set[str]) -> list[str]:
    """Those of ``groups`` with committed offsets on ``topic``."""
    if not groups:
        return []
    found = []
    for group in sorted(groups):
        request = [ConsumerGroupTopicPartitions(group)]
        result = admin.list_consumer_group_offsets(request)[group].result(timeout=10)
        if any(tp.topic == topic for tp in result.topic_partitions):
            found.append(group)
    return found


def group_names(admin: Any) -> set[str]:
    listed = admin.list_consumer_groups(request_timeout=10).result(timeout=10)
    return {g.group_id for g in listed.valid}


@pytest.mark.kafka
def test_tail_and_dlq_reads_leave_no_consumer_group(
    tmp_path: Path, kafka_bootstrap: str, kafka_admin: Any, make_topic: Callable[..., str]
) -> None:
    topic = make_topic(2)
    dlq = make_topic(2)
    config = tmp_path / "svc.toml"
    config.write_text(
        "\n".join(
            [
                "[bridge]",
                'service = "svc"',
                "[kafka]",
                f'"bootstrap.servers" = "{kafka_bootstrap}"',
                "[[route]]",
                'signals = "order.*"',
                f'topic = "{topic}"',
                f'dlq = "{dlq}"',
                'direction = "in"',
                "require_handlers = false",
                "",
            ]
        )
    )
    bus = EventBus()
    transport = KafkaTransport({"bootstrap.servers": kafka_bootstrap})
    with Bridge(
        bus,
        transport=transport,
        service="shop",
        routes=[Route.outbound("order.*", topic=dlq, key="n")],
    ):
        for n in range(4):
            bus.emit("order.placed", n=n)
    transport.close()
    before = group_names(kafka_admin)

    def run(*args: str) -> list[str]:
        proc = cli(*args, "-c", str(config), cwd=tmp_path)
        assert proc.process.returncode == 0, proc.output
        return proc.stdout

    [summary] = json.loads("\n".join(run("dlq", "ls", "--json")))
    assert summary["count"] == 4
    assert len(run("dlq", "show", dlq, "--json")) == 4
    assert len(run("tail", dlq, "--from-beginning", "-n", "4", "--json")) == 4
    assert run("dlq", "purge", dlq, "--until", "1h", "--json")
    new = group_names(kafka_admin) - before
    # other tests may create groups meanwhile: none of them reads this test's topics
    assert groups_reading(kafka_admin, dlq, new) == []


def test_a_reader_starts_where_asked_and_commits_nothing() -> None:
    transport = MemoryTransport()
    transport.ensure_topics(["t"], 2)
    producer = transport.producer()
    for n in range(4):
        producer.produce("t", b"%d" % n, key=b"%d" % n)
    producer.flush(1)
    with transport.reader("t", from_beginning=True) as reader:
        seen = [reader.poll(0.1) for _ in range(4)]
        assert all(seen) and reader.poll(0) is None
        reader.store(seen[0])  # type: ignore[arg-type]
        reader.commit()
    with transport.reader("t") as reader:  # from the end: nothing yet
        assert reader.poll(0) is None
        producer.produce("t", b"late")
        producer.flush(1)
        assert reader.poll(0.1) is not None
    assert transport.broker._groups == {} and transport.broker._committed == {}
