"""An in-process event bus over blinker signals.

``import eventbus`` needs blinker only. The Kafka bridge lives in the ``bridge`` package.
"""

from ._bus import ANY, ErrorPolicy, Event, EventBus
from ._errors import (
    EmitError,
    EventBusError,
    HandlerFailure,
    InvalidNameError,
    PayloadError,
    handler_name,
)
from ._names import check_name, compile_pattern
from ._typed import event

default_bus = EventBus()
"""The process-wide bus that handler modules register on (the bridge daemon uses it)."""

__all__ = [
    "ANY",
    "EmitError",
    "ErrorPolicy",
    "Event",
    "EventBus",
    "EventBusError",
    "HandlerFailure",
    "InvalidNameError",
    "PayloadError",
    "check_name",
    "compile_pattern",
    "default_bus",
    "event",
    "handler_name",
]
