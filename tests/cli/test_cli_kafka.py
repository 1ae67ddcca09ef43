"""The daemon and the CLI against the real broker: run, tail, emit, check, replicas."""

from __future__ import annotations

import json
import signal
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge import Bridge, KafkaTransport, Route
from eventbus import EventBus

from .helpers import RECORDER, Proc, cli, records, wait_for

pytestmark = pytest.mark.kafka


def service_file(tmp_path: Path, bootstrap: str, topic: str, service: str, **extra: Any) -> Path:
    """A daemon config hosting the recorder module on ``topic`` (inbound ``test.*``)."""
    (tmp_path / "recorder.py").write_text(RECORDER)
    lines = [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    path = tmp_path / f"{service}.toml"
    path.write_text(
        "\n".join(
            [
                "[bridge]",
                f'service = "{service}"',
                'modules = ["recorder"]',
                "backoff = 0.05",
                *lines,
                "[kafka]",
                f'"bootstrap.servers" = "{bootstrap}"',
                '"sasl.password" = "hunter2"  # unused by PLAINTEXT; must never be printed',
                '"heartbeat.interval.ms" = 300  # members hear of a rebalance sooner',
                "[[route]]",
                'signals = "test.*"',
                f'topic = "{topic}"',
                'direction = "in"',
                "",
            ]
        )
    )
    return path


def daemon(path: Path, tmp_path: Path, *args: str, delay: float = 0.0) -> Proc:
    proc = Proc(
        ["-m", "bridge", "run", "-c", str(path), *args],
        cwd=tmp_path,
        env={"RECORD_FILE": str(tmp_path / "events.jsonl"), "HANDLER_DELAY": str(delay)},
    )
    proc.wait_for("bridge.daemon: ready:", 60)
    return proc


def stop(proc: Proc) -> None:
    proc.process.send_signal(signal.SIGTERM)
    assert proc.finish(30) == 0, proc.output
    assert "SIGTERM received: draining" in proc.output and "stopped:" in proc.output
    assert "hunter2" not in proc.output


class Sender:
    """A bridge in the test process that publishes ``test.event`` with ``n`` as the key."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bus = EventBus()
        self.bridge = Bridge(
            self.bus,
            transport=KafkaTransport({"bootstrap.servers": bootstrap}),
            service="test-sender",
            routes=[Route.outbound("test.event", topic=topic, key="n")],
            create_topics=False,
        )
        self.bridge.start()

    def send(self, numbers: range) -> None:
        for n in numbers:
            self.bus.emit("test.event", n=n)
        wait_for(lambda: self.bridge.stats.delivered >= numbers.stop, 20, "deliveries")

    def close(self) -> None:
        self.bridge.stop()


def handled(tmp_path: Path) -> set[int]:
    return {r["n"] for r in records(tmp_path / "events.jsonl")}


def test_run_hosts_handlers_and_drains_on_sigterm_without_loss(
    tmp_path: Path, kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic()
    path = service_file(tmp_path, kafka_bootstrap, topic, f"svc-{uuid.uuid4().hex[:8]}")
    # 0.05 s per event: 5 s for all 100, so that the SIGTERM sent after the first 10 lands
    # mid-stream even when the test process is slow to send it (a loaded machine).
    first = daemon(path, tmp_path, "--metrics-port", "0", delay=0.05)
    sender = Sender(kafka_bootstrap, topic)
    try:
        port = int(first.wait_for("metrics and health on").rsplit(":", 1)[1].strip("/"))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert response.status == 200
        sender.send(range(100))
        wait_for(lambda: len(handled(tmp_path)) >= 10, 30, "the first events handled")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert b"eventbus_bridge_events_in_total" in response.read()
        stop(first)  # mid-stream: the running handler finishes, offsets are committed
        done_by_first = handled(tmp_path)
        assert 10 <= len(done_by_first) < 100, "SIGTERM should land mid-stream"
        second = daemon(path, tmp_path)
        wait_for(lambda: handled(tmp_path) == set(range(100)), 30, "every event handled")
        stop(second)
    finally:
        sender.close()
        first.kill()
    pids = {r["pid"] for r in records(tmp_path / "events.jsonl")}
    assert len(pids) == 2


def test_a_second_signal_exits_at_once_and_the_event_comes_back(
    tmp_path: Path, kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic()
    path = service_file(tmp_path, kafka_bootstrap, topic, f"svc-{uuid.uuid4().hex[:8]}")
    first = daemon(path, tmp_path, "--metrics-port", "0", delay=30)
    sender = Sender(kafka_bootstrap, topic)
    try:
        port = int(first.wait_for("metrics and health on").rsplit(":", 1)[1].strip("/"))
        sender.send(range(1))

        def handler_running() -> bool:
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                return (
                    b'eventbus_bridge_events_in_total{service="'
                    in response.read().split(b"} 1.0")[0] + b'"'
                )

        wait_for(handler_running, 30, "the handler to start")
        first.process.send_signal(signal.SIGTERM)
        first.wait_for("draining", 30)  # blocked behind the 30 s handler
        first.process.send_signal(signal.SIGTERM)
        assert first.finish(30) == 128 + signal.SIGTERM
        assert "SIGTERM again: exiting without draining" in first.output
        # Nothing was committed: the partition's next owner gets the event again. (It
        # would only join after the dead member's session timeout, so ask the broker.)
        import confluent_kafka

        probe = confluent_kafka.Consumer(
            {"bootstrap.servers": kafka_bootstrap, "group.id": path.stem}
        )
        try:
            [committed] = probe.committed([confluent_kafka.TopicPartition(topic, 0)], timeout=10)
        finally:
            probe.close()
        assert committed.offset <= 0  # the event (offset 0) is not committed
        assert handled(tmp_path) == set()
    finally:
        sender.close()
        first.kill()


def test_two_replicas_share_the_partitions_and_take_over(
    tmp_path: Path, kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic(2)
    path = service_file(tmp_path, kafka_bootstrap, topic, f"svc-{uuid.uuid4().hex[:8]}")
    first = daemon(path, tmp_path)
    second = daemon(path, tmp_path)
    sender = Sender(kafka_bootstrap, topic)
    try:
        # Keep sending until both replicas handled events: the group gave each a partition.
        sent = 0
        while len({r["pid"] for r in records(tmp_path / "events.jsonl")}) < 2:
            assert sent < 400, "the second replica never got a partition"
            sender.send(range(sent, sent + 20))
            sent += 20
            expected = set(range(sent))
            wait_for(lambda want=expected: handled(tmp_path) >= want, 30, "a batch handled")
        stop(first)
        survivor = second.process.pid
        sender.send(range(sent, sent + 40))
        expected = set(range(sent + 40))
        wait_for(lambda: handled(tmp_path) == expected, 60, "the handover")
        late = [r for r in records(tmp_path / "events.jsonl") if r["n"] >= sent]
        assert {r["pid"] for r in late} == {survivor}
        assert handled(tmp_path) == set(range(sent + 40))
        stop(second)
    finally:
        sender.close()
        first.kill()
        second.kill()


def test_tail_shows_what_emit_sent_and_survives_garbage(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic()
    done = cli(
        "emit", "user.registered", "user_id=42", "email=a@example.com", "tags=[1,2]",
        "--topic", topic, "--key", "user_id", "--source", "cli-test", "-b", kafka_bootstrap,
    )  # fmt: skip
    assert done.process.returncode == 0, done.output
    import confluent_kafka

    producer = confluent_kafka.Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, b"\xc1 not msgpack", b"k")
    assert producer.flush(10) == 0

    done = cli("tail", topic, "-b", kafka_bootstrap, "--from-beginning", "-n", "2", "--json")
    assert done.process.returncode == 0, done.output
    event, garbage = (json.loads(line) for line in done.stdout)
    assert event["type"] == "user.registered" and event["source"] == "cli-test"
    assert event["key"] == "42" and event["partition"] == 0 and event["offset"] == 0
    assert event["payload"] == {"user_id": 42, "email": "a@example.com", "tags": [1, 2]}
    assert garbage["offset"] == 1 and "ce_specversion" in garbage["error"]

    done = cli("tail", topic, "-b", kafka_bootstrap, "--from-beginning", "-n", "2")
    assert done.process.returncode == 0, done.output
    assert f"{topic}/0@0  user.registered  source=cli-test  key=42" in done.stdout[0]
    assert "UNDECODABLE" in done.stdout[1]

    done = cli(
        "emit", "user.registered", "--topic", "no-such-topic-" + topic, "-b", kafka_bootstrap
    )
    assert done.process.returncode == 1 and "does not exist" in done.output


def test_check_lists_routes_and_their_topics(
    tmp_path: Path, kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic()
    path = service_file(tmp_path, kafka_bootstrap, topic, "checked", create_topics=False)
    done = cli("check", "-c", str(path), cwd=tmp_path)
    assert done.process.returncode == 1, done.output  # the dead-letter topic is missing
    assert f"topic {topic}: exists (1 partition(s))" in done.output
    assert f"topic {topic}.dlq: MISSING" in done.output
    assert "modules imported: recorder" in done.output
    assert "sasl.password = ********" in done.output and "hunter2" not in done.output
    done = cli("check", "-c", str(path), "--set", "bridge.create_topics=true", cwd=tmp_path)
    assert done.process.returncode == 0, done.output
    assert done.stdout[-1] == "ok"
