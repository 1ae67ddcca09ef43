"""The Kafka bridge: mirrors chosen signals of an ``eventbus.EventBus`` to and from topics.

``Bridge`` + ``Route`` are what applications use; ``KafkaTransport`` talks to Kafka
through confluent-kafka, ``MemoryTransport`` is an in-process broker for tests. The
wire format (msgpack value, CloudEvents headers) is in docs/wire-format.md.
"""

import typing as _typing

from ._asyncapi import asyncapi_document, dump_asyncapi
from ._bridge import Bridge
from ._codec import MsgpackCodec
from ._config import Config, load_config
from ._daemon import DaemonError, hosted
from ._dedup import SqliteDedup
from ._envelope import current_trace, trace_context
from ._errors import (
    BridgeError,
    ConfigError,
    DecodeError,
    DeliveryError,
    EncodeError,
    NotReadyError,
    QueueFullError,
    TransportError,
)
from ._kafka import KafkaTransport
from ._memory import MemoryTransport
from ._outbound import DeliveryFailureCallback
from ._outbox import Outbox
from ._remote import Remote
from ._routes import Route
from ._stats import RouteRetries, Stats
from ._transport import Consumer, Producer, Record, Transport

if _typing.TYPE_CHECKING:
    from ._sql_outbox import SqlOutbox, outbox_dead_letter_table, outbox_notify_ddl, outbox_table

# These need SQLAlchemy (the [sql] extra): imported on first use, not with the package.
_SQL = ("SqlOutbox", "outbox_dead_letter_table", "outbox_notify_ddl", "outbox_table")


def __getattr__(name: str) -> _typing.Any:
    if name in _SQL:
        try:
            from . import _sql_outbox
        except ImportError as exc:
            raise ImportError(
                f"bridge.{name} needs SQLAlchemy 2: pip install 'eventbus-bridge[sql]' ({exc})"
            ) from exc
        return getattr(_sql_outbox, name)
    raise AttributeError(f"module 'bridge' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SQL})


__all__ = [
    "Bridge",
    "BridgeError",
    "Config",
    "ConfigError",
    "Consumer",
    "DaemonError",
    "DecodeError",
    "DeliveryError",
    "DeliveryFailureCallback",
    "EncodeError",
    "KafkaTransport",
    "MemoryTransport",
    "MsgpackCodec",
    "NotReadyError",
    "Outbox",
    "Producer",
    "QueueFullError",
    "Record",
    "Remote",
    "Route",
    "RouteRetries",
    "SqlOutbox",
    "SqliteDedup",
    "Stats",
    "Transport",
    "TransportError",
    "asyncapi_document",
    "current_trace",
    "dump_asyncapi",
    "hosted",
    "load_config",
    "outbox_dead_letter_table",
    "outbox_notify_ddl",
    "outbox_table",
    "trace_context",
]
