"""The daemon is killed (SIGKILL) while records wait on delayed retry topics, then restarted.

Every tenth event fails while a flag file exists and goes to the retry topics; the
daemon is killed with records waiting there; the cause is fixed (the flag removed) and
the daemon restarted: every event is handled, the waiting ones by their failed handler
only once due, none is dead-lettered (docs/reliability.md, "Handling failures").
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.bridge.helpers import wait_for
from tests.reliability.conftest import scaled
from tests.reliability.helpers import emit_events, read_all

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
EVENTS = scaled(20_000, 1000)

CONFIG = """
[bridge]
service = "retry-crash"
group = "{group}"
modules = ["tests.reliability.retry_daemon"]
max_attempts = 1

[kafka]
"bootstrap.servers" = "{bootstrap}"
"auto.offset.reset" = "earliest"
"group.instance.id" = "{group}-daemon"
"session.timeout.ms" = 6000
"auto.commit.interval.ms" = 200

[[route]]
signals = "load.*"
topic = "{topic}"
direction = "in"
retry_delays = ["6s", "20s"]
"""
# The delays bound the time from the first failure to the kill: a record whose last retry
# comes due before the kill fails again (the flag is still there) and is dead-lettered,
# and the test fails. 26 s in all (it was 15), for a loaded machine; the first delay stays
# short (about the time the test takes to reach the kill): a slow machine only makes the
# run longer (records wait on the second topic), the usual one costs 1 s more.


def start_daemon(config: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", "-c", str(config)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "ready: service retry-crash" in line:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc
    raise AssertionError(f"daemon did not start (exit {proc.wait()}): {''.join(seen[-5:])}")


def committed(bootstrap: str, group: str, topic: str) -> int:
    """The sum of the committed offsets of ``group`` on ``topic``'s two partitions."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in (0, 1)], timeout=10)
        return sum(max(tp.offset, 0) for tp in offsets)
    finally:
        consumer.close()


def runs(path: Path) -> list[tuple[int, str]]:
    with path.open() as fh:
        return [(int(p[1]), p[2]) for p in (line.split() for line in fh) if len(p) == 3]


def test_kill_9_while_records_wait_on_retry_topics(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    tmp_path: Path,
    figures: Callable[..., None],
) -> None:
    topic = make_topic(partitions=2)
    out, broken = tmp_path / "handled.txt", tmp_path / "broken"
    out.touch()
    broken.touch()
    config = tmp_path / "retry-crash.toml"
    config.write_text(
        CONFIG.format(group=f"daemon-{topic}", topic=topic, bootstrap=kafka_bootstrap)
    )
    env = {"RETRY_TEST_OUT": str(out), "RETRY_TEST_BROKEN": str(broken)}
    failing = [n for n in range(EVENTS) if n % 10 == 0]

    t0 = time.monotonic()
    daemon = start_daemon(config, env)
    emit_events(kafka_bootstrap, topic, EVENTS)
    # Killed once every event was seen and some failed ones wait on a retry topic.
    wait_for(
        lambda: {n for n, what in runs(out) if what == "count"} >= set(range(EVENTS)),
        timeout=120,
        what="every event seen once",
    )
    # ... and the main topic's offsets are committed: the waiting records exist on the
    # retry topics only, so after the restart they can only come from there.
    wait_for(
        lambda: committed(kafka_bootstrap, f"daemon-{topic}", topic) == EVENTS,
        timeout=60,
        what="the main topic committed",
    )
    daemon.send_signal(signal.SIGKILL)
    daemon.communicate()
    waiting = {n for n, what in runs(out) if what == "fail"} - {
        n for n, what in runs(out) if what == "ok"
    }
    assert waiting, "no record was waiting for a retry at the kill"
    broken.unlink()  # the cause is fixed

    daemon = start_daemon(config, env)
    try:
        wait_for(
            lambda: {n for n, what in runs(out) if what == "ok"} == set(range(EVENTS)),
            timeout=120,
            what=f"all {EVENTS} events handled ok",
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=60)
    assert daemon.returncode == 0
    all_runs = runs(out)
    ok = Counter(n for n, what in all_runs if what == "ok")
    counted = Counter(n for n, what in all_runs if what == "count")
    assert set(ok) == set(range(EVENTS))  # nothing lost
    assert read_all(kafka_bootstrap, f"{topic}.dlq") == []  # fixed before the last delay
    # Records that waited at the kill ran their failed handler only: `count` ran once.
    assert all(counted[n] == 1 and ok[n] == 1 for n in waiting), [
        (n, counted[n], ok[n]) for n in sorted(waiting) if counted[n] != 1 or ok[n] != 1
    ][:5]
    figures(
        events=EVENTS,
        failing=len(failing),
        waiting_at_kill=len(waiting),
        handled_twice_after_kill=sum(c - 1 for c in counted.values()),
        seconds=round(time.monotonic() - t0, 1),
    )
