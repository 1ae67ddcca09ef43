"""Fault 1: the daemon is killed (SIGKILL) in the middle of a stream, then restarted.

Every event is handled (at-least-once); with persistent dedup each one exactly once,
except the one event whose handler may have finished just before the kill and whose id
was not recorded yet (docs/reliability.md, "Effectively-once").
"""

from __future__ import annotations

import signal
import subprocess
import sys
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


def start_daemon(args: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.daemon", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the bridge is ready (or the process died)
    assert line == "ready\n", f"daemon did not start: {line!r}, exit {proc.poll()}"
    return proc


def lines(path: Path) -> list[str]:
    with path.open() as fh:
        return fh.read().splitlines()


def count(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for _ in fh)


@pytest.mark.parametrize("dedup", [False, True], ids=["at-least-once", "persistent-dedup"])
def test_kill_9_in_the_middle_then_restart(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    tmp_path: Path,
    figures: Callable[..., None],
    dedup: bool,
) -> None:
    topic = make_topic(partitions=2)
    emit_events(kafka_bootstrap, topic, EVENTS)
    out = tmp_path / "handled.txt"
    out.touch()
    args = [kafka_bootstrap, topic, f"daemon-{topic}", str(out)]
    if dedup:
        args.append(str(tmp_path / "dedup.db"))

    t0 = time.monotonic()
    daemon = start_daemon(args)
    wait_for(lambda: count(out) >= EVENTS // 3, timeout=120, what="a third handled")
    daemon.send_signal(signal.SIGKILL)
    daemon.communicate()
    before_kill = count(out)

    daemon = start_daemon(args)
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
    )
    if dedup:
        # At most the one event in the handler-to-record window at the moment of the kill.
        assert duplicates <= 1, runs.most_common(3)
