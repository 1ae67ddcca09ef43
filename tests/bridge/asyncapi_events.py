"""Typed events for the AsyncAPI tests: every field type that ``@event`` supports."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal, Optional
from uuid import UUID

from eventbus import event


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Size(enum.IntEnum):
    S = 1
    M = 2


class Code(str):
    """A str subclass: it travels as a str."""


@event("shop.order.placed")
@dataclass
class OrderPlaced:
    """An order was placed."""

    order_id: int
    total: Decimal
    placed_at: datetime
    day: date
    ref: UUID
    blob: bytes
    paid: bool
    ratio: float
    customer: str
    anything: Any
    nothing: None
    maybe: Optional[int]  # noqa: UP045 (the old spelling is supported too)
    either: int | str
    kind: Literal["web", 1, True, None]
    lines: list[str]
    pair: tuple[int, str]
    many: tuple[int, ...]
    seq: Sequence[float]
    counts: dict[str, int]
    by_id: dict[int, str]
    extra: Mapping[str, Any]
    color: Color
    size: Size
    code: Code
    bare: list  # type: ignore[type-arg]
    note: str = "none"
    tags: list[str] = field(default_factory=list)


@event("shop.order.cancelled")
@dataclass
class OrderCancelled:
    order_id: int
    reason: str | None = None


@event("shop.user.registered")
@dataclass
class UserRegistered:
    user_id: int
    email: str
