"""What an operator sees of failures: handler tracebacks in the log, dead-letter headers
in ``tail``, an import error at the user's line, a shutdown summary that adds up."""

from __future__ import annotations

import json
import logging
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from bridge import Bridge, KafkaTransport, MemoryTransport, Route
from bridge._daemon import summary
from bridge._stats import Stats
from eventbus import EventBus
from tests.bridge.helpers import wait_for

from .helpers import cli


def _failing_bridges(transport: Any, topic: str, dlq: str) -> tuple[EventBus, Bridge, Bridge]:
    out, inbound = EventBus(), EventBus()

    @inbound.on("job.run")
    def charge_card(sender: Any, *, n: int) -> None:
        raise ValueError(f"card {n} declined")  # the line the traceback must show

    worker = Bridge(
        inbound,
        transport=transport,
        service="worker",
        routes=[Route.inbound("job.*", topic=topic, dlq=dlq)],
        max_attempts=3,
        backoff=0.001,
    )
    api = Bridge(
        out, transport=transport, service="api", routes=[Route.outbound("job.*", topic=topic)]
    )
    return out, worker, api


def test_a_dead_lettered_handler_failure_logs_its_traceback_and_each_retry_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="bridge")
    out, worker, api = _failing_bridges(MemoryTransport(), "jobs", "jobs.dlq")
    with worker, api:
        out.emit("job.run", n=7)
        wait_for(lambda: worker.stats.dead_lettered == 1, what="the dead letter")
    dead = [r for r in caplog.records if "dead-lettering" in r.getMessage()]
    assert len(dead) == 1 and dead[0].levelno == logging.WARNING
    text = dead[0].getMessage()
    assert "charge_card" in text and "Traceback (most recent call last)" in text
    assert 'raise ValueError(f"card {n} declined")' in text and "card 7 declined" in text
    retries = [
        r for r in caplog.records if "failed in" in r.getMessage() and "retrying" in r.getMessage()
    ]
    assert [r.levelno for r in retries] == [logging.DEBUG, logging.DEBUG]  # attempts 1 and 2
    assert all("card 7 declined" in r.getMessage() for r in retries)


def test_a_long_traceback_is_bounded() -> None:
    from bridge._dead_letters import LOG_TRACEBACK_LIMIT, bounded_traceback

    try:
        raise RuntimeError("a long story " * 1000 + "the end")
    except RuntimeError as exc:
        text = bounded_traceback(exc)
    assert len(text) < LOG_TRACEBACK_LIMIT + 100
    assert text.startswith("Traceback (most recent call last)") and text.endswith("the end")
    assert "characters left out" in text


@pytest.mark.kafka
def test_tail_shows_the_dead_letter_headers(kafka_bootstrap: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    topic, dlq = f"jobs-{suffix}", f"jobs-{suffix}.dlq"
    out, worker, api = _failing_bridges(
        KafkaTransport({"bootstrap.servers": kafka_bootstrap}), topic, dlq
    )
    with worker, api:
        out.emit("job.run", n=7)
        wait_for(lambda: worker.stats.dead_lettered == 1, timeout=60, what="the dead letter")

    done = cli("tail", dlq, "-b", kafka_bootstrap, "--from-beginning", "-n", "1")
    assert done.process.returncode == 0, done.output
    [line] = [line for line in done.stdout if "DEAD LETTER" in line]
    assert """reason="handler failed after 3 attempt(s): ValueError('card 7 declined')\"""" in line
    assert "error=ValueError" in line and "charge_card" in line and "attempts=3" in line
    assert re.search(rf"from={re.escape(topic)}/0@\d+", line) and "service=worker" in line

    done = cli("tail", dlq, "-b", kafka_bootstrap, "--from-beginning", "-n", "1", "--json")
    letter = json.loads(done.stdout[0])["dead_letter"]
    assert letter["reason"] == "handler failed after 3 attempt(s): ValueError('card 7 declined')"
    assert letter["error"] == "ValueError" and letter["attempts"] == "3"
    assert letter["topic"] == topic and letter["partition"] == "0" and letter["offset"].isdigit()
    assert "charge_card" in letter["handler"] and letter["service"] == "worker"


def test_an_import_failure_is_reported_at_the_users_line(tmp_path: Path) -> None:
    # The error is raised deep in the standard library (json's decoder); the line to fix
    # is the user's.
    (tmp_path / "settings_reader.py").write_text('import json\n\nSETTINGS = json.loads("{")\n')
    path = tmp_path / "svc.toml"
    path.write_text("[bridge]\nservice='svc'\nmodules=['settings_reader']\n")
    done = cli("check", "-c", str(path), cwd=tmp_path)
    assert done.process.returncode == 2
    assert f"(at {tmp_path / 'settings_reader.py'}:3)" in done.output, done.output


def test_the_shutdown_summary_accounts_for_every_record() -> None:
    stats = Stats(
        received=20,
        handled=12,
        retried=4,
        dead_lettered=2,
        unrouted=3,
        duplicates=1,
        echoes=1,
        produced=9,
        delivered=8,
        delivery_failed=1,
        in_flight=2,
    )
    line = summary(stats)
    assert line == (
        "20 in: 12 handled (4 retries), 2 dead-lettered, 3 unrouted, 1 duplicate(s), "
        "1 echo(es) skipped, 1 unfinished (delivered again); 11 out: 8 delivered, 1 failed, "
        "2 in flight"
    )
