"""Records over a size limit, on the real broker: refused at the emit when over the
producer's limit; when only the topic refuses them, reported (direct mode) or moved out
of the outbox's queue to its dead-letter table (outbox mode), never holding back the rest."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge import DeliveryError, EncodeError, KafkaTransport, MemoryTransport, Route
from bridge._outbox import Outbox
from eventbus import EmitError, EventBus
from tests.bridge.helpers import make_bridge, read, wait_for

TOPIC_LIMIT = "20000"  # the topic's max.message.bytes, far below the producer's
BIG = 60_000  # a payload the producer takes and the topic refuses


def small_limit_topic(make_topic: Callable[..., str]) -> str:
    return make_topic(config={"max.message.bytes": TOPIC_LIMIT})


def test_an_emit_over_the_producer_limit_raises_naming_signal_size_and_option(
    tmp_path: Path,
) -> None:
    memory = MemoryTransport()
    bus = EventBus()
    box = Outbox(str(tmp_path / "o.db"))
    bridge = make_bridge(bus, memory, "svc", Route.outbound(["big.*"], topic="t"), outbox=box)
    with bridge:
        with pytest.raises(EmitError) as caught:
            bus.emit("big.one", blob=b"x" * 1_000_000)
        (error,) = caught.value.exceptions
        assert isinstance(error, EncodeError)
        text = str(error)
        assert "big.one" in text and "'t'" in text and "1000000" in text
        assert "message.max.bytes" in text
        # A value under the codec's limit whose headers and key take the record over it:
        with pytest.raises(EmitError) as caught:
            bus.emit("big.one", blob=b"x" * 999_950)
        (error,) = caught.value.exceptions
        assert isinstance(error, EncodeError)
        assert "over the producer's limit of 1000000 bytes" in str(error)
        assert "message.max.bytes" in str(error)
        assert box.pending() == 0  # refused before it was stored
        bus.emit("big.one", blob=b"x" * 900_000)  # under the limit: accepted
        wait_for(lambda: bridge.stats.delivered == 1, what="the record under the limit")


def test_the_limit_follows_message_max_bytes(kafka_bootstrap: str) -> None:
    raised = KafkaTransport({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 3_000_000})
    assert raised.max_record_size == 3_000_000
    bus = EventBus()
    bridge = make_bridge(bus, raised, "svc", Route.outbound(["x"], topic="t-unused"))
    assert bridge.codec.max_size == 3_000_000  # the codec's limit is the producer's
    assert KafkaTransport({"bootstrap.servers": kafka_bootstrap}).max_record_size == 1_000_000


def test_direct_mode_reports_a_record_the_topic_refuses(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = small_limit_topic(make_topic)
    transport = KafkaTransport({"bootstrap.servers": kafka_bootstrap})
    failures: list[DeliveryError] = []
    reported = threading.Event()

    def on_failure(error: DeliveryError) -> None:
        failures.append(error)
        reported.set()

    bus = EventBus()
    bridge = make_bridge(
        bus,
        transport,
        "svc",
        Route.outbound(["big.*"], topic=topic),
        on_delivery_failure=on_failure,
        create_topics=False,
    )
    with bridge:
        bus.emit("big.one", blob=b"x" * BIG)  # accepted: the producer allows it
        assert reported.wait(20), "the refused record was never reported"
        # (Apart: a record batched with it would be refused with it, and reported too.)
        bus.emit("big.two", n=1)
        wait_for(lambda: bridge.stats.delivered == 1, what="the small record")
        stats = bridge.stats
        assert (stats.delivery_failed, stats.refused) == (1, 1)
    assert "MSG_SIZE_TOO_LARGE" in str(failures[0]) or "too large" in str(failures[0]).lower()
    assert [r.value is not None for r in read(transport, topic, 1)] == [True]
    transport.close()


def test_the_outbox_moves_a_refused_record_aside_and_delivers_the_rest(
    kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = small_limit_topic(make_topic)
    transport = KafkaTransport({"bootstrap.servers": kafka_bootstrap})
    path = str(tmp_path / "outbox.db")
    bus = EventBus()
    bridge = make_bridge(
        bus,
        transport,
        "svc",
        Route.outbound(["e.*"], topic=topic),
        outbox=path,
        create_topics=False,
    )
    later = 200
    with bridge:
        bus.emit("e.big", blob=b"x" * BIG)
        for i in range(later):
            bus.emit("e.small", n=i)
        box = bridge._outbox
        assert box is not None
        # Delivered rows are deleted after their reports, and the refused one is parked
        # after its second refusal, which may come after the small records' reports.
        wait_for(
            lambda: (bridge.stats.delivered, bridge.stats.refused, box.pending()) == (later, 1, 0),
            30,
            "the records after the big one delivered and deleted, the big one parked",
        )
        stats = bridge.stats
        assert (stats.delivered, stats.delivery_failed, stats.refused) == (later, 1, 1)
        assert bridge.healthy
    assert len(read(transport, topic, later)) == later
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT topic, length(value), error FROM dead_letters").fetchall()
    assert len(rows) == 1
    assert rows[0][0] == topic and rows[0][1] > BIG
    assert "MSG_SIZE_TOO_LARGE" in rows[0][2] or "too large" in rows[0][2].lower()
    transport.close()
