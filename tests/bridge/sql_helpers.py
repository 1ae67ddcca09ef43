"""Helpers of the SQL outbox tests: a business table, a bridge on an outbox, reading back."""

from __future__ import annotations

import uuid
from typing import Any

import msgpack
import sqlalchemy as sa

from bridge import Bridge, KafkaTransport, Route, SqlOutbox
from eventbus import EventBus
from tests.reliability.helpers import read_all

metadata = sa.MetaData()
orders = sa.Table(
    "test_orders",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("item", sa.Text, nullable=False),
)


def unique_table() -> str:
    return f"outbox_{uuid.uuid4().hex[:12]}"


def drop_outbox(engine: sa.Engine, table: str) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{table}"')
        conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{table}_dead"')
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(f'DROP FUNCTION IF EXISTS "{table}_notify"()')


def outbound_bridge(
    bus: EventBus, bootstrap: str, topic: str, outbox: SqlOutbox, service: str = "orders"
) -> Bridge:
    """A bridge that sends ``order.*`` events to ``topic`` through ``outbox`` (keyed by id)."""
    return Bridge(
        bus,
        transport=KafkaTransport({"bootstrap.servers": bootstrap}),
        service=service,
        routes=[Route.outbound("order.*", topic=topic, key="id")],
        outbox=outbox,
        create_topics=False,
        drain_timeout=10.0,
    )


def payloads(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """The decoded values of every record on ``topic``, in partition order."""
    return [msgpack.unpackb(m.value()) for m in read_all(bootstrap, topic)]


def event_ids(bootstrap: str, topic: str) -> list[bytes]:
    """The ``ce_id`` header of every record on ``topic``."""
    ids = []
    for m in read_all(bootstrap, topic):
        headers = dict(m.headers() or [])
        ids.append(headers["ce_id"])
    return ids
