"""The SQLAlchemy outbox example on real PostgreSQL and the real broker."""

from __future__ import annotations

from collections.abc import Callable

import msgpack
import pytest

pytest.importorskip("sqlalchemy", reason="the [sql] extra is not installed")

from bridge import KafkaTransport
from examples.orders_sql import run
from tests.reliability.helpers import read_all


def test_the_committed_order_is_published_once_the_rejected_one_never(
    postgres_url: str, kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic()
    transport = KafkaTransport({"bootstrap.servers": kafka_bootstrap})
    try:
        received = run(postgres_url, transport, topic)
    finally:
        transport.close()
    assert [e["customer"] for e in received] == ["ann"]
    on_topic = [msgpack.unpackb(m.value()) for m in read_all(kafka_bootstrap, topic)]
    assert on_topic == received  # run() returns once the outbox table is empty
