"""``eventbus-bridge dlq``: the runbook "a handler failed: find, fix, replay", on the broker.

A daemon hosts a handler that fails while a flag file exists; its dead letters are
listed, shown, and replayed with the CLI, to the topic (the daemon reruns them) and
straight to the handlers (the CLI process runs them).
"""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge import Bridge, KafkaTransport, Route
from bridge.cli import parse_time
from eventbus import EventBus
from tests.bridge.helpers import read

from .helpers import Proc, cli, records, wait_for

SHIPPING = '''
"""Handler module: ship() fails while $BROKEN_FILE exists; records what it handled."""
import json, os
from eventbus import default_bus

@default_bus.on("order.*")
def ship(sender, n, **_):
    if os.path.exists(os.environ["BROKEN_FILE"]):
        raise ConnectionError(f"carrier down for order {n}")
    with open(os.environ["RECORD_FILE"], "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "n": n}) + "\\n")
'''


@pytest.mark.kafka
def test_find_fix_replay(
    tmp_path: Path, kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic()
    dlq = topic + ".dlq"
    (tmp_path / "shipping_handlers.py").write_text(SHIPPING)
    broken = tmp_path / "broken"
    broken.write_text("")
    config = tmp_path / "shipping.toml"
    config.write_text(
        "\n".join(
            [
                "[bridge]",
                f'service = "shipping-{uuid.uuid4().hex[:6]}"',
                'modules = ["shipping_handlers"]',
                "max_attempts = 1",
                "[kafka]",
                f'"bootstrap.servers" = "{kafka_bootstrap}"',
                "[[route]]",
                'signals = "order.*"',
                f'topic = "{topic}"',
                'direction = "in"',
                "",
            ]
        )
    )
    env = {"BROKEN_FILE": str(broken), "RECORD_FILE": str(tmp_path / "events.jsonl")}
    daemon = Proc(["-m", "bridge", "run", "-c", str(config)], cwd=tmp_path, env=env)
    try:
        daemon.wait_for("bridge.daemon: ready:", 60)
        bus = EventBus()
        transport = KafkaTransport({"bootstrap.servers": kafka_bootstrap})
        with Bridge(
            bus,
            transport=transport,
            service="shop",
            routes=[Route.outbound("order.*", topic=topic)],
        ):
            for n, name in enumerate(["order.placed", "order.placed", "order.cancelled"]):
                bus.emit(name, n=n)
        read(transport, dlq, 3)

        def run(*args: str) -> Proc:
            proc = cli("dlq", *args, "-c", str(config), cwd=tmp_path, env=env)
            assert proc.process.returncode == 0, proc.output
            return proc

        # find
        [summary] = json.loads("\n".join(run("ls", "--json").stdout))
        assert summary["topic"] == dlq and summary["count"] == 3
        assert summary["types"] == {"order.placed": 2, "order.cancelled": 1}
        assert summary["reasons"] == {"ConnectionError": 3}
        assert list(summary["handlers"]) == ["shipping_handlers.ship"]
        text = run("ls").stdout
        assert text[0].startswith(f"{dlq}: 3 dead letter(s)")
        shown = [
            json.loads(line)
            for line in run("show", dlq, "--json", "--type", "order.cancelled").stdout
        ]
        assert len(shown) == 1 and shown[0]["payload"] == {"n": 2}
        assert "carrier down for order 2" in shown[0]["traceback"]
        assert shown[0]["topic"] == topic and shown[0]["handlers"] == ["shipping_handlers.ship"]
        plain = run("show", dlq, "-n", "1").output
        assert "traceback:" in plain and "ConnectionError" in plain and "payload:" in plain

        # fix, then replay: a dry run first changes nothing
        broken.unlink()
        dry = run("replay", dlq, "--type", "order.placed", "--dry-run")
        assert "3/3 read, 2 selected, 2 to replay" in dry.output
        assert records(tmp_path / "events.jsonl") == []
        done = run("replay", dlq, "--type", "order.placed")
        assert "3/3 read, 2 selected, 2 replayed, 0 failed again" in done.output
        wait_for(lambda: len(records(tmp_path / "events.jsonl")) == 2, 30, "the daemon's reruns")
        assert {r["pid"] for r in records(tmp_path / "events.jsonl")} == {daemon.process.pid}
        # the same command again: nothing left to replay
        again = run("replay", dlq, "--type", "order.placed")
        assert "0 to read" in again.output
        # the rest straight to the handlers, in the CLI's process
        direct = run("replay", dlq, "--to", "handlers", "--type", "order.cancelled", "--json")
        result = json.loads(direct.stdout[-1])
        assert result["replayed"] == 1 and result["finished"]
        handled = records(tmp_path / "events.jsonl")
        assert sorted(r["n"] for r in handled) == [0, 1, 2]
        assert [r["pid"] != daemon.process.pid for r in handled] == [False, False, True]
        # all replayed: purge them (a confirmation is required)
        refused = cli("dlq", "purge", dlq, "-c", str(config), cwd=tmp_path, env=env)
        assert refused.process.returncode == 2 and "confirm with --yes" in refused.output
        purged = run("purge", dlq, "--yes", "--json")
        assert json.loads(purged.stdout[-1])["count"] == 3
        [summary] = json.loads("\n".join(run("ls", "--json").stdout))
        assert summary["count"] == 0
        transport.close()
    finally:
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.finish(30) == 0, daemon.output


def test_parse_time_takes_iso_times_and_durations_ago() -> None:
    assert parse_time("2026-01-31T08:00", "--since") == 1769846400.0
    assert parse_time("2026-01-31T09:00+01:00", "--since") == 1769846400.0
    assert parse_time("2h", "--since", now=10_000.0) == 10_000.0 - 7200
    assert parse_time("30m", "--since", now=10_000.0) == 10_000.0 - 1800
    assert parse_time(None, "--since") is None
    with pytest.raises(Exception, match="--until 'yesterday'"):
        parse_time("yesterday", "--until")
