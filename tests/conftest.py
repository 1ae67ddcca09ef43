"""Shared fixtures for tests that need a real Kafka broker or a real PostgreSQL server.

Tests that are marked ``kafka`` or use one of the fixtures below SKIP when ``KAFKA_BOOTSTRAP``
is unset, and FAIL instead when ``REQUIRE_KAFKA=1`` (as CI sets it), so a missing broker can
never turn into a silently green run. Start a broker with ``scripts/kafka start``; see
docs/development.md. Tests marked ``postgres`` or using ``postgres_url`` do the same with
``POSTGRES_URL`` and ``REQUIRE_POSTGRES=1`` (``scripts/postgres start``).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

# A shared, noisy machine: no per-example deadline (the properties are about results).
settings.register_profile("project", deadline=None)
settings.load_profile("project")

ROOT = Path(__file__).resolve().parent.parent
KAFKA_FIXTURES = {"kafka_bootstrap", "kafka_admin", "kafka_topic", "make_topic", "kafka_libs"}
POSTGRES_FIXTURES = {"postgres_url"}

# Node ids of the tests that need the broker, and those of them that were skipped anyway.
_kafka_tests: set[str] = set()
_kafka_skipped: set[str] = set()
# The same for the tests that need PostgreSQL.
_postgres_tests: set[str] = set()
_postgres_skipped: set[str] = set()


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """The CLI commands a test runs in-process point the root logger at the test's captured
    stderr; put the handlers back, so later tests' threads do not log to a closed file."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _require_kafka() -> bool:
    return os.environ.get("REQUIRE_KAFKA") == "1"


def _require_postgres() -> bool:
    return os.environ.get("REQUIRE_POSTGRES") == "1"


def _missing(what: str, required: str = "REQUIRE_KAFKA") -> None:
    """Skip the current test, or fail it when ``required`` (REQUIRE_KAFKA/_POSTGRES) is 1."""
    if os.environ.get(required) == "1":
        pytest.fail(f"{required}=1 but {what}", pytrace=False)
    pytest.skip(what)


def _needs_postgres(item: pytest.Item) -> bool:
    names = set(getattr(item, "fixturenames", ()))
    return item.get_closest_marker("postgres") is not None or bool(names & POSTGRES_FIXTURES)


def _needs_kafka(item: pytest.Item) -> bool:
    # fixturenames is the transitive closure, so a test using kafka_topic counts too.
    names = set(getattr(item, "fixturenames", ()))
    return item.get_closest_marker("kafka") is not None or bool(names & KAFKA_FIXTURES)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    _kafka_tests.update(item.nodeid for item in items if _needs_kafka(item))
    _postgres_tests.update(item.nodeid for item in items if _needs_postgres(item))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.nodeid in _kafka_tests and not os.environ.get("KAFKA_BOOTSTRAP"):
        _missing(
            "no Kafka broker: KAFKA_BOOTSTRAP is unset "
            "(export KAFKA_BOOTSTRAP=$(scripts/kafka start))"
        )
    if item.nodeid in _postgres_tests and not os.environ.get("POSTGRES_URL"):
        _missing(
            "no PostgreSQL: POSTGRES_URL is unset (export POSTGRES_URL=$(scripts/postgres start))",
            "REQUIRE_POSTGRES",
        )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and report.nodeid in _kafka_tests and not hasattr(report, "wasxfail"):
        _kafka_skipped.add(report.nodeid)
    if report.skipped and report.nodeid in _postgres_tests and not hasattr(report, "wasxfail"):
        _postgres_skipped.add(report.nodeid)


def pytest_sessionfinish(session: pytest.Session) -> None:
    # Belt and braces: a Kafka test that skipped itself some other way (importorskip, a
    # missing jar, ...) must not pass unnoticed when the broker is required.
    for required, what, skipped in (
        (_require_kafka(), "REQUIRE_KAFKA=1 but {} Kafka test(s)", _kafka_skipped),
        (_require_postgres(), "REQUIRE_POSTGRES=1 but {} PostgreSQL test(s)", _postgres_skipped),
    ):
        if required and skipped:
            reporter = session.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line("")  # the progress line may still be open
                reporter.write_line(
                    what.format(len(skipped)) + " were skipped: " + ", ".join(sorted(skipped)),
                    red=True,
                )
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """The broker's bootstrap address, from KAFKA_BOOTSTRAP."""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP", "")
    if not bootstrap:  # normally caught by pytest_runtest_setup already
        _missing("no Kafka broker: KAFKA_BOOTSTRAP is unset")
    return bootstrap


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> Any:
    """A confluent_kafka AdminClient for the test broker."""
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": kafka_bootstrap})


@pytest.fixture(scope="session")
def kafka_libs() -> Path:
    """The broker's jar dir (KAFKA_LIBS, default .cache/kafka/libs), for Kafka's Java tools."""
    libs = Path(os.environ.get("KAFKA_LIBS") or ROOT / ".cache" / "kafka" / "libs")
    if not any(libs.glob("kafka-tools-*.jar")):
        _missing(f"no Kafka jars in {libs} (run scripts/kafka libs, or set KAFKA_LIBS)")
    if shutil.which("java") is None:
        _missing("java is not on PATH")
    return libs


def _wait_for_topic(admin: Any, name: str, partitions: int, timeout: float = 30.0) -> None:
    """Wait until every partition of the new topic has a leader: producers then don't stall."""
    deadline = time.monotonic() + timeout
    while True:
        topic = admin.list_topics(topic=name, timeout=10).topics.get(name)
        if (
            topic is not None
            and topic.error is None
            and len(topic.partitions) == partitions
            and all(p.leader >= 0 for p in topic.partitions.values())
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {name} not ready after {timeout}s: {topic}")
        time.sleep(0.1)


@pytest.fixture
def make_topic(kafka_admin: Any) -> Iterator[Callable[..., str]]:
    """Factory: ``make_topic(partitions=1, config=None)`` creates a fresh, uniquely named
    topic (``config``: topic settings), ready to use; the topics are deleted after the test."""
    from confluent_kafka.admin import NewTopic

    created: list[str] = []

    def make(partitions: int = 1, config: dict[str, str] | None = None) -> str:
        name = f"test-{uuid.uuid4().hex}"
        futures = kafka_admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})]
        )
        futures[name].result(timeout=30)
        created.append(name)
        _wait_for_topic(kafka_admin, name, partitions)
        return name

    yield make
    if created:
        for future in kafka_admin.delete_topics(created, operation_timeout=10).values():
            future.result(timeout=30)


@pytest.fixture
def kafka_topic(make_topic: Callable[..., str]) -> str:
    """A fresh topic with one partition."""
    return make_topic()


def console_consumer(bootstrap: str, topic: str, libs: Path, *properties: str) -> list[str]:
    """The command that runs Kafka's own Java ConsoleConsumer for one record of ``topic``
    (``properties``: formatter settings such as ``print.headers=true``)."""
    cmd = [
        "java",
        "-Xmx256m",
        "-cp",
        f"{libs}/*",  # the JVM expands the glob
        f"-Dlog4j2.configurationFile={ROOT / 'scripts' / 'log4j2.xml'}",
        "-Dkafka.log.level=WARN",
        "org.apache.kafka.tools.consumer.ConsoleConsumer",
        "--bootstrap-server",
        bootstrap,
        "--topic",
        topic,
        "--from-beginning",
        "--max-messages",
        "1",
        "--timeout-ms",
        "60000",
    ]
    # (--property, its older name, prints a deprecation notice on stdout in Kafka 4.x.)
    for prop in properties:
        cmd += ["--formatter-property", prop]
    return cmd


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test server's SQLAlchemy URL (psycopg 3 driver), from POSTGRES_URL."""
    url = os.environ.get("POSTGRES_URL", "")
    if not url:  # normally caught by pytest_runtest_setup already
        _missing("no PostgreSQL: POSTGRES_URL is unset", "REQUIRE_POSTGRES")
    pytest.importorskip("sqlalchemy", reason="the [sql] extra is not installed")
    return sqlalchemy_url(url)


def sqlalchemy_url(url: str) -> str:
    """``postgresql://...`` as scripts/postgres prints it, with psycopg 3 as the driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url
