"""The split-services demo (``make demo``): one codebase, two deployments, by configuration.

1. Monolith: the user service and the message service in one process; ``user.registered``
   is a local signal; no broker.
2. Split: the same modules in two processes. The user service (an application embedding
   the bridge) publishes to Kafka; the message service runs under the bridge daemon
   (``python -m bridge run``). Only the configuration files differ.

The broker is ``KAFKA_BOOTSTRAP`` when set. Otherwise this process starts librdkafka's
built-in mock cluster (a Kafka-protocol server inside this process, on 127.0.0.1) and
hands its address to both children. The mock cluster does not implement CreateTopics, so
the demo creates the topic first through the broker's auto-creation (a metadata request),
and the bridges find it there.

Exit status 0 when every registered user got a welcome message from the other process;
1 otherwise. Every wait has a deadline, and children are killed on failure.
"""

from __future__ import annotations

import difflib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
USERS = ("Ann", "Bob", "Cid")
STEP_TIMEOUT = 30.0
TOPICS = ("users", "users.dlq")


class DemoFailed(Exception):
    """The demo did not do what it says; the message says what went wrong."""


_output = threading.Lock()


def say(text: str = "") -> None:
    """Print one line of narration (whole, even with child output arriving meanwhile)."""
    with _output:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


class Child:
    """A child process whose output lines are collected (and echoed, indented)."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str]) -> None:
        self.name = name
        self.lines: list[str] = []  # stdout and stderr, in arrival order
        self._new = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, False), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str], echo: bool) -> None:
        for raw in stream:
            line = raw.rstrip("\n")
            # stdout is what the services print; of the logs, show the daemon's own lines.
            if echo or " bridge.daemon: " in line:
                say(f"    [{self.name}] {_short_log(line)}")
            with self._new:
                self.lines.append(line)
                self._new.notify_all()

    def wait_for(self, what: str, predicate: Callable[[list[str]], bool], timeout: float) -> None:
        """Wait until ``predicate(lines)``; DemoFailed if the child exits or time runs out."""
        deadline = time.monotonic() + timeout
        with self._new:
            while not predicate(self.lines):
                if self.process.poll() is not None and not any(r.is_alive() for r in self._readers):
                    raise DemoFailed(
                        f"{self.name} exited ({self.process.returncode}) before {what}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DemoFailed(f"{self.name}: no {what} within {timeout:g} s")
                self._new.wait(min(left, 0.2))

    def finish(self, timeout: float) -> int:
        """Wait for the exit status; kill the child and fail if it takes too long."""
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise DemoFailed(f"{self.name} did not exit within {timeout:g} s") from None
        for reader in self._readers:
            reader.join(5)
        return status

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def tail(self, count: int = 15) -> str:
        return "\n".join(f"      {line}" for line in self.lines[-count:])


def _short_log(line: str) -> str:
    # "2024-01-01 12:00:00,123 INFO bridge.daemon: text" -> "text"
    match = re.match(r"\S+ \S+ \w+ bridge\.daemon: (.*)", line)
    return match.group(1) if match else line


@contextmanager
def broker() -> Iterator[tuple[str, str]]:
    """Yield ``(bootstrap, description)``: KAFKA_BOOTSTRAP, or a mock cluster kept alive here."""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP", "")
    if bootstrap:
        yield bootstrap, f"the Kafka broker at {bootstrap} (KAFKA_BOOTSTRAP)."
        return
    import confluent_kafka

    # log_level 3: keep librdkafka's notice about the mock cluster out of the narration.
    mock = confluent_kafka.Producer({"test.mock.num.brokers": 1, "log_level": 3})
    try:
        brokers = mock.list_topics(timeout=10).brokers.values()
        bootstrap = ",".join(f"{b.host}:{b.port}" for b in brokers)
        # The mock cluster has no CreateTopics; a producer's metadata request for a topic
        # auto-creates it instead.
        for topic in TOPICS:
            mock.list_topics(topic=topic, timeout=10)
        yield (
            bootstrap,
            (
                f"librdkafka's mock cluster at {bootstrap}, inside the demo process\n"
                "   (KAFKA_BOOTSTRAP is unset. The mock has no CreateTopics: the demo made topic\n"
                "   'users' through auto-creation, and the bridges find it there.)"
            ),
        )
    finally:
        mock.flush(5)
        del mock


def show_diff(old: str, new: str) -> None:
    a = (HERE / old).read_text().splitlines()
    b = (HERE / new).read_text().splitlines()
    for line in difflib.unified_diff(a, b, f"examples/{old}", f"examples/{new}", lineterm="", n=1):
        say(f"    {line}")


def monolith(run_id: str, env: dict[str, str]) -> None:
    say("== 1. Monolith: both services in one process, local signals, no broker")
    say("   python -m examples.users -c examples/monolith.toml ...")
    emails = [f"{n.lower()}.{run_id}@example.com" for n in USERS]
    child = Child(
        "monolith",
        ["-m", "examples.users", "-c", str(HERE / "monolith.toml")]
        + [f"{n}={e}" for n, e in zip(USERS, emails, strict=True)],
        env,
    )
    try:
        status = child.finish(STEP_TIMEOUT)
    finally:
        child.kill()
    welcomed = _welcomed(child.lines, emails)
    pids = {m.group(1) for m in map(re.compile(r"\(pid (\d+)\)").search, child.lines) if m}
    if status != 0 or len(welcomed) != len(emails) or len(pids) != 1:
        raise DemoFailed(f"the monolith run failed (status {status}):\n{child.tail()}")
    say(f"   -> {len(emails)} users registered, {len(welcomed)} welcome messages, one process.")
    say()


def split(run_id: str, env: dict[str, str]) -> tuple[str, str]:
    say("== 2. Split: the same modules in two processes, talking through Kafka")
    say("   What changes is configuration only:")
    show_diff("monolith.toml", "user-service.toml")
    show_diff("monolith.toml", "message-service.toml")
    say()
    emails = [f"{n.lower()}.{run_id}@example.com" for n in USERS]
    children: list[Child] = []
    try:
        with broker() as (bootstrap, description):
            say(f"   Broker: {description}")
            env = {**env, "EVENTBUS_KAFKA_BOOTSTRAP_SERVERS": bootstrap}
            say("   Starting the message service under the daemon:")
            say("   python -m bridge run -c examples/message-service.toml")
            daemon = Child(
                "message-service",
                ["-m", "bridge", "run", "-c", str(HERE / "message-service.toml")],
                env,
            )
            children.append(daemon)
            daemon.wait_for(
                "ready line",
                lambda lines: any(" bridge.daemon: ready: " in x for x in lines),
                STEP_TIMEOUT,
            )
            say("   Registering users in the user service (the bridge embedded in the app):")
            say("   python -m examples.users -c examples/user-service.toml ...")
            users = Child(
                "user-service",
                ["-m", "examples.users", "-c", str(HERE / "user-service.toml")]
                + [f"{n}={e}" for n, e in zip(USERS, emails, strict=True)],
                env,
            )
            children.append(users)
            if users.finish(STEP_TIMEOUT) != 0:
                raise DemoFailed(f"the user service failed:\n{users.tail()}")
            try:
                daemon.wait_for(
                    "welcome message for every user",
                    lambda lines: len(_welcomed(lines, emails)) == len(emails),
                    STEP_TIMEOUT,
                )
            except DemoFailed as exc:
                got = len(_welcomed(daemon.lines, emails))
                raise DemoFailed(f"{exc}: {got} of {len(emails)} delivered") from None
            say("   Stopping the daemon with SIGTERM (it drains, commits and exits 0):")
            daemon.process.send_signal(signal.SIGTERM)
            status = daemon.finish(STEP_TIMEOUT)
            if status != 0:
                raise DemoFailed(f"the daemon exited with status {status}:\n{daemon.tail()}")
    finally:
        for child in children:
            child.kill()
    return _pid(users.lines, "user-service"), _pid(daemon.lines, "message-service")


def _welcomed(lines: list[str], emails: Sequence[str]) -> set[str]:
    return {e for e in emails for line in lines if f"welcome message to {e}:" in line}


def _pid(lines: list[str], name: str) -> str:
    for line in lines:
        match = re.match(rf"{name} \(pid (\d+)\)", line)
        if match:
            return match.group(1)
    return "?"


def main() -> int:
    """Run the two acts; return 0 if every user was welcomed, 1 otherwise."""
    started = time.monotonic()
    run_id = uuid.uuid4().hex[:6]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("EVENTBUS_KAFKA_BOOTSTRAP_SERVERS", None)  # the demo decides the broker
    say("eventbus demo: a user service announces user.registered; a message service")
    say("welcomes the new user. The code never calls across services.")
    say()
    try:
        monolith(run_id, env)
        user_pid, message_pid = split(run_id, env)
    except DemoFailed as exc:
        say(f"DEMO FAILED: {exc}")
        return 1
    say()
    say(
        f"Done in {time.monotonic() - started:.1f} s: {len(USERS)} users registered by the "
        f"user-service process (pid {user_pid}), {len(USERS)} welcome messages sent by the "
        f"message-service process (pid {message_pid}), through Kafka."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
