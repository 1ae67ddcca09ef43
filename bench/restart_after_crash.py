"""Time from an immediate restart after ``kill -9`` to the first event handled again.

Not a throughput benchmark: it measures what an operator waits for after a crash, for
the session settings of docs/operations.md ("Restarting after a crash"): the default
``session.timeout.ms``, a shorter one, and static membership (``group.instance.id``).
Run on a real broker: ``KAFKA_BOOTSTRAP=host:port python bench/restart_after_crash.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.reliability.helpers import emit_events  # noqa: E402

SETTINGS = {
    "default": "",
    "session.timeout.ms = 10000": '"session.timeout.ms" = 10000',
    "session.timeout.ms = 6000": '"session.timeout.ms" = 6000',
    "static membership": '"group.instance.id" = "{group}-0"',
}

CONFIG = """
[bridge]
service = "restart-bench"
group = "{group}"
modules = ["tests.reliability.daemon"]

[kafka]
"bootstrap.servers" = "{bootstrap}"
"auto.offset.reset" = "earliest"
{extra}

[[route]]
signals = "load.*"
topic = "{topic}"
direction = "in"
"""


def lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for _ in fh)


def start(config: Path, out: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", "-c", str(config)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CRASH_TEST_OUT": str(out), "PYTHONPATH": str(ROOT)},
    )
    threading.Thread(target=lambda: proc.stderr and proc.stderr.read(), daemon=True).start()
    return proc


def measure(bootstrap: str, name: str, extra: str, work: Path) -> float:
    topic = f"restart-bench-{uuid.uuid4().hex[:8]}"
    group = f"group-{topic}"
    from bridge import KafkaTransport

    KafkaTransport({"bootstrap.servers": bootstrap}).ensure_topics([topic], 2, 30)
    emit_events(bootstrap, topic, 200)
    out = work / f"{topic}.txt"
    out.touch()
    config = work / f"{topic}.toml"
    config.write_text(
        CONFIG.format(
            group=group, topic=topic, bootstrap=bootstrap, extra=extra.format(group=group)
        )
    )
    daemon = start(config, out)
    deadline = time.monotonic() + 120
    while lines(out) < 200:
        assert time.monotonic() < deadline, "first run handled nothing"
        time.sleep(0.05)
    daemon.send_signal(signal.SIGKILL)
    daemon.wait()
    emit_events(bootstrap, topic, 1)  # something new to handle after the restart
    before = lines(out)
    restarted = time.monotonic()
    daemon = start(config, out)
    try:
        while lines(out) <= before:
            assert time.monotonic() - restarted < 180, f"{name}: nothing handled in 180 s"
            time.sleep(0.05)
        return time.monotonic() - restarted
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)


def main() -> None:
    bootstrap = os.environ["KAFKA_BOOTSTRAP"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in SETTINGS.items():
            seconds = measure(bootstrap, name, extra, Path(tmp))
            print(f"{name:<30} first event {seconds:5.1f} s after the restart", flush=True)


if __name__ == "__main__":
    main()
