"""Errors of the bridge, under the project's one root ``eventbus.EventBusError``::

EventBusError
└── BridgeError
    ├── ConfigError (also ValueError)      a bad route, option or config file
    ├── EncodeError (also ValueError)      a payload that cannot go on the wire
    ├── DecodeError (also ValueError)      a record that cannot be read
    ├── TransportError                     the broker or the client failed
    │   ├── QueueFullError                 the local produce queue stayed full
    │   └── NotReadyError                  start() timed out (topics, assignment)
    └── DeliveryError                      a record was not delivered (callback only)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventbus import EventBusError

if TYPE_CHECKING:
    from ._transport import Record


class BridgeError(EventBusError):
    """Root of the bridge's errors."""


class ConfigError(BridgeError, ValueError):
    """A route, an option or a configuration file is wrong."""


class EncodeError(BridgeError, ValueError):
    """A payload cannot be encoded for the wire."""


class DecodeError(BridgeError, ValueError):
    """A record cannot be decoded (bad bytes, bad headers, limits exceeded)."""


class TransportError(BridgeError):
    """The transport (broker or client) failed. ``retriable`` says whether to retry;
    ``permanent``: the broker (or the client) refused this record for good (too large,
    an invalid or unauthorized topic), so that sending it again cannot succeed."""

    def __init__(self, message: str, *, retriable: bool = False, permanent: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.permanent = permanent


class QueueFullError(TransportError):
    """The local produce queue stayed full for longer than the configured wait."""


class NotReadyError(TransportError):
    """The bridge could not get ready (topics, group assignment) within its timeout."""


class DeliveryError(BridgeError):
    """A record was not delivered to the broker; passed to the delivery-failure callback.

    ``record`` is the record as produced (topic, key, value, headers), for a resend.
    """

    def __init__(self, message: str, record: Record | None = None) -> None:
        super().__init__(message)
        self.record = record
