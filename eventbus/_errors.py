"""Exceptions raised by the event bus and the bridge.

Every error the project raises derives from one root::

    EventBusError
    ├── InvalidNameError (also ValueError)   a signal name or pattern is malformed
    ├── PayloadError (also TypeError)        a payload does not match its typed event
    ├── EmitError (also ExceptionGroup)      one or more handlers raised
    └── BridgeError                          defined in ``bridge``: config, codec, transport
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


class EventBusError(Exception):
    """Root of every error raised by ``eventbus`` and ``bridge``."""


class InvalidNameError(EventBusError, ValueError):
    """A signal name or subscription pattern is malformed."""


class PayloadError(EventBusError, TypeError):
    """A payload does not match the typed event registered for its name."""


@dataclass(frozen=True, slots=True)
class HandlerFailure:
    """One handler that raised while an event was dispatched.

    ``retry()`` calls that handler again with the same event and returns its result;
    it raises whatever the handler raises. The bridge uses it to retry only the
    handlers that failed.
    """

    event: str
    handler: Callable[..., Any]
    exception: Exception
    retry: Callable[[], Any]


class EmitError(ExceptionGroup[Exception], EventBusError):
    """Raised after all handlers of an event ran and at least one of them raised.

    It is an ``ExceptionGroup`` of the handlers' exceptions (``except*`` works), and
    ``failures`` says which handler raised which exception.
    """

    failures: tuple[HandlerFailure, ...]
    event: str

    def __new__(cls, event: str, failures: Sequence[HandlerFailure]) -> EmitError:
        names = ", ".join(handler_name(f.handler) for f in failures)
        message = f"{len(failures)} handler(s) failed for event {event!r}: {names}"
        self = super().__new__(cls, message, [f.exception for f in failures])
        self.failures = tuple(failures)
        self.event = event
        return self

    def __init__(self, event: str, failures: Sequence[HandlerFailure]) -> None:
        super().__init__(self.message, list(self.exceptions))

    def derive(self, excs: Sequence[Exception]) -> ExceptionGroup[Exception]:  # type: ignore[override]
        # except* splits the group; the parts stay plain groups with our message.
        return ExceptionGroup(self.message, excs)


def handler_name(fn: Callable[..., Any]) -> str:
    """Return a dotted name for a handler, for logs and dead-letter headers."""
    module = getattr(fn, "__module__", None) or "?"
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{qualname}"
