"""`make demo`: the split-services demo runs to the end, on a real broker or the mock one."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from .helpers import ROOT


def run_demo(bootstrap: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "EVENTBUS_"))}
    if bootstrap:
        env["KAFKA_BOOTSTRAP"] = bootstrap
    return subprocess.run(
        [sys.executable, "-m", "examples.demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def check(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "== 1. Monolith" in out and "== 2. Split" in out
    assert "+++ examples/message-service.toml" in out  # the configuration diff
    assert out.count("(user 1, local signal)") == 1
    assert out.count("from user-service via Kafka topic users") == 3
    summary = out.strip().splitlines()[-1]
    match = re.search(
        r"3 users registered by the user-service process \(pid (\d+)\), 3 welcome messages "
        r"sent by the message-service process \(pid (\d+)\)",
        summary,
    )
    assert match and match.group(1) != match.group(2), summary


def test_demo_on_librdkafkas_mock_cluster() -> None:
    done = run_demo(None)
    check(done)
    assert "mock cluster" in done.stdout


@pytest.mark.kafka
def test_demo_on_the_real_broker(kafka_bootstrap: str) -> None:
    done = run_demo(kafka_bootstrap)
    check(done)
    assert f"the Kafka broker at {kafka_bootstrap}" in done.stdout
