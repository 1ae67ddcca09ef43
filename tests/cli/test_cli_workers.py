"""``eventbus-bridge run --workers N`` on the real broker: N processes of one service in
one consumer group, supervised by the daemon (restart, drain), one /metrics and /healthz."""

from __future__ import annotations

import collections
import os
import re
import signal
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from .helpers import Proc, records, wait_for
from .test_cli_kafka import Sender, service_file

pytestmark = pytest.mark.kafka

FAST_GROUP = [
    "--set=kafka.auto.offset.reset=earliest",
    "--set=kafka.session.timeout.ms=6000",  # a killed worker's partitions come back soon
]


def start(path: Path, tmp_path: Path, *args: str, delay: float = 0.0) -> Proc:
    proc = Proc(
        ["-m", "bridge", "run", "-c", str(path), "--workers", "2", *FAST_GROUP, *args],
        cwd=tmp_path,
        env={"RECORD_FILE": str(tmp_path / "events.jsonl"), "HANDLER_DELAY": str(delay)},
    )
    proc.wait_for("bridge.workers: ready:", 60)
    return proc


def worker_pid(proc: Proc, index: int, start: int = 1) -> int:
    """The pid of the ``start``-th start of worker ``index``, from the daemon's log."""
    pattern = rf"worker {index} started \(pid (\d+)\)"
    wait_for(lambda: len(re.findall(pattern, proc.output)) >= start, 30, f"worker {index}")
    return int(re.findall(pattern, proc.output)[start - 1])


def http(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{name}\{{[^}}]*\}} (\S+)$", text, flags=re.M)
    return float(found.group(1)) if found else -1.0


def committed_everything(bootstrap: str, group: str, topic: str, partitions: int) -> bool:
    """True when ``group`` committed the end of every partition of ``topic``: a new
    member of the group would find nothing left to read."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        committed = consumer.committed(tps, timeout=10)
        ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps]
        return [tp.offset for tp in committed] == ends and sum(ends) > 0
    finally:
        consumer.close()


def test_two_workers_share_the_partitions_handle_each_record_once_and_drain(
    tmp_path: Path, kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic(partitions=4)
    service = f"workers-{uuid.uuid4().hex[:8]}"
    path = service_file(tmp_path, kafka_bootstrap, topic, service)
    # Static membership: each worker gets an instance id of its own (one id would fence).
    static = f"--set=kafka.group.instance.id={service}"
    daemon = start(path, tmp_path, "--metrics-port", "0", static)
    sender = Sender(kafka_bootstrap, topic)
    try:
        port = int(daemon.wait_for("metrics and health on").rsplit(":", 1)[1].strip("/"))
        assert http(port, "/healthz")[0] == 200
        sender.send(range(400))
        wait_for(lambda: len(records(tmp_path / "events.jsonl")) >= 400, 30, "400 events")
        seen = collections.Counter(r["n"] for r in records(tmp_path / "events.jsonl"))
        assert set(seen) == set(range(400)) and set(seen.values()) == {1}, "each exactly once"
        pids = {r["pid"] for r in records(tmp_path / "events.jsonl")}
        assert pids == {worker_pid(daemon, 0), worker_pid(daemon, 1)}, "both workers handle"
        assert os.getpid() not in pids and daemon.process.pid not in pids
        wait_for(
            lambda: (
                metric(http(port, "/metrics")[1], "eventbus_bridge_events_handled_total") == 400
            ),
            10,
            "the daemon's /metrics summing both workers",
        )
        text = http(port, "/metrics")[1]
        labels = f'service="{service}",worker="1"'
        assert f"eventbus_bridge_worker_healthy{{{labels}}} 1.0" in text
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.finish(60) == 0, daemon.output
    finally:
        sender.close()
        daemon.kill()
    out = daemon.output
    assert "SIGTERM received: draining 2 workers" in out
    assert "bridge.daemon[w0]: stopped: " in out and "bridge.daemon[w1]: stopped: " in out
    assert "bridge.workers: stopped: 400 in: 400 handled" in out
    assert "restarting it" not in out and "fenced" not in out.lower()
    assert committed_everything(kafka_bootstrap, service, topic, 4)


def test_a_killed_worker_is_restarted_and_nothing_is_lost(
    tmp_path: Path, kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic(partitions=4)
    service = f"workers-{uuid.uuid4().hex[:8]}"
    path = service_file(tmp_path, kafka_bootstrap, topic, service)
    # Static membership: the restarted worker takes its partitions back under its id
    # at once, without waiting for the killed one's session to time out.
    static = f"--set=kafka.group.instance.id={service}"
    daemon = start(path, tmp_path, "--metrics-port", "0", static, delay=0.01)
    sender = Sender(kafka_bootstrap, topic)
    try:
        port = int(daemon.wait_for("metrics and health on").rsplit(":", 1)[1].strip("/"))
        sender.send(range(300))
        victim = worker_pid(daemon, 1)
        wait_for(
            lambda: any(r["pid"] == victim for r in records(tmp_path / "events.jsonl")),
            30,
            "worker 1 handling",
        )
        os.kill(victim, signal.SIGKILL)
        daemon.wait_for(f"worker 1 (pid {victim}) exited with signal SIGKILL", 10)
        wait_for(lambda: http(port, "/healthz")[0] == 503, 10, "/healthz 503 without worker 1")
        successor = worker_pid(daemon, 1, start=2)
        wait_for(
            lambda: {r["n"] for r in records(tmp_path / "events.jsonl")} == set(range(300)),
            45,
            "every event handled",
        )
        wait_for(lambda: http(port, "/healthz")[0] == 200, 30, "/healthz 200 again")
        assert "eventbus_bridge_worker_restarts_total" in http(port, "/metrics")[1]
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.finish(60) == 0, daemon.output
    finally:
        sender.close()
        daemon.kill()
    assert successor != victim
    assert committed_everything(kafka_bootstrap, service, topic, 4)


FAILS_IN_WORKERS = """
import multiprocessing
from eventbus import default_bus

if multiprocessing.parent_process() is not None:
    raise RuntimeError("this module refuses to load in a worker")

@default_bus.on("test.*")
def record(sender, **payload):
    pass
"""


def test_a_worker_with_a_configuration_error_stops_the_daemon_with_status_2(
    tmp_path: Path, kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic(partitions=2)
    path = service_file(tmp_path, kafka_bootstrap, topic, f"workers-{uuid.uuid4().hex[:8]}")
    (tmp_path / "recorder.py").write_text(FAILS_IN_WORKERS)  # loads in the parent only
    proc = Proc(["-m", "bridge", "run", "-c", str(path), "--workers", "2"], cwd=tmp_path)
    assert proc.finish(60) == 2, proc.output
    assert "refuses to load in a worker" in proc.output
    assert "a configuration error, see its log above): stopping the daemon" in proc.output
    assert "restarting it" not in proc.output
