"""Fault 1: the daemon (``eventbus-bridge run``) is killed (SIGKILL) mid-stream, then restarted.

Every event is handled (at-least-once); with persistent dedup each one exactly once,
except the events whose handlers may have finished just before the kill and whose ids
were not recorded yet, one per record running at once (docs/reliability.md,
"Effectively-once"). The same holds with ``concurrency = 16``.
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
from tests.reliability.helpers import emit_events

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
EVENTS = scaled(100_000, 2000)


CONFIG = """
[bridge]
service = "crash-test"
group = "{group}"
modules = ["tests.reliability.daemon"]
{dedup}
concurrency = {concurrency}

[kafka]
"bootstrap.servers" = "{bootstrap}"
"auto.offset.reset" = "earliest"
{membership}

[[route]]
signals = "load.*"
topic = "{topic}"
direction = "in"
"""


def start_daemon(config: Path, out: Path, seen: list[str] | None = None) -> subprocess.Popen[str]:
    """Run ``eventbus-bridge run -c config`` and return once it logged that it is ready
    (the lines logged until then are appended to ``seen``)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", "-c", str(config)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CRASH_TEST_OUT": str(out)},
    )
    assert proc.stderr is not None
    seen = [] if seen is None else seen
    for line in proc.stderr:  # blocks until the daemon is ready (or has died)
        seen.append(line)
        if "ready: service crash-test" in line:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining
            return proc
    raise AssertionError(f"daemon did not start (exit {proc.wait()}): {''.join(seen[-5:])}")


def lines(path: Path) -> list[str]:
    """The complete lines of ``path`` (a line being written as it is read is left out)."""
    with path.open() as fh:
        text = fh.read()
    return text[: text.rfind("\n") + 1].splitlines()


def count(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for _ in fh)


# Static membership: a restarted daemon takes its partitions back at once instead of
# waiting for the killed member's session to time out.
STATIC = """
"group.instance.id" = "{group}-daemon"
"session.timeout.ms" = 6000
"""


@pytest.mark.parametrize(
    ("dedup", "static", "concurrency"),
    [(False, True, 1), (True, True, 1), (True, True, 16), (False, False, 1), (False, False, 4)],
    ids=[
        "at-least-once",
        "persistent-dedup",
        "persistent-dedup-concurrency-16",
        "default-config",
        "default-config-concurrency-4",
    ],
)
def test_kill_9_in_the_middle_then_restart(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    tmp_path: Path,
    figures: Callable[..., None],
    dedup: bool,
    static: bool,
    concurrency: int,
) -> None:
    """The restart is immediate; without static membership (the default config) the new
    daemon waits for the killed member's session to time out, however long it is."""
    topic = make_topic(partitions=2)
    emit_events(kafka_bootstrap, topic, EVENTS)
    out = tmp_path / "handled.txt"
    out.touch()
    config = tmp_path / "crash-test.toml"
    config.write_text(
        CONFIG.format(
            group=f"daemon-{topic}",
            topic=topic,
            bootstrap=kafka_bootstrap,
            dedup=f'dedup_path = "{tmp_path / "dedup.db"}"' if dedup else "",
            concurrency=concurrency,
            membership=STATIC.format(group=f"daemon-{topic}") if static else "",
        )
    )

    t0 = time.monotonic()
    daemon = start_daemon(config, out)
    wait_for(lambda: count(out) >= EVENTS // 3, timeout=120, what="a third handled")
    daemon.send_signal(signal.SIGKILL)
    daemon.communicate()
    before_kill = count(out)

    restarted = time.monotonic()
    logged: list[str] = []
    daemon = start_daemon(config, out, logged)
    ready = time.monotonic() - restarted
    if not static:  # it waited for the killed member's session, and said so
        assert any("session.timeout.ms" in line for line in logged), "".join(logged)
    try:
        wait_for(
            lambda: len({line.split()[1] for line in lines(out)}) == EVENTS,
            timeout=300,
            what=f"all {EVENTS} events handled",
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=60)
    assert daemon.returncode == 0
    elapsed = time.monotonic() - t0

    runs = Counter(line.split()[1] for line in lines(out))
    assert set(runs) == {str(n) for n in range(EVENTS)}  # nothing lost
    duplicates = sum(c - 1 for c in runs.values())
    figures(
        events=EVENTS,
        handled_before_kill=before_kill,
        handler_runs=sum(runs.values()),
        duplicates=duplicates,
        seconds=round(elapsed, 1),
        restart_to_ready=round(ready, 1),
    )
    if dedup:
        # At most the events in the handler-to-record window at the moment of the kill:
        # one per record running at once. Records other keys finished past the
        # watermark are redelivered, and the dedup store drops them.
        assert duplicates <= concurrency, runs.most_common(3)
