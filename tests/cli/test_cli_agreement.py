"""``check`` and ``run`` give the same verdict on the same configuration, on the real
broker: a table of good and bad configurations, and every configuration of the docs and
the examples. ``check`` accepts with 0; ``run`` accepts by getting ready (then SIGTERM,
0); each refuses with the same message."""

from __future__ import annotations

import contextlib
import re
import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from .helpers import RECORDER, ROOT, Proc

pytestmark = pytest.mark.kafka

# Seconds to reach the broker and (run) to join the group, for both commands: long, as
# a loaded 2-core machine needs seconds to start two processes and join a group at once
# (4 s was seen to be tight). Only the unreachable broker waits it out: a short one there.
TIMEOUT = 30.0
UNREACHABLE_TIMEOUT = 4.0

HANDLERS = '''
"""Stands in for the handler modules the docs name: handles every signal."""
from eventbus import default_bus

@default_bus.on("**")
def handle(sender, **payload):
    pass
'''

NO_PROMETHEUS = 'raise ImportError("prometheus_client is not installed")\n'


def verdicts(
    config: Path, cwd: Path, sets: list[str], pythonpath: Path, timeout: float = TIMEOUT
) -> tuple[str, str]:
    """``(check's verdict, run's verdict)``: "ok", or "status N: <the error line>"."""
    args = [f"--set={s}" for s in sets]
    env = {"PYTHONPATH": f"{pythonpath}:{ROOT}", "RECORD_FILE": str(cwd / "record.jsonl")}
    check = Proc(
        ["-m", "bridge", "check", "-c", str(config), "--timeout", str(timeout), *args],
        cwd=cwd,
        env=env,
    )
    run = Proc(
        [
            "-m",
            "bridge",
            "run",
            "-c",
            str(config),
            *args,
            "--log-level=INFO",
            f"--set=bridge.ready_timeout={timeout}",
        ],
        cwd=cwd,
        env=env,
    )
    try:
        check_status = check.finish(60)
        run_verdict = "ok"
        with contextlib.suppress(AssertionError):  # exited: its status says why
            run.wait_for("ready: service", timeout=60)
        if run.process.poll() is None:
            run.process.send_signal(signal.SIGTERM)
        run_status = run.finish(60)
    finally:
        check.kill()
        run.kill()
    if run_status != 0 or "ready: service" not in run.output:
        run_verdict = f"status {run_status}: {_error(run.output)}"
    check_verdict = "ok" if check_status == 0 else f"status {check_status}: {_error(check.output)}"
    return check_verdict, run_verdict


def _error(output: str) -> str:
    # check: "eventbus-bridge: error: ..."; run: "... ERROR bridge.daemon: ..."
    for line in output.splitlines():
        for marker in ("eventbus-bridge: error: ", " ERROR bridge.daemon: "):
            if marker in line:
                return line.split(marker, 1)[1]
    return output.splitlines()[-1] if output else "(no output)"


def _same(check: str, run: str) -> None:
    """Both accept, or both refuse with the same message (check's status 1 for a missing
    topic is run's 2: check reports a problem, run refuses the configuration)."""
    if check == "ok" or run == "ok":
        assert check == run, f"check: {check}\nrun:   {run}"
        return
    assert check.replace("status 1:", "status 2:") == run, f"check: {check}\nrun:   {run}"


GOOD_IN = """
[bridge]
service = "agree-{id}"
modules = ["recorder"]
[kafka]
"bootstrap.servers" = "{bootstrap}"
[[route]]
signals = "test.*"
topic = "{topic}"
direction = "in"
"""

# (name, the file, what both must say: "ok" or a piece of the refusal)
CASES = [
    ("inbound route with handlers", GOOD_IN, "ok"),
    (
        "outbound route only",
        '[bridge]\nservice = "agree-{id}"\n[kafka]\n"bootstrap.servers" = "{bootstrap}"\n'
        '[[route]]\nsignals = "test.*"\ntopic = "{topic}"\ndirection = "out"\n',
        "ok",
    ),
    (
        "no routes, no broker (a monolith)",
        '[bridge]\nservice = "shop"\nmodules = ["recorder"]\n',
        "ok",
    ),
    (
        "a bad librdkafka value",
        GOOD_IN.replace("[kafka]\n", '[kafka]\n"acks" = "al"\n'),
        'Invalid value for configuration property "request.required.acks"',
    ),
    (
        "an unknown librdkafka property",
        GOOD_IN.replace("[kafka]\n", '[kafka]\n"lnger.ms" = 5\n'),
        'No such configuration property: "lnger.ms"',
    ),
    (
        "a property the transport manages",
        GOOD_IN.replace("[kafka]\n", '[kafka]\n"delivery.report.only.error" = true\n'),
        "delivery reports are managed by the transport",
    ),
    (
        "metrics without prometheus-client",
        GOOD_IN.replace("[kafka]", "metrics_port = 0\n[kafka]"),
        "metrics need prometheus-client",
    ),
    (
        "an inbound route nobody handles",
        GOOD_IN.replace('"test.*"', '"order.placed"'),
        "no handler for order.placed",
    ),
    (
        "a module that fails to import",
        GOOD_IN.replace('"recorder"', '"no_such_module"'),
        "cannot import handler module 'no_such_module'",
    ),
    (
        "a dedup store in a missing directory",
        GOOD_IN.replace("[kafka]", 'dedup_path = "/nonexistent/dir/dedup.db"\n[kafka]'),
        "does not exist",
    ),
    (
        "a missing topic with create_topics = false",
        GOOD_IN.replace("[kafka]", "create_topics = false\n[kafka]").replace(
            "{topic}", "{topic}-x"
        ),
        "create_topics = false",
    ),
    (
        "routes and no broker",
        GOOD_IN.replace('"bootstrap.servers" = "{bootstrap}"', ""),
        "no broker configured",
    ),
    (
        "an unreachable broker",
        GOOD_IN.replace("{bootstrap}", "127.0.0.1:1"),
        "cannot reach the Kafka broker at 127.0.0.1:1",
    ),
]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "recorder.py").write_text(RECORDER)
    (tmp_path / "message_service").mkdir()
    (tmp_path / "message_service" / "__init__.py").write_text("")
    (tmp_path / "message_service" / "handlers.py").write_text(HANDLERS)
    (tmp_path / "no-prometheus" / "prometheus_client").mkdir(parents=True)
    (tmp_path / "no-prometheus" / "prometheus_client" / "__init__.py").write_text(NO_PROMETHEUS)
    return tmp_path


@pytest.mark.parametrize(("name", "text", "expected"), CASES, ids=[c[0] for c in CASES])
def test_check_and_run_agree(
    workdir: Path,
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    name: str,
    text: str,
    expected: str,
) -> None:
    topic = make_topic()
    config = workdir / "svc.toml"
    config.write_text(text.format(id=uuid.uuid4().hex[:8], bootstrap=kafka_bootstrap, topic=topic))
    path = workdir / ("no-prometheus" if "prometheus" in name else "none")
    timeout = UNREACHABLE_TIMEOUT if "unreachable" in name else TIMEOUT
    check, run = verdicts(config, workdir, [], path, timeout)
    _same(check, run)
    if expected == "ok":
        assert check == "ok"
    else:
        assert expected in check and expected in run, (check, run)


def _documented() -> list[tuple[str, str]]:
    found = [(p.name, p.read_text()) for p in sorted((ROOT / "examples").glob("*.toml"))]
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        blocks = re.findall(r"```toml\n(.*?)```", doc.read_text(), flags=re.S)
        found += [(f"{doc.name}#{i}", b) for i, b in enumerate(blocks, 1) if "[bridge]" in b]
    return found


@pytest.mark.parametrize(("name", "text"), _documented(), ids=[d[0] for d in _documented()])
def test_check_and_run_agree_on_every_documented_config(
    workdir: Path, kafka_bootstrap: str, name: str, text: str
) -> None:
    """As a reader would try them: on this broker, in plain text, with topics of their own
    (a documented SASL setup cannot reach the test broker), with the modules they name."""
    suffix = uuid.uuid4().hex[:8]
    text = re.sub(r'(topic|dlq)(\s*=\s*)"([^"]+)"', rf'\1\2"\3-{suffix}"', text)
    text = re.sub(r'service(\s*=\s*)"([^"]+)"', rf'service\1"\2-{suffix}"', text)
    config = workdir / "documented.toml"
    config.write_text(text)
    sets = [
        f"kafka.bootstrap.servers={kafka_bootstrap}",
        "kafka.security.protocol=PLAINTEXT",
        "bridge.metrics_port=0",
    ]
    if "[kafka]" not in text:
        sets = sets[-1:]  # a monolith: no broker at all
    check, run = verdicts(config, workdir, sets, workdir / "none")
    assert check == run == "ok", f"{name}:\ncheck: {check}\nrun:   {run}"
