"""A replica fenced by the broker (static membership: a second daemon with its
``group.instance.id``) does not stay alive handling nothing: it fails, turns unhealthy and
exits 1, so that its supervisor sees it."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli.helpers import RECORDER, Proc

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CONFIG = """
[bridge]
service = "fenced-{suffix}"
modules = ["recorder"]

[kafka]
"bootstrap.servers" = "{bootstrap}"
"group.instance.id" = "replica-0"

[[route]]
signals = "test.*"
topic = "{topic}"
direction = "in"
"""


def test_a_fenced_static_member_exits_1(
    kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path
) -> None:
    (tmp_path / "recorder.py").write_text(RECORDER)
    config = tmp_path / "svc.toml"
    config.write_text(
        CONFIG.format(suffix=uuid.uuid4().hex[:8], bootstrap=kafka_bootstrap, topic=make_topic())
    )
    env = {"RECORD_FILE": str(tmp_path / "record.jsonl")}
    args = ["-m", "bridge", "run", "-c", str(config)]
    first = Proc(args, cwd=tmp_path, env=env)
    second = None
    try:
        first.wait_for("ready: service", timeout=60)
        second = Proc(args, cwd=tmp_path, env=env)  # the same group.instance.id: a mistake
        status = first.finish(120)
        assert status == 1, first.output
        assert "the bridge failed" in first.output and "FENCED" in first.output.upper()
    finally:
        first.kill()
        if second is not None:
            if second.process.poll() is None:
                second.process.send_signal(signal.SIGTERM)
            second.finish(60)
