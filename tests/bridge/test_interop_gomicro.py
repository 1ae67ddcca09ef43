"""go-micro, the stack this project grew from, and the bridge, on the real broker.

The peer (tests/bridge/gomicro_peer, Go on IBM/sarama, built here with its modules cached
under .cache/go) publishes and subscribes exactly as go-micro's Kafka broker plugin does
with the JSON codec. The seed's story: a Go user service publishes a student message to
``go.micro.srv.message`` and a Python message service handles it; a Python emit is read by
the Go subscriber. The test vectors of every format (vectors.json, vectors-json.json,
vectors-go-micro.json) are checked by the peer (each file by a Go reader of its own),
those of go-micro here by the bridge too.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge import Bridge, DecodeError, KafkaTransport, MsgpackCodec, Remote, Route
from bridge._formats import Readers, go_message
from bridge._transport import Record
from eventbus import EventBus
from tests.bridge.helpers import wait_for
from tests.conftest import ROOT, _missing

PEER = Path(__file__).parent / "gomicro_peer"
VECTORS = json.loads((Path(__file__).parent / "vectors-go-micro.json").read_text("utf-8"))


@pytest.fixture(scope="session")
def gomicro_peer() -> Path:
    """The Go peer's binary, built once (modules and build cache under .cache/go)."""
    go = shutil.which("go")
    if go is None:
        _missing("go is not on PATH (the go-micro peer is built with it)")
    cache = ROOT / ".cache" / "go"
    binary = cache / "bin" / "gomicro-peer"
    env = {
        **os.environ,
        "GOMODCACHE": str(cache / "mod"),
        "GOCACHE": str(cache / "build"),
        "GOFLAGS": "-modcacherw",
    }
    run = subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=PEER,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    return binary


@pytest.fixture
def seed_topic(kafka_admin: Any) -> Iterator[str]:
    """``go.micro.srv.message``, made unique for this test."""
    from confluent_kafka.admin import NewTopic

    from tests.conftest import _wait_for_topic

    name = f"go.micro.srv.message.{uuid.uuid4().hex[:10]}"
    kafka_admin.create_topics([NewTopic(name, 1, 1)])[name].result(timeout=30)
    _wait_for_topic(kafka_admin, name, 1)
    yield name
    for future in kafka_admin.delete_topics([name, f"{name}.dlq"]).values():
        # the dead-letter topic exists only if something was dead-lettered
        with contextlib.suppress(Exception):
            future.result(timeout=30)


def peer(binary: Path, *args: str) -> list[str]:
    run = subprocess.run(
        [str(binary), *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    return run.stdout.splitlines()


@pytest.mark.kafka
def test_a_go_micro_publisher_reaches_a_python_handler(
    kafka_bootstrap: str, seed_topic: str, gomicro_peer: Path
) -> None:
    bus = EventBus()
    got: list[tuple[Remote, dict[str, Any]]] = []
    bus.on("message.student")(lambda sender, **student: got.append((sender, student)))
    with Bridge(
        bus,
        transport=KafkaTransport({"bootstrap.servers": kafka_bootstrap}),
        service="message-service",
        routes=[Route.inbound("message.student", topic=seed_topic, format="go-micro")],
    ) as bridge:
        [micro_id] = peer(gomicro_peer, "publish", kafka_bootstrap, seed_topic, "Ada", "36")
        wait_for(lambda: got, 30, "the student handled")
    [(sender, student)] = got
    assert student == {"name": "Ada", "age": 36}
    assert sender.id == micro_id  # Micro-Id: deduplication works across the stacks
    assert sender.extensions is not None
    assert dict(sender.extensions) == {
        "Content-Type": "application/json",
        "Micro-Id": micro_id,
        "Micro-Topic": seed_topic,
    }
    assert bridge.stats.dead_lettered == 0


@pytest.mark.kafka
def test_a_python_emit_reaches_a_go_micro_subscriber(
    kafka_bootstrap: str, seed_topic: str, gomicro_peer: Path
) -> None:
    bus = EventBus()
    with Bridge(
        bus,
        transport=KafkaTransport({"bootstrap.servers": kafka_bootstrap}),
        service="user-service",
        routes=[Route.outbound("message.student", topic=seed_topic, format="go-micro")],
    ) as bridge:
        bus.emit("message.student", name="Zoë", age=20)
    assert bridge.stats.delivered == 1
    [line] = peer(gomicro_peer, "subscribe", kafka_bootstrap, seed_topic, "1")
    message = json.loads(line)
    assert "error" not in message, message
    assert message["student"] == {"name": "Zoë", "age": 20}
    assert message["key"] is None  # the plugin writes no key; a route writes one if asked
    header = message["header"]
    assert header["Content-Type"] == "application/json"
    assert header["Micro-Topic"] == seed_topic
    assert uuid.UUID(header["Micro-Id"]).version == 4
    assert header["Eventbus-Origin"] == bridge.id


def test_the_go_peer_checks_the_vectors(gomicro_peer: Path) -> None:
    [line] = peer(gomicro_peer, "vectors", str(Path(__file__).parent / "vectors-go-micro.json"))
    assert line == f"ok {len(VECTORS['valid'])} valid, {len(VECTORS['invalid'])} invalid"


def test_the_go_peer_checks_the_msgpack_vectors(gomicro_peer: Path) -> None:
    """vectors.json read by a msgpack reader written in Go from docs/wire-format.md alone
    (gomicro_peer/msgpack.go, no msgpack library): each valid value is its payload (ext
    types included: datetimes with their offsets, dates, UUIDs, decimals by digits and
    exponent), each invalid one is refused, the huge declared lengths without allocating."""
    path = Path(__file__).parent / "vectors.json"
    vectors = json.loads(path.read_text("utf-8"))
    [line] = peer(gomicro_peer, "msgpack-vectors", str(path))
    assert line == f"ok {len(vectors['valid'])} valid, {len(vectors['invalid'])} invalid"


def test_the_go_peer_checks_the_json_data_vectors(gomicro_peer: Path) -> None:
    """vectors-json.json: each valid value read by Go's encoding/json as its payload (the
    typed values as their documented strings), each invalid one refused by a Go reader
    with the bounds docs/wire-format.md asks for."""
    path = Path(__file__).parent / "vectors-json.json"
    vectors = json.loads(path.read_text("utf-8"))
    [line] = peer(gomicro_peer, "json-vectors", str(path))
    assert line == f"ok {len(vectors['valid'])} valid, {len(vectors['invalid'])} invalid"


def _read(value: str) -> tuple[Any, dict[str, Any]]:
    readers = Readers(
        [Route.inbound("message.student", topic="t", format="go-micro")],
        MsgpackCodec(),
        lambda name: None,
    )
    envelope, payload = readers.read(Record("t", 0, 3, None, value.encode(), [], None))
    assert payload is not None
    return envelope, payload


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=lambda v: v["name"])
def test_valid_vectors_are_read_and_written(vector: dict[str, Any]) -> None:
    envelope, payload = _read(vector["value"])
    assert payload == vector["payload"]
    assert envelope.id == vector["Header"].get("Micro-Id", "t/0/3")
    for key, value in vector["Header"].items():
        assert envelope.extensions[key] == value
    if vector["exact"]:  # the writer's bytes are Go's
        body = json.loads(vector["value"])["Body"]
        assert go_message(vector["Header"], body).decode() == vector["value"]
        assert json.loads(base64.b64decode(body)) == vector["payload"]


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["name"])
def test_invalid_vectors_are_refused(vector: dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        _read(vector["value"])
