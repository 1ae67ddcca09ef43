"""The sender of an event that arrived through a bridge."""

from __future__ import annotations

from typing import NamedTuple


class Remote(NamedTuple):
    """The sender of an event that arrived through a bridge: where it came from.

    (A named tuple: one is built per inbound event, and this is the cheapest kind.)
    """

    source: str
    """The emitting service (CloudEvents ``source``)."""
    id: str
    time: str | None
    topic: str
    partition: int
    offset: int
    bridge: str
    """The id of the bridge that received it (used to avoid echoes)."""
