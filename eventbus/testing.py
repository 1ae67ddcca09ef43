"""pytest plugin with event-bus fixtures (loaded automatically once installed).

* ``bus``: a fresh ``EventBus`` for the test.
* ``bus_events``: records every event emitted on ``eventbus.default_bus`` during the test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import Event, EventBus, default_bus


@pytest.fixture
def bus() -> EventBus:
    """A fresh bus with its own namespace: nothing leaks between tests."""
    return EventBus()


@pytest.fixture
def bus_events() -> Iterator[list[Event]]:
    """The events emitted on ``eventbus.default_bus`` while the test runs, in order."""
    with default_bus.capture("**") as events:
        yield events
