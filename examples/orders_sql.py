"""An order and its event, committed together: the transactional outbox with SQLAlchemy.

    python -m examples.orders_sql            # a SQLite file and an in-process broker
    DATABASE_URL=postgresql+psycopg://... KAFKA_BOOTSTRAP=host:9092 python -m examples.orders_sql

``place_order`` writes an ``Order`` row and emits ``order.placed`` in one transaction:
the event is a row of the outbox table in the same database, so it is published if and
only if the order commits. The second order below fails validation after its emit: its
transaction rolls back, and its event is never published. A relay (started by the
bridge) sends committed events to the topic and deletes them from the table.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from bridge import Bridge, KafkaTransport, MemoryTransport, Route, SqlOutbox, Transport
from eventbus import EventBus


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "example_orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str]
    total_cents: Mapped[int]


class OrderRejected(Exception):
    """The order is invalid: nothing of it is stored, and no event is published."""


def place_order(
    session: Session, outbox: SqlOutbox, bus: EventBus, customer: str, total_cents: int
) -> int:
    """Store an order and emit ``order.placed``: both commit, or neither does."""
    with session.begin(), outbox.bind(session):
        order = Order(customer=customer, total_cents=total_cents)
        session.add(order)
        session.flush()  # the order's id, for the event
        order_id = order.id
        bus.emit("order.placed", order_id=order_id, customer=customer, total=total_cents)
        if total_cents <= 0:
            raise OrderRejected(f"order {order_id}: the total must be positive")
    return order_id


def run(database_url: str, transport: Transport, topic: str) -> list[dict[str, Any]]:
    """Place two orders (one rejected); return the events the topic received."""
    engine = sa.create_engine(database_url)
    Base.metadata.create_all(engine)
    outbox = SqlOutbox(engine)  # creates the outbox table if missing (use migrations in real apps)
    bus = EventBus()
    received: list[dict[str, Any]] = []
    consumer_bus = EventBus()
    consumer_bus.on_event("order.placed")(lambda event: received.append(dict(event.payload)))
    shop = Bridge(
        bus,
        transport=transport,
        service="shop",
        routes=[Route.outbound("order.*", topic=topic, key="order_id")],
        outbox=outbox,
    )
    billing = Bridge(
        consumer_bus,
        transport=transport,
        service="billing",
        routes=[Route.inbound("order.placed", topic=topic)],
    )
    try:
        with billing, shop:
            with Session(engine) as session:
                first = place_order(session, outbox, bus, "ann", 4200)
                print(f"order {first} placed; its event is in the outbox table until sent")
                try:
                    place_order(session, outbox, bus, "bob", 0)
                except OrderRejected as exc:
                    print(f"rejected, rolled back with its event: {exc}")
            deadline = time.monotonic() + 30
            while (outbox.pending() or not received) and time.monotonic() < deadline:
                time.sleep(0.05)  # until the relay sent everything and billing got it
        with Session(engine) as session:
            stored = session.scalars(sa.select(Order.customer)).all()
        print(f"orders stored: {stored}; events received by billing: {received}")
        return received
    finally:
        engine.dispose()


def main() -> int:
    url = os.environ.get("DATABASE_URL")
    workdir = tempfile.TemporaryDirectory()
    if not url:
        url = f"sqlite:///{workdir.name}/shop.db"
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
    # Without a broker, an in-process one: the outbox and relay work the same.
    transport: Transport = (
        KafkaTransport({"bootstrap.servers": bootstrap}) if bootstrap else MemoryTransport()
    )
    received = run(url, transport, f"orders-{uuid.uuid4().hex[:8]}")
    transport.close()
    workdir.cleanup()
    ok = [e["customer"] for e in received] == ["ann"]
    print(
        "ok: the committed order's event arrived once, the rejected one's never" if ok else "FAILED"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
