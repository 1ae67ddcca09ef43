"""Typed events: validation at emit, instances for class subscribers."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import pytest

from eventbus import EventBus, PayloadError, event


@event("order.placed")
@dataclass
class OrderPlaced:
    order_id: int
    total: Decimal
    items: list[str]
    placed_at: dt.datetime
    customer: uuid.UUID
    note: str | None = None
    tags: dict[str, int] = field(default_factory=dict)
    channel: Literal["web", "shop"] = "web"
    weight: float = 0.0


def _order(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "order_id": 1,
        "total": Decimal("9.99"),
        "items": ["a"],
        "placed_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        "customer": uuid.UUID(int=1),
    }
    base.update(over)
    return base


def test_emit_instance_reaches_class_and_name_subscribers(bus: EventBus) -> None:
    typed: list[OrderPlaced] = []
    plain: list[dict[str, Any]] = []
    bus.on(OrderPlaced)(typed.append)
    bus.on("order.*")(lambda s, **kw: plain.append(kw))
    order = OrderPlaced(**_order())
    bus.emit(order)
    assert typed == [order] and typed[0] is order
    assert plain[0]["order_id"] == 1 and plain[0]["channel"] == "web"


def test_emit_by_name_validates_and_builds_instance(bus: EventBus) -> None:
    typed: list[OrderPlaced] = []
    bus.on(OrderPlaced)(typed.append)
    bus.emit("order.placed", **_order(weight=2))
    assert typed == [OrderPlaced(**_order(weight=2))]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({k: v for k, v in _order().items() if k != "total"}, "missing field(s) total"),
        (_order(extra=1), "unknown field(s) extra"),
        (_order(order_id="1"), "field 'order_id' must be int"),
        (_order(order_id=True), "field 'order_id' must be int"),
        (_order(items=["a", 2]), "field 'items'"),
        (_order(items="ab"), "field 'items'"),
        (_order(tags={"a": "b"}), "field 'tags'"),
        (_order(channel="phone"), "field 'channel'"),
        (_order(placed_at="2026-01-01"), "field 'placed_at'"),
        (_order(note=3), "field 'note'"),
    ],
)
def test_bad_payloads_are_clear_errors_at_emit(
    bus: EventBus, payload: dict[str, Any], message: str
) -> None:
    called: list[Any] = []
    bus.on(OrderPlaced)(called.append)
    with pytest.raises(PayloadError, match=message.replace("(", r"\(").replace(")", r"\)")):
        bus.emit("order.placed", **payload)
    assert called == []


def test_bad_instance_is_error_at_emit(bus: EventBus) -> None:
    with pytest.raises(PayloadError, match="order_id"):
        bus.emit(OrderPlaced(**_order(order_id="x")))


def test_payload_kwargs_with_instance_rejected(bus: EventBus) -> None:
    with pytest.raises(TypeError):
        bus.emit(OrderPlaced(**_order()), extra=1)  # type: ignore[call-arg]


def test_non_event_object_rejected(bus: EventBus) -> None:
    with pytest.raises(TypeError, match="signal name or an @event instance"):
        bus.emit(object())


def test_event_needs_dataclass() -> None:
    with pytest.raises(TypeError, match="dataclass"):

        @event("x.y")
        class NotData:
            pass


@dataclass
class Inner:
    x: int


def test_unsupported_field_type_is_error_at_definition() -> None:
    with pytest.raises(TypeError, match="unsupported field type"):

        @event("x.y")
        @dataclass
        class Outer:
            inner: Inner


def test_conflicting_class_for_name(bus: EventBus) -> None:
    bus.register(OrderPlaced)

    @event("order.placed")
    @dataclass
    class Other:
        x: int

    with pytest.raises(ValueError, match="already has typed event"):
        bus.register(Other)


def test_schema_and_validate_are_public(bus: EventBus) -> None:
    assert bus.schema("order.placed") is None
    bus.register(OrderPlaced)
    assert bus.schema("order.placed") is OrderPlaced
    checked = bus.validate("order.placed", _order(total=Decimal(1), items=("x",)))
    assert checked["note"] is None and checked["tags"] == {}
    with pytest.raises(PayloadError):
        bus.validate("order.placed", {})
    assert bus.validate("free.form", {"a": object}) == {"a": object}


def test_tuple_fields_accept_lists(bus: EventBus) -> None:
    @event("p.q")
    @dataclass
    class Pair:
        xy: tuple[int, int]
        rest: tuple[str, ...] = ()

    got: list[Pair] = []
    bus.on(Pair)(got.append)
    bus.emit("p.q", xy=[1, 2], rest=["a"])
    assert got[0].xy == [1, 2]
    with pytest.raises(PayloadError):
        bus.emit("p.q", xy=[1, 2, 3])


def test_off_class_subscription(bus: EventBus) -> None:
    got: list[Any] = []
    bus.on(OrderPlaced)(got.append)
    assert bus.off(got.append, OrderPlaced) == 1
    bus.emit(OrderPlaced(**_order()))
    assert got == []


def test_unresolvable_annotation_is_type_error() -> None:
    with pytest.raises(TypeError, match="cannot resolve"):

        @event("x.y")
        @dataclass
        class Broken:
            x: NoSuchType  # type: ignore[name-defined]  # noqa: F821
