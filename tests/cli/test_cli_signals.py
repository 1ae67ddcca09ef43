"""Signals while starting: the daemon stops at once when told (an unreachable broker, a
group that keeps it waiting), ``/healthz`` answers from the start, and ``check``,
``emit`` and ``tail`` end on Ctrl-C with status 130 and no traceback."""

from __future__ import annotations

import re
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .helpers import Proc

UNREACHABLE = "127.0.0.1:1"
READY_TIMEOUT = 300.0  # long: each test stops the process well before it runs out
# "At once": a twentieth of the ready timeout, not the second it takes on an idle machine
# (a loaded 2-core CI machine needs seconds to stop a process and its librdkafka threads).
STOPPED_WITHIN = READY_TIMEOUT / 20
EXIT_TIMEOUT = 60.0  # a process that waits out READY_TIMEOUT fails here, not at 300 s


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "svc.toml"
    path.write_text(
        f"[bridge]\nservice='svc'\nready_timeout={READY_TIMEOUT}\n{extra}\n"
        f"[kafka]\n'bootstrap.servers'='{UNREACHABLE}'\n"
        "[[route]]\nsignals='a.b'\ntopic='t'\ndirection='in'\nrequire_handlers=false\n"
    )
    return path


def _health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_reaching_the_broker_stops_the_daemon_at_once(
    tmp_path: Path, signum: signal.Signals
) -> None:
    config = _config(tmp_path, "metrics_port=0")
    proc = Proc(["-m", "bridge", "run", "-c", str(config), "--log-level", "DEBUG"])
    try:
        line = proc.wait_for("metrics and health on http://")
        port = int(re.search(r":(\d+)/", line).group(1))  # type: ignore[union-attr]
        assert _health(port) == 503  # served from the start, not "connection refused"
        proc.wait_for("reaching the Kafka broker")
        sent = time.monotonic()
        proc.process.send_signal(signum)
        status = proc.finish(EXIT_TIMEOUT)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert status == 0, proc.output
    assert f"{signum.name} received while starting: stopped" in proc.output
    assert "Traceback" not in proc.output
    # Stopped in about a second, far from the ready_timeout it used to wait out.
    assert took < STOPPED_WITHIN, f"took {took:.1f} s"


@pytest.mark.parametrize(
    "args",
    [
        ["check", "--timeout", str(READY_TIMEOUT)],
        ["emit", "a.b", "x=1", "--topic", "t", "--timeout", str(READY_TIMEOUT)],
        ["tail", "t", "--timeout", str(READY_TIMEOUT)],
    ],
    ids=["check", "emit", "tail"],
)
def test_ctrl_c_ends_a_command_with_130_and_no_traceback(tmp_path: Path, args: list[str]) -> None:
    proc = Proc(["-m", "bridge", *args, "-c", str(_config(tmp_path)), "--log-level", "DEBUG"])
    try:
        proc.wait_for("reaching the Kafka broker")
        sent = time.monotonic()
        proc.process.send_signal(signal.SIGINT)
        status = proc.finish(EXIT_TIMEOUT)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert status == 130, proc.output
    assert "Traceback" not in proc.output and "interrupted" in proc.output
    assert took < STOPPED_WITHIN, f"took {took:.1f} s"
