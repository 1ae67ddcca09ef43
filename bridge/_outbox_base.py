"""What the bridge needs from an outbox, and the header packing every backend shares.

The bridge hands each outbound record to ``append`` in the emitting thread, starts the
relay with ``start(producer, on_delivery)`` and stops it with ``stop(timeout)``; ``alive``
feeds ``Bridge.healthy``. Backends: ``Outbox`` (a SQLite file of the bridge's own) and
``SqlOutbox`` (a table in the application's database, written in its transaction).
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from collections.abc import Sequence

from ._transport import DeliveryCallback, Producer

__all__ = ["BaseOutbox", "pack_headers", "unpack_headers"]

_U32 = struct.Struct(">I")


def pack_headers(headers: Sequence[tuple[str, bytes]]) -> bytes:
    """Length-prefixed ``name, value`` pairs (names UTF-8), so any bytes round-trip."""
    parts: list[bytes] = []
    for name, value in headers:
        raw = name.encode()
        parts += (_U32.pack(len(raw)), raw, _U32.pack(len(value)), bytes(value))
    return b"".join(parts)


def unpack_headers(blob: bytes) -> list[tuple[str, bytes]]:
    """The pairs ``pack_headers`` packed."""
    headers: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(blob):
        (n,) = _U32.unpack_from(blob, pos)
        name = blob[pos + 4 : pos + 4 + n].decode()
        pos += 4 + n
        (n,) = _U32.unpack_from(blob, pos)
        headers.append((name, blob[pos + 4 : pos + 4 + n]))
        pos += 4 + n
    return headers


class BaseOutbox(ABC):
    """A durable store of outbound records with a relay that produces them.

    Contract: ``append`` stores a record (when it is durable is the backend's rule) and
    raises ``BridgeError`` if it cannot; the relay produces stored records, calls
    ``on_delivery(None, record)`` for each delivered one and removes it; a record is
    removed only after the broker acknowledged it (at-least-once), or refused it for
    good (``TransportError.permanent``): then it moves to the backend's dead-letter
    table, reported as ``on_delivery(error, record)``, and holds back nothing.
    """

    @abstractmethod
    def append(
        self, topic: str, value: bytes, key: bytes | None, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        """Store one outbound record (called in the emitting thread)."""

    @abstractmethod
    def start(self, producer: Producer, on_delivery: DeliveryCallback) -> None:
        """Start the relay (once)."""

    @abstractmethod
    def stop(self, timeout: float) -> None:
        """Stop the relay after trying up to ``timeout`` seconds to deliver what is stored."""

    @property
    @abstractmethod
    def alive(self) -> bool:
        """True while the relay runs."""

    @property
    def problem(self) -> str | None:
        """The storage error the relay is retrying (disk full, database down), None while
        it works: ``Bridge.healthy`` is False meanwhile. Default: None."""
        return None

    @abstractmethod
    def pending(self) -> int:
        """The number of stored records not yet delivered."""
