"""The AsyncAPI 3.0 document of a service: its routes, typed events and dead letters.

``asyncapi_document(config)`` describes what a service configured by ``config`` sends and
receives, as a JSON-ready dict (``eventbus-bridge asyncapi`` prints it):

* a **channel** per topic (the routes' topics and, for inbound routes, their retry and
  dead-letter topics), with the Kafka channel binding;
* an **operation** per route and direction: ``send`` for ``out``, ``receive`` for ``in``
  (with the consumer group), both for ``both``; a ``send`` to each dead-letter topic, and
  a ``send`` and a ``receive`` for each delayed retry topic (``retry_delays``);
* a **message** per signal: the JSON Schema of its ``@event`` dataclass, or an open object
  for an untyped signal or a pattern; the route's key field as the Kafka message key; and
  the CloudEvents binary-mode headers as a message trait, the way the CloudEvents
  project's AsyncAPI guidance does it (``cloudevents-headers-kafka-binary``).

Typed events are found as ``run`` finds handlers: the configured modules are imported, and
every ``@event`` class registered on the bus or defined at the top level of one of those
modules is described. Nothing here contacts a broker.

Values are msgpack (docs/wire-format.md), so the schemas describe the decoded values: a
``datetime`` is a string of format ``date-time`` in the schema and a msgpack timestamp on
the wire; the ``x-msgpack`` keyword on such a field names the wire form.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventbus import default_bus
from eventbus._typed import Schema, schema_of

from ._codec import CONTENT_TYPE
from ._envelope import DLQ_PREFIX, ORIGIN, SPECVERSION
from ._errors import ConfigError
from ._retry_topics import RETRY_PREFIX

if TYPE_CHECKING:
    from eventbus import EventBus

    from ._config import Config
    from ._routes import Route

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
CLOUDEVENTS_TRAIT = "cloudevents-headers-kafka-binary"
DEAD_LETTER_MESSAGE = "eventbus.dead-letter"
DLQ_HEADERS = {
    DLQ_PREFIX + "reason": "Why the record is here, e.g. 'undecodable record: ...'.",
    DLQ_PREFIX + "error": "The exception class name; 'decode' for an undecodable record.",
    DLQ_PREFIX + "handler": "The dotted name of the handler that failed (when one did).",
    DLQ_PREFIX + "topic": "The topic the record was read from.",
    DLQ_PREFIX + "partition": "Its partition, in decimal text.",
    DLQ_PREFIX + "offset": "Its offset, in decimal text.",
    DLQ_PREFIX + "attempts": "How many times the handler was tried, in decimal text.",
    DLQ_PREFIX + "service": "The name of the consuming service.",
    DLQ_PREFIX + "handlers": "When handlers failed: a JSON list of their dotted names.",
    DLQ_PREFIX + "traceback": "When handlers failed: their tracebacks (at most 8 KiB).",
}
"""The headers a dead letter adds to the original ones (docs/wire-format.md)."""
RETRY_MESSAGE = "eventbus.retry"
RETRY_HEADERS = {
    RETRY_PREFIX + "attempt": "Which delay this is: 1 for the first retry topic.",
    RETRY_PREFIX + "first-failure": "When the handlers first failed (ms since the epoch).",
    RETRY_PREFIX + "due": "When the record is to be handled again (ms since the epoch).",
    RETRY_PREFIX + "reason": "Why the handlers failed.",
    RETRY_PREFIX + "topic": "The topic the record was first read from.",
    RETRY_PREFIX + "partition": "Its partition there, in decimal text.",
    RETRY_PREFIX + "offset": "Its offset there, in decimal text.",
}
"""The headers a record on a delayed retry topic adds to the original ones."""

JSON = dict[str, Any]


def asyncapi_document(
    config: Config,
    bus: EventBus = default_bus,
    *,
    version: str = "0.0.0",
    import_handlers: bool = True,
) -> JSON:
    """Return the AsyncAPI 3.0 document of the service that ``config`` describes.

    ``bus`` is where handler modules register typed events (``default_bus``, as for
    ``run``); ``version`` becomes ``info.version``. With ``import_handlers`` (the
    default) the configured modules are imported first; a module that fails to import
    is a ConfigError naming it. The result is plain JSON data: ``json.dumps`` it or pass
    it to ``dump_asyncapi``.
    """
    if import_handlers:
        from ._daemon import import_modules

        import_modules(config.modules)
    typed = typed_events(bus, config.modules)
    return _Builder(config, typed, version).document()


def dump_asyncapi(document: Mapping[str, Any], fmt: str = "json") -> str:
    """The document as ``json`` or ``yaml`` text (YAML needs PyYAML: the ``asyncapi`` extra)."""
    if fmt == "json":
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if fmt != "yaml":
        raise ConfigError(f"unknown AsyncAPI format {fmt!r}: use 'json' or 'yaml'")
    try:
        import yaml
    except ImportError:
        raise ConfigError(
            "YAML output needs PyYAML: pip install 'eventbus-bridge[asyncapi]' (or use JSON)"
        ) from None
    text: str = yaml.safe_dump(
        document, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100
    )
    return text


def typed_events(bus: EventBus, modules: Sequence[str] = ()) -> dict[str, type[Any]]:
    """The ``@event`` classes known to ``bus`` or defined in ``modules``, by signal name.

    A class registered on the bus wins over one found in a module. Modules must already
    be imported (``asyncapi_document`` does that).
    """
    found: dict[str, type[Any]] = {}
    for name in modules:
        module = sys.modules.get(name)
        for value in vars(module).values() if module is not None else ():
            if isinstance(value, type) and _is_event_class(value):
                found.setdefault(schema_of(value).name, value)
    found.update(bus.typed_events())
    return dict(sorted(found.items()))


def _is_event_class(cls: type[Any]) -> bool:
    try:
        schema_of(cls)
    except TypeError:
        return False
    return True


# -- JSON Schema of a typed event ---------------------------------------------------------


def event_schema(cls: type[Any]) -> JSON:
    """The JSON Schema (draft 07, as AsyncAPI schemas are) of an ``@event`` class's payload.

    Every field type that ``@event`` accepts has a schema; fields with a default are
    optional, unknown fields are not allowed (the bus rejects them).
    """
    schema: Schema = schema_of(cls)
    hints = typing.get_type_hints(cls)
    properties: JSON = {}
    for field in dataclasses.fields(cls):
        if field.name not in schema.checks:
            continue
        prop = type_schema(hints[field.name])
        if field.default is not dataclasses.MISSING:
            default = _json_value(field.default)
            if default is not _NOT_JSON:
                prop = {**prop, "default": default}
        properties[field.name] = prop
    result: JSON = {"type": "object", "properties": properties}
    if schema.required:
        result["required"] = list(schema.required)
    result["additionalProperties"] = False
    doc = cls.__doc__
    if doc and not doc.startswith(f"{cls.__name__}("):  # not the dataclass's generated one
        result["description"] = doc.strip()
    result["x-python-type"] = f"{cls.__module__}.{cls.__qualname__}"
    return result


_DECIMAL_PATTERN = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$"
_SIMPLE: dict[Any, JSON] = {
    int: {"type": "integer"},
    float: {"type": "number"},
    str: {"type": "string"},
    bool: {"type": "boolean"},
    bytes: {"type": "string", "contentEncoding": "base64", "x-msgpack": "bin"},
    datetime: {
        "type": "string",
        "format": "date-time",
        "x-msgpack": "ext -1 (timestamp) when the UTC offset is 0, else ext 1",
    },
    date: {"type": "string", "format": "date", "x-msgpack": "ext 2"},
    UUID: {"type": "string", "format": "uuid", "x-msgpack": "ext 3"},
    Decimal: {"type": "string", "pattern": _DECIMAL_PATTERN, "x-msgpack": "ext 4"},
}


def type_schema(hint: Any) -> JSON:
    """The JSON Schema of one field type that ``@event`` supports (see eventbus._typed)."""
    if hint is Any or hint is object:
        return {}
    if hint is None or hint is type(None):
        return {"type": "null"}
    simple = _SIMPLE.get(hint)
    if simple is not None:
        return dict(simple)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        options = [type_schema(arg) for arg in args]
        return {} if {} in options else {"anyOf": options}
    if origin is typing.Literal:
        return _literal_schema(args)
    if origin in (dict, Mapping) or hint is dict:
        return _mapping_schema(args)
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        return _sequence_schema(origin or hint, args)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _literal_schema(tuple(hint))
    if isinstance(hint, type):
        # A subclass of a base type travels as the base type (docs/wire-format.md).
        for base in (bool, int, float, str, bytes, datetime, date, UUID, Decimal):
            if issubclass(hint, base):
                return {**_SIMPLE[base], "x-python-type": _qualname(hint)}
        return {"x-python-type": _qualname(hint)}
    raise TypeError(f"no JSON Schema for the field type {hint!r}")


def _literal_schema(values: Sequence[Any]) -> JSON:
    allowed = [_json_value(v.value if isinstance(v, enum.Enum) else v) for v in values]
    if _NOT_JSON in allowed:  # e.g. Literal[b"x"]: describe it, do not fake it
        return {"description": "one of " + ", ".join(repr(v) for v in values)}
    return {"enum": allowed}


def _mapping_schema(args: tuple[Any, ...]) -> JSON:
    result: JSON = {"type": "object"}
    if args:
        value = type_schema(args[1])
        if value:
            result["additionalProperties"] = value
        key = type_schema(args[0])
        if key and key.get("type") != "string":
            # msgpack map keys need not be strings; a JSON object's are.
            result["x-msgpack-key"] = key
    return result


def _sequence_schema(origin: Any, args: tuple[Any, ...]) -> JSON:
    result: JSON = {"type": "array"}
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        result["items"] = [type_schema(arg) for arg in args]
        result["minItems"] = result["maxItems"] = len(args)
        result["additionalItems"] = False
    elif args:
        items = type_schema(args[0])
        if items:
            result["items"] = items
    return result


class _NotJson:
    pass


_NOT_JSON: Any = _NotJson()


def _json_value(value: Any) -> Any:
    if value is None or type(value) in (bool, int, str):
        return value
    if type(value) is float and math.isfinite(value):
        return value
    return _NOT_JSON


def _qualname(cls: type[Any]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# -- the document -------------------------------------------------------------------------


def _cloudevents_headers() -> JSON:
    """The headers schema of the CloudEvents Kafka binding in binary mode, as written here."""
    return {
        "type": "object",
        "required": ["ce_id", "ce_source", "ce_specversion", "ce_type"],
        "properties": {
            "ce_specversion": {
                "type": "string",
                "enum": [SPECVERSION.decode()],
                "description": "The CloudEvents version.",
            },
            "ce_id": {
                "type": "string",
                "minLength": 1,
                "description": "The event's id: a random UUID (version 4) in text form; "
                "with ce_source it identifies the event (duplicates are dropped by it).",
            },
            "ce_source": {
                "type": "string",
                "format": "uri-reference",
                "minLength": 1,
                "description": "The service that emitted the event ([bridge] service).",
            },
            "ce_type": {
                "type": "string",
                "minLength": 1,
                "description": "The signal name (dotted segments of letters, digits, _ or -).",
            },
            "ce_time": {
                "type": "string",
                "format": "date-time",
                "description": "When the event was emitted (RFC 3339, UTC, microseconds).",
            },
            "content-type": {
                "type": "string",
                "enum": [CONTENT_TYPE],
                "description": "The CloudEvents datacontenttype: the value is a msgpack map.",
            },
            ORIGIN: {
                "type": "string",
                "description": "The id of the bridge instance that produced the record; a "
                "bridge drops its own records when they come back.",
            },
            "traceparent": {
                "type": "string",
                "description": "W3C Trace Context of the emitting code, when it had one.",
            },
            "tracestate": {
                "type": "string",
                "description": "W3C Trace Context (only with traceparent).",
            },
        },
    }


def _dead_letter_headers() -> JSON:
    return {
        "type": "object",
        "properties": {
            name: {"type": "string", "description": description}
            for name, description in DLQ_HEADERS.items()
        },
        "required": [name for name in DLQ_HEADERS if name.endswith("reason")],
    }


def _message_id(signal: str) -> str:
    # Component keys allow letters, digits, '.', '-', '_': a pattern's '*' is spelled out.
    return signal.replace("**", "ALL").replace("*", "ANY")


class _Builder:
    """Builds one document; holds the parts while they are put together."""

    def __init__(self, config: Config, typed: Mapping[str, type[Any]], version: str) -> None:
        self.config = config
        self.typed = typed
        self.version = version
        self.channels: JSON = {}
        self.operations: JSON = {}
        self.schemas: JSON = {}

    def document(self) -> JSON:
        config = self.config
        for route in config.routes:
            self._route(route)
        doc: JSON = {
            "asyncapi": ASYNCAPI_VERSION,
            "info": {
                "title": config.service,
                "version": self.version,
                "description": f"The events that the service {config.service!r} sends and "
                "receives through Kafka, generated by eventbus-bridge from "
                f"{config.source}. Values are msgpack maps; the CloudEvents attributes are "
                "Kafka headers (binary content mode).",
            },
            "defaultContentType": CONTENT_TYPE,
        }
        servers = self._servers()
        if servers:
            doc["servers"] = servers
        doc["channels"] = self.channels
        doc["operations"] = self.operations
        doc["components"] = {
            "schemas": dict(sorted(self.schemas.items())),
            "messageTraits": {
                CLOUDEVENTS_TRAIT: {
                    "name": CLOUDEVENTS_TRAIT,
                    "summary": "Message headers for CloudEvents in binary content mode with "
                    "Kafka (the CloudEvents Kafka protocol binding, version 1.0).",
                    "headers": _cloudevents_headers(),
                }
            },
        }
        return doc

    def _servers(self) -> JSON:
        hosts = [h.strip() for h in self.config.bootstrap.split(",") if h.strip()]
        servers: JSON = {}
        for number, host in enumerate(hosts, 1):
            servers[f"kafka-{number}" if len(hosts) > 1 else "kafka"] = {
                "host": host,
                "protocol": "kafka",
                "description": "A bootstrap server ([kafka] bootstrap.servers).",
            }
        return servers

    def _route(self, route: Route) -> None:
        channel = self._channel(route.topic)
        messages = self._messages(route)
        channel["messages"].update(messages)
        refs = [{"$ref": f"#/channels/{route.topic}/messages/{m}"} for m in messages]
        if route.is_outbound:
            self._operation(
                f"send-{route.topic}",
                {
                    "action": "send",
                    "channel": {"$ref": f"#/channels/{route.topic}"},
                    "summary": f"Events emitted on the bus that match {_signals(route)}.",
                    "messages": refs,
                },
            )
        if not route.is_inbound:
            return
        group = self.config.group or self.config.service
        self._operation(
            f"receive-{route.topic}",
            {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{route.topic}"},
                "summary": f"Records of the types {_signals(route)}, emitted on the bus; "
                f"up to {self.config.max_attempts} attempt(s), then a dead letter.",
                "messages": [dict(ref) for ref in refs],  # no shared objects: no YAML anchors
                "bindings": {
                    "kafka": {
                        "groupId": {"type": "string", "enum": [group]},
                        "bindingVersion": KAFKA_BINDING_VERSION,
                    }
                },
            },
        )
        self._retry_topics(route, group)
        dlq = route.dead_letter_topic
        dead = self._channel(dlq, f"Dead letters of {route.topic}: records that failed.")
        dead["messages"][DEAD_LETTER_MESSAGE] = self._dead_letter_message(route)
        self._operation(
            f"send-{dlq}",
            {
                "action": "send",
                "channel": {"$ref": f"#/channels/{dlq}"},
                "summary": f"Records of {route.topic} that could not be decoded or handled "
                f"within {self.config.max_attempts} attempt(s), with the reason.",
                "messages": [{"$ref": f"#/channels/{dlq}/messages/{DEAD_LETTER_MESSAGE}"}],
            },
        )

    def _retry_topics(self, route: Route, group: str) -> None:
        """The delayed retry topics of ``route``: the bridge sends to them and reads them."""
        delays = dict(zip(route.retry_topics, route.retry_delays, strict=True))
        for topic, delay in delays.items():
            channel = self._channel(
                topic, f"Records of {route.topic} whose handlers failed, retried after {delay:g} s."
            )
            channel["messages"][RETRY_MESSAGE] = {
                "name": RETRY_MESSAGE,
                "title": f"Retry of {route.topic} after {delay:g} s",
                "summary": "The failed record as it was (key, value, headers), plus the "
                "eventbus-retry-* headers; only its failed handlers run again when due.",
                "headers": {
                    "type": "object",
                    "properties": {
                        name: {"type": "string", "description": description}
                        for name, description in RETRY_HEADERS.items()
                    },
                    "required": [RETRY_PREFIX + "attempt", RETRY_PREFIX + "due"],
                },
                "payload": {"description": f"The original record value, one of {route.topic}'s."},
                "traits": [{"$ref": f"#/components/messageTraits/{CLOUDEVENTS_TRAIT}"}],
            }
            ref = [{"$ref": f"#/channels/{topic}/messages/{RETRY_MESSAGE}"}]
            self._operation(
                f"send-{topic}",
                {
                    "action": "send",
                    "channel": {"$ref": f"#/channels/{topic}"},
                    "summary": f"Records of {route.topic} still failing after the in-place "
                    f"attempts (or an earlier delay), to be retried after {delay:g} s.",
                    "messages": ref,
                },
            )
            self._operation(
                f"receive-{topic}",
                {
                    "action": "receive",
                    "channel": {"$ref": f"#/channels/{topic}"},
                    "summary": "Retry records, handled again once due; failing again, they "
                    "go to the next delay's topic, after the last to the dead letters.",
                    "messages": [dict(r) for r in ref],
                    "bindings": {
                        "kafka": {
                            "groupId": {"type": "string", "enum": [group]},
                            "bindingVersion": KAFKA_BINDING_VERSION,
                        }
                    },
                },
            )

    def _channel(self, topic: str, description: str | None = None) -> JSON:
        channel: JSON | None = self.channels.get(topic)
        if channel is None:
            channel = {"address": topic, "messages": {}}
            if description:
                channel["description"] = description
            channel["bindings"] = {
                "kafka": {
                    "topic": topic,
                    "partitions": self.config.partitions,
                    "bindingVersion": KAFKA_BINDING_VERSION,
                }
            }
            self.channels[topic] = channel
        return channel

    def _operation(self, operation_id: str, operation: JSON) -> None:
        unique, number = operation_id, 1
        while unique in self.operations:  # two routes on one topic
            number += 1
            unique = f"{operation_id}-{number}"
        self.operations[unique] = operation

    def _messages(self, route: Route) -> JSON:
        messages: JSON = {}
        for signal in route.signals:
            if "*" not in signal:
                messages[_message_id(signal)] = self._message(signal, route)
                continue
            for name in self.typed:
                if route.matches(name):
                    messages[_message_id(name)] = self._message(name, route)
            messages[_message_id(signal)] = self._message(signal, route)
        return messages

    def _message(self, signal: str, route: Route) -> JSON:
        cls = self.typed.get(signal)
        schema_id = _message_id(signal)
        if cls is not None:
            self.schemas.setdefault(schema_id, event_schema(cls))
            summary = f"The typed event {signal} ({_qualname(cls)})."
        elif "*" in signal:
            self.schemas.setdefault(
                schema_id,
                {"type": "object", "description": f"The payload of any signal matching {signal}."},
            )
            summary = f"Any other signal matching {signal}: an untyped payload."
        else:
            self.schemas.setdefault(
                schema_id,
                {"type": "object", "description": f"The payload of {signal} (untyped)."},
            )
            summary = f"The signal {signal} (no @event class: any payload)."
        headers: JSON = {"type": "object", "properties": {"ce_type": _ce_type(signal)}}
        message: JSON = {
            "name": signal,
            "title": signal,
            "summary": summary,
            "contentType": CONTENT_TYPE,
            "headers": headers,
            "payload": {"$ref": f"#/components/schemas/{schema_id}"},
            "traits": [{"$ref": f"#/components/messageTraits/{CLOUDEVENTS_TRAIT}"}],
        }
        key: JSON = (
            {
                "type": "string",
                "description": f"The payload field {route.key!r} as UTF-8 text: one "
                "entity's events share a partition, in order.",
            }
            if route.key and route.is_outbound
            else {"type": "null", "description": "No key: the route names no key field."}
        )
        if route.is_outbound:
            message["bindings"] = {"kafka": {"key": key, "bindingVersion": KAFKA_BINDING_VERSION}}
        return message

    def _dead_letter_message(self, route: Route) -> JSON:
        return {
            "name": DEAD_LETTER_MESSAGE,
            "title": f"Dead letter of {route.topic}",
            "summary": "The failed record as it was (key, value, headers), plus the "
            "eventbus-dlq-* headers saying why and where it came from.",
            "headers": _dead_letter_headers(),
            "payload": {
                "description": "The original record value, unchanged (it may not be "
                "decodable: that can be why it is here)."
            },
        }


def _ce_type(signal: str) -> JSON:
    if "*" in signal:
        return {"type": "string", "description": f"A signal name matching {signal}."}
    return {"type": "string", "enum": [signal], "description": "The signal name."}


def _signals(route: Route) -> str:
    return ", ".join(route.signals)
