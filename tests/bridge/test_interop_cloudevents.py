"""The CloudEvents Python SDK (cloudevents 2.x, pinned in the test extra) and the bridge,
both ways, on the real broker.

SDK -> bridge: records the SDK writes in binary mode (JSON data, with and without a
content-type) and in structured mode are handled by a ``cloudevents`` inbound route with
payload and attributes intact; a foreign type is mapped to a signal name, a typed event
gets its datetime/UUID/Decimal back from JSON text; types no route wants are skipped
without being decoded. Bridge -> SDK: each outbound format read by the SDK's
``from_binary`` / ``from_structured``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgpack
import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from confluent_kafka import Producer

from bridge import Bridge, KafkaTransport, Remote, Route, current_trace
from eventbus import EventBus, event
from tests.bridge.helpers import read, wait_for

pytestmark = pytest.mark.kafka

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@event("user.registered")
@dataclasses.dataclass
class UserRegistered:
    user_id: uuid.UUID
    at: dt.datetime
    credit: Decimal
    born: dt.date
    avatar: bytes
    name: str


def sdk_event(ce_type: str, data: Any, **attributes: Any) -> CloudEvent:
    return CloudEvent(
        attributes={"type": ce_type, "source": "/sdk/tests", "id": str(uuid.uuid4()), **attributes},
        data=data,
    )


def produce(bootstrap: str, topic: str, *messages: ce_kafka.KafkaMessage) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for message in messages:
        producer.produce(
            topic, value=message.value, key=message.key, headers=list(message.headers.items())
        )
    assert producer.flush(30) == 0


def as_message(record: Any) -> ce_kafka.KafkaMessage:
    return ce_kafka.KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value)


class MsgpackFormat(JSONFormat):
    """The 'few lines' an SDK user adds to read the bridge's default msgpack data."""

    def read_data(self, body: bytes, datacontenttype: str | None) -> Any:
        if datacontenttype == "application/vnd.msgpack":
            return msgpack.unpackb(body, raw=False, timestamp=3)
        return super().read_data(body, datacontenttype)


def test_sdk_records_in_every_mode_reach_handlers(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic, dlq = make_topic(), make_topic()
    bus = EventBus()
    got: list[tuple[str, dict[str, Any], Remote, Any]] = []

    @bus.on("order.**")
    def on_order(sender: Remote, **payload: Any) -> None:
        got.append((sender.id, payload, sender, current_trace()))

    route = Route.inbound("order.**", topic=topic, dlq=dlq)
    plain = sdk_event("order.placed", {"order_id": 1, "items": ["a", "b"]}, subject="orders/1")
    typed = sdk_event("order.paid", {"order_id": 2}, datacontenttype="application/json")
    structured = sdk_event(
        "order.shipped", {"order_id": 3, "nested": {"x": [1, 2.5, None]}}, partitionkey="k3"
    )
    traced = sdk_event("order.cancelled", {"order_id": 4}, traceparent=TRACEPARENT)
    with Bridge(
        bus,
        transport=KafkaTransport({"bootstrap.servers": kafka_bootstrap}),
        service="orders-py",
        routes=[route],
    ) as bridge:
        produce(
            kafka_bootstrap,
            topic,
            ce_kafka.to_binary(plain, JSONFormat()),  # JSON data, no content-type
            ce_kafka.to_binary(typed, JSONFormat()),  # content-type: application/json
            ce_kafka.to_structured(structured, JSONFormat()),
            ce_kafka.to_binary(traced, JSONFormat()),  # ce_traceparent, no W3C header
        )
        wait_for(lambda: len(got) == 4, 30, "four SDK events handled")
    assert bridge.stats.dead_lettered == 0
    by_id = {ce_id: (payload, sender, trace) for ce_id, payload, sender, trace in got}
    payload, sender, _ = by_id[plain.get_id()]
    assert payload == {"order_id": 1, "items": ["a", "b"]}
    assert sender.source == "/sdk/tests"
    assert sender.extensions is not None and sender.extensions["subject"] == "orders/1"
    assert by_id[typed.get_id()][0] == {"order_id": 2}
    payload, sender, _ = by_id[structured.get_id()]
    assert payload == {"order_id": 3, "nested": {"x": [1, 2.5, None]}}
    assert sender.time is not None and sender.time.startswith(str(dt.date.today().year))
    assert sender.extensions is not None and sender.extensions["partitionkey"] == "k3"
    _, _, trace = by_id[traced.get_id()]
    assert trace is not None and trace[0] == TRACEPARENT.encode()


def test_foreign_types_are_mapped_typed_and_unrouted_ones_skipped_undecoded(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic, dlq = make_topic(), make_topic()
    bus = EventBus()
    bus.register(UserRegistered)
    got: list[UserRegistered] = []
    bus.on(UserRegistered)(got.append)
    route = Route.inbound(
        "user.registered",
        topic=topic,
        dlq=dlq,
        types={"com.example/user:registered": "user.registered"},
    )
    user_id = uuid.uuid4()
    at = dt.datetime(2026, 12, 1, 9, 30, 0, 250_000, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    data = {
        "user_id": str(user_id),
        "at": at.isoformat(),
        "credit": "10.50",
        "born": "1990-02-03",
        "avatar": "AAEC/w==",
        "name": "Ada",
    }
    wanted = sdk_event("com.example/user:registered", data, datacontenttype="application/json")
    structured = sdk_event("com.example/user:registered", dict(data, name="Bob"))
    # Foreign types on the shared topic, with values nobody could decode: skipped, never
    # decoded (a decode would dead-letter them).
    foreign = ce_kafka.to_binary(sdk_event("com.example/audit:logged", None), JSONFormat())
    foreign = dataclasses.replace(foreign, value=b"\xc1 not json, not msgpack")
    other = ce_kafka.to_binary(sdk_event("user.deleted", None), JSONFormat())
    other = dataclasses.replace(other, value=b"\xc1")
    with Bridge(
        bus,
        transport=KafkaTransport({"bootstrap.servers": kafka_bootstrap}),
        service="users-py",
        routes=[route],
    ) as bridge:
        produce(
            kafka_bootstrap,
            topic,
            foreign,
            ce_kafka.to_binary(wanted, JSONFormat()),
            other,
            ce_kafka.to_structured(structured, JSONFormat()),
        )
        wait_for(lambda: len(got) == 2 and bridge.stats.unrouted == 2, 30, "mapped events")
    assert bridge.stats.dead_lettered == 0
    first, second = got
    assert first == UserRegistered(
        user_id, at, Decimal("10.50"), dt.date(1990, 2, 3), b"\x00\x01\x02\xff", "Ada"
    )
    assert second.name == "Bob" and second.user_id == user_id and second.at == at


def test_sdk_reads_every_outbound_format(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    binary, as_json, structured = make_topic(), make_topic(), make_topic()
    transport = KafkaTransport({"bootstrap.servers": kafka_bootstrap})
    bus = EventBus()
    types = {"com.example/order:placed": "order.placed"}
    routes = [
        Route.outbound("order.placed", topic=binary, key="order_id"),
        Route.outbound("order.placed", topic=as_json, content_type="application/json", types=types),
        Route.outbound("order.placed", topic=structured, format="cloudevents-structured"),
    ]
    at = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)
    order = {"order_id": 7, "total": Decimal("19.90"), "at": at, "tags": ["x"]}
    with Bridge(bus, transport=transport, service="orders-py", routes=routes):
        bus.emit("order.placed", **order)

    [record] = read(transport, binary, 1)
    event_ = ce_kafka.from_binary(as_message(record), MsgpackFormat())
    assert event_.get_type() == "order.placed"
    assert event_.get_source() == "orders-py"
    # A plain msgpack reader sees the Decimal as extension type 4 (docs/wire-format.md).
    assert event_.get_data() == {**order, "total": msgpack.ExtType(4, b"19.90")}
    assert event_.get_extension("partitionkey") == "7"

    [record] = read(transport, as_json, 1)
    event_ = ce_kafka.from_binary(as_message(record), JSONFormat())
    assert event_.get_type() == "com.example/order:placed"
    assert event_.get_datacontenttype() == "application/json"
    assert event_.get_data() == {
        "order_id": 7,
        "total": "19.90",
        "at": "2026-12-01T08:00:00Z",
        "tags": ["x"],
    }

    [record] = read(transport, structured, 1)
    event_ = ce_kafka.from_structured(as_message(record), JSONFormat())
    assert event_.get_type() == "order.placed"
    assert event_.get_source() == "orders-py"
    assert uuid.UUID(event_.get_id()).version == 4
    assert event_.get_time() is not None
    assert event_.get_data() == {
        "order_id": 7,
        "total": "19.90",
        "at": "2026-12-01T08:00:00Z",
        "tags": ["x"],
    }


def test_outbound_json_formats_come_back_as_the_same_types(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    """A bridge reads what another bridge writes in each format: typed events get the
    same Python types as with msgpack."""
    as_json, structured = make_topic(), make_topic()
    transport = KafkaTransport({"bootstrap.servers": kafka_bootstrap})
    sender, receiver = EventBus(), EventBus()
    receiver.register(UserRegistered)
    got: list[UserRegistered] = []
    receiver.on(UserRegistered)(got.append)
    instance = UserRegistered(
        uuid.uuid4(),
        dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC),
        Decimal("-1.50"),
        dt.date(2000, 1, 1),
        b"\x00\xff",
        "Zoë",
    )
    with (
        Bridge(
            receiver,
            transport=transport,
            service="in",
            routes=[
                Route.inbound("user.registered", topic=as_json),
                Route.inbound("user.registered", topic=structured),
            ],
        ) as inbound,
        Bridge(
            sender,
            transport=transport,
            service="out",
            routes=[
                Route.outbound("user.*", topic=as_json, content_type="application/json"),
                Route.outbound("user.*", topic=structured, format="cloudevents-structured"),
            ],
        ),
    ):
        sender.emit("user.registered", **dataclasses.asdict(instance))
        wait_for(lambda: len(got) == 2, 30, "both records handled")
    assert got == [instance, instance]
    assert inbound.stats.dead_lettered == 0


def test_plain_json_topics_both_ways(kafka_bootstrap: str, make_topic: Callable[..., str]) -> None:
    """``format="json"``: what most existing producers write (a JSON object, no headers) is
    handled, deduplicated by its position or an id field; a bridge writes the same."""
    one, typed, out = make_topic(), make_topic(), make_topic()
    transport = KafkaTransport({"bootstrap.servers": kafka_bootstrap})
    bus = EventBus()
    got: list[tuple[str, dict[str, Any], str]] = []

    @bus.on_event("**")
    def record_it(ev: Any) -> None:
        if isinstance(ev.sender, Remote):
            got.append((ev.name, dict(ev.payload), ev.sender.id))

    routes = [
        Route.inbound("metric.sampled", topic=one, format="json"),
        Route.inbound(
            "order.*",
            topic=typed,
            format="json",
            type_field="kind",
            id_field="event_id",
            types={"OrderPlaced": "order.placed"},
        ),
        Route.outbound("order.*", topic=out, format="json", type_field="kind", key="order_id"),
    ]
    with Bridge(bus, transport=transport, service="json-py", routes=routes) as bridge:
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        producer.produce(one, value=b'{"cpu": 0.5}')
        producer.produce(typed, value=b'{"kind": "OrderPlaced", "event_id": "e-1", "n": 1}')
        producer.produce(typed, value=b'{"kind": "OrderPlaced", "event_id": "e-1", "n": 1}')
        producer.produce(typed, value=b'{"kind": "OrderPaid", "event_id": "e-2"}')  # unrouted
        producer.produce(typed, value=b"not json")
        assert producer.flush(30) == 0
        wait_for(
            lambda: len(got) == 2 and bridge.stats.duplicates == 1 and bridge.stats.dead_lettered,
            30,
            "json records handled",
        )
        bus.emit("order.shipped", order_id=9, at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert sorted(got) == [
        ("metric.sampled", {"cpu": 0.5}, f"{one}/0/0"),
        ("order.placed", {"event_id": "e-1", "n": 1}, "e-1"),
    ]
    assert bridge.stats.unrouted == 1 and bridge.stats.dead_lettered == 1
    [dead] = read(transport, typed + ".dlq", 1)
    assert b"malformed JSON" in dict(dead.headers)["eventbus-dlq-reason"]
    [record] = read(transport, out, 1)
    assert record.key == b"9"
    assert json.loads(record.value) == {
        "kind": "order.shipped",
        "order_id": 9,
        "at": "2026-01-01T00:00:00Z",
    }
