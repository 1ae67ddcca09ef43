"""Wire formats: how a record carries an event, one reader and one writer per format.

A route names its format (``Route.format``); docs/wire-format.md describes each one byte
by byte and docs/interoperability.md how to talk to other stacks with it.

* ``cloudevents``: CloudEvents binary mode, attributes in ``ce_*`` headers, the data in
  the value (msgpack by default, JSON with ``content_type="application/json"``).
  Inbound it is liberal: binary mode with msgpack or JSON data, or structured mode.
* ``cloudevents-structured``: the whole event as one JSON object
  (``application/cloudevents+json``); inbound the same liberal reader.
* ``json``: a plain JSON object and no CloudEvents at all; the signal name comes from the
  route or a field, the event id from a field or the record's position.

Inbound, a reader first finds the event's type (and maps a foreign type to a signal
name), so the bridge routes before it decodes: a record no route wants is never decoded
(binary mode). Readers raise ``DecodeError`` with a reason naming what was expected.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json as json_module
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Protocol

from ._codec import MsgpackCodec
from ._envelope import (
    JSON,
    MSGPACK,
    ORIGIN,
    Clock,
    Envelope,
    HeaderBuilder,
    current_trace,
    new_event_id,
    read_binary,
)
from ._errors import ConfigError, DecodeError
from ._json import JSON_CONTENT_TYPE, JsonCodec, is_json_content_type, restore
from ._retry_topics import RETRY_PREFIX
from ._routes import Route, TypeRule
from ._transport import Record

Headers = list[tuple[str, bytes]]
SchemaOf = Callable[[str], "type[Any] | None"]

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
MAX_BATCH_EVENTS = 1000
"""At most this many events in one batch record; a longer batch is a dead letter."""

_new_envelope = tuple.__new__
_COMPACT_JSON = json_module.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_STRUCTURED_CORE = frozenset(
    {"specversion", "id", "source", "type", "time", "datacontenttype", "data", "data_base64"}
)


# -- type names ---------------------------------------------------------------------------


class TypeNames:
    """Maps the event types on one topic to signal names: the routes' ``types``.

    A type no mapping names stands for itself (the bridge routes it only if it is a valid
    signal name). Results are cached (bounded).
    """

    __slots__ = ("_cache", "_rules", "_table")

    def __init__(self, routes: Sequence[Route]) -> None:
        self._table: dict[str, str] = {}
        self._rules: list[TypeRule] = []
        for route in routes:
            if isinstance(route.types, Mapping):
                self._table.update(route.types)
            elif route.types is not None:
                self._rules.append(route.types)
        self._cache: dict[str, str] = {}

    def __bool__(self) -> bool:
        return bool(self._table or self._rules)

    def name(self, ce_type: str) -> str:
        """The signal name ``ce_type`` stands for (``ce_type`` itself if none)."""
        found = self._cache.get(ce_type)
        if found is None:
            found = self._table.get(ce_type)
            for rule in self._rules:
                if found is not None:
                    break
                mapped = rule(ce_type)
                found = mapped if isinstance(mapped, str) and mapped else None
            if found is None:
                found = ce_type
            if len(self._cache) >= 10_000:  # hostile streams of made-up types
                self._cache.clear()
            self._cache[ce_type] = found
        return found


# -- readers ------------------------------------------------------------------------------


class Batched(Exception):
    """Raised by a reader for a record that carries several events (CloudEvents batch
    mode, ``application/cloudevents-batch+json``): ``records`` holds one record per
    event, in order, in structured mode, with the batch record's position, key and other
    headers. The bridge handles each like a record of its own and stores the batch
    record's offset once all of them are done (docs/interoperability.md)."""

    def __init__(self, records: tuple[Record, ...]) -> None:
        super().__init__(f"a batch of {len(records)} event(s) in CloudEvents batch mode")
        self.records = records


class Reader(Protocol):
    """Reads the records of one topic."""

    def read(self, record: Record) -> tuple[Envelope, dict[str, Any] | None]:
        """The event's envelope (its type mapped to a signal name) and, when reading it
        needed decoding the value anyway, its payload; else None (see ``decode``).
        Raises DecodeError, or ``Batched`` for a record of several events."""

    def decode(self, record: Record, envelope: Envelope) -> dict[str, Any]:
        """The payload of a record whose ``read`` returned None."""


class DataDecoder:
    """Decodes the data of a CloudEvent: msgpack or JSON, or guessed when untyped."""

    __slots__ = ("_json", "_schema", "msgpack")

    def __init__(self, codec: MsgpackCodec, json: JsonCodec, schema: SchemaOf) -> None:
        self.msgpack = codec.decode
        self._json = json
        self._schema = schema

    def decode(self, value: bytes, content: str, name: str) -> dict[str, Any]:
        if content == MSGPACK:
            return self.msgpack(value)
        if content == JSON:
            return restore(self._schema(name), self._json.decode(value))
        # No content-type: one msgpack map, else one JSON object.
        try:
            return self.msgpack(value)
        except DecodeError as as_msgpack:
            try:
                return restore(self._schema(name), self._json.decode(value))
            except DecodeError as as_json:
                raise DecodeError(
                    "no content-type, and the value is neither one msgpack map "
                    f"({as_msgpack}) nor one JSON object ({as_json})"
                ) from None


class CloudEventsReader:
    """CloudEvents in binary mode (``ce_*`` headers) or structured mode (a JSON object)."""

    __slots__ = ("_data", "_json", "_msgpack", "_names", "_schema", "read")

    read: Callable[[Record], tuple[Envelope, dict[str, Any] | None]]

    def __init__(self, data: DataDecoder, json: JsonCodec, names: TypeNames, schema: SchemaOf):
        self._data = data
        self._msgpack = data.msgpack
        self._json = json
        self._names = names if names else None
        self._schema = schema
        if self._names is None:
            # read_binary itself, no wrapper: this runs per record.
            self.read = functools.partial(read_binary, self.not_binary)
        else:
            self.read = self._read_mapped

    def _read_mapped(self, record: Record) -> tuple[Envelope, dict[str, Any] | None]:
        envelope, payload = read_binary(self.not_binary, record)
        if payload is not None:  # structured mode: mapped already
            return envelope, payload
        name = self._names.name(envelope.type)  # type: ignore[union-attr]
        if name is not envelope.type:
            envelope = envelope._replace(type=name)
        return envelope, None

    def not_binary(self, record: Record, error: DecodeError) -> tuple[Envelope, dict[str, Any]]:
        """A record that is not in binary mode: structured mode, or a dead letter."""
        content_type = record.header("content-type")
        if content_type is None and not any(n.startswith("ce_") for n, _ in record.headers):
            raise DecodeError(
                "not a CloudEvent: no ce_specversion header (binary mode) and no "
                f"content-type {STRUCTURED_CONTENT_TYPE} (structured mode); a topic of "
                'plain JSON objects needs format="json"'
            )
        if content_type is None or record.header("ce_specversion") is not None:
            raise error
        media = content_type.split(b";", 1)[0].strip().lower()
        if media == STRUCTURED_CONTENT_TYPE.encode():
            return self._structured(record)
        if media == BATCH_CONTENT_TYPE.encode():
            raise Batched(self._batch(record))
        raise DecodeError(
            "not a CloudEvent: no ce_specversion header (binary mode) and content-type "
            f"{content_type[:60].decode(errors='replace')!r} is not "
            f"{STRUCTURED_CONTENT_TYPE} (structured mode)"
        )

    def _batch(self, record: Record) -> tuple[Record, ...]:
        """The events of a batch record, each as a record of its own in structured mode."""
        value = record.value
        events = self._json.decode_array(
            value if value is not None else b"",
            f"a JSON array of CloudEvents ({BATCH_CONTENT_TYPE})",
        )
        if len(events) > MAX_BATCH_EVENTS:
            raise DecodeError(
                f"a batch of {len(events)} events: at most {MAX_BATCH_EVENTS} per record"
            )
        if not all(type(event) is dict for event in events):
            raise DecodeError(f"a batch item is not a JSON object: expected {BATCH_CONTENT_TYPE}")
        headers = [h for h in record.headers if h[0] != "content-type"]
        headers.append(("content-type", STRUCTURED_CONTENT_TYPE.encode()))
        return tuple(
            record._replace(value=_COMPACT_JSON.encode(event).encode(), headers=headers)
            for event in events
        )

    def decode(self, record: Record, envelope: Envelope) -> dict[str, Any]:
        value = record.value
        if envelope.content == MSGPACK and value is not None:
            return self._msgpack(value)  # the common case, one call
        return self._data.decode(
            value if value is not None else b"", envelope.content, envelope.type
        )

    def _structured(self, record: Record) -> tuple[Envelope, dict[str, Any]]:
        value = record.value
        event = self._json.decode_object(
            value if value is not None else b"", f"a CloudEvent ({STRUCTURED_CONTENT_TYPE})"
        )
        if event.get("specversion") != "1.0":
            raise DecodeError(f"specversion is {event.get('specversion')!r:.60}, expected '1.0'")
        ce_id, source, ce_type = (_attribute(event, a) for a in ("id", "source", "type"))
        at = event.get("time")
        name = self._names.name(ce_type) if self._names is not None else ce_type
        payload = self._data_of(event, name)
        extensions = {
            key: str(item)[:4096]
            for key, item in event.items()
            if key not in _STRUCTURED_CORE and isinstance(item, (str, int, bool))
        }
        origin = record.header(ORIGIN)
        traceparent = record.header("traceparent")
        tracestate = record.header("tracestate")
        if traceparent is None and isinstance(extensions.get("traceparent"), str):
            traceparent = extensions["traceparent"].encode()
            state = extensions.get("tracestate")
            tracestate = state.encode() if state is not None else None
        envelope = _new_envelope(
            Envelope,
            (
                ce_id,
                source,
                name,
                at if isinstance(at, str) else None,
                extensions.pop("eventbusorigin", None)
                or (origin.decode(errors="replace") if origin is not None else None),
                traceparent,
                tracestate,
                JSON,
                MappingProxyType(extensions) if extensions else None,
            ),
        )
        return envelope, payload

    def _data_of(self, event: dict[str, Any], name: str) -> dict[str, Any]:
        data = event.get("data")
        encoded = event.get("data_base64")
        if data is None and encoded is None:
            return {}
        content_type = event.get("datacontenttype")
        if data is not None:
            if content_type is not None and not (
                isinstance(content_type, str) and is_json_content_type(content_type)
            ):
                raise DecodeError(
                    f"datacontenttype {content_type!r:.60} with data: expected JSON data"
                )
            if type(data) is not dict:
                raise DecodeError(
                    "data is not a JSON object: expected the payload's fields as an object"
                )
            return restore(self._schema(name), data)
        if not isinstance(encoded, str):
            raise DecodeError("data_base64 is not a string")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise DecodeError("data_base64 is not valid base64") from None
        content = _content_of(content_type)
        return self._data.decode(raw, content, name)


def _content_of(content_type: object) -> str:
    if content_type is None:
        return ""
    if isinstance(content_type, str):
        if content_type.split(";", 1)[0].strip() in (
            "application/vnd.msgpack",
            "application/msgpack",
            "application/x-msgpack",
        ):
            return MSGPACK
        if is_json_content_type(content_type):
            return JSON
    raise DecodeError(f"datacontenttype {content_type!r:.60} is neither msgpack nor JSON")


def _attribute(event: dict[str, Any], name: str) -> str:
    value = event.get(name)
    if not isinstance(value, str) or not value:
        raise DecodeError(f"attribute {name!r} is missing or not a non-empty string")
    return value


class JsonReader:
    """A plain JSON object: the signal name from the route or ``type_field``, the event id
    from ``id_field`` or the record's topic/partition/offset."""

    __slots__ = ("_id_field", "_json", "_names", "_schema", "_signal", "_type_field")

    def __init__(self, route: Route, json: JsonCodec, names: TypeNames, schema: SchemaOf):
        self._json = json
        self._names = names
        self._schema = schema
        self._type_field = route.type_field
        self._id_field = route.id_field
        self._signal = route.signals[0]

    def read(self, record: Record) -> tuple[Envelope, dict[str, Any]]:
        value = record.value
        payload = self._json.decode_object(value if value is not None else b"", "a JSON object")
        if self._type_field is None:
            name = self._signal
        else:
            ce_type = payload.pop(self._type_field, None)
            if not isinstance(ce_type, str) or not ce_type:
                raise DecodeError(
                    f"field {self._type_field!r} (the event type) is missing or not a string"
                )
            name = self._names.name(ce_type)
        event_id = None
        if self._id_field is not None:
            found = payload.get(self._id_field)
            if isinstance(found, (str, int)) and not isinstance(found, bool) and found != "":
                event_id = str(found)
        if event_id is None:
            event_id = _position(record)
        at = _record_time(record)
        origin = record.header(ORIGIN)
        envelope = _new_envelope(
            Envelope,
            (
                event_id,
                _origin_topic(record),
                name,
                at,
                origin.decode(errors="replace") if origin is not None else None,
                record.header("traceparent"),
                record.header("tracestate"),
                JSON,
                None,
            ),
        )
        return envelope, restore(self._schema(name), payload)

    def decode(self, record: Record, envelope: Envelope) -> dict[str, Any]:
        return self.read(record)[1]  # not reached: read returns the payload


GO_MICRO_EXPECTED = 'a go-micro broker.Message ({"Header": {...}, "Body": "<base64>"})'


class GoMicroReader:
    """go-micro's Kafka broker plugin: the JSON of ``broker.Message``, the event's JSON in
    its base64 ``Body``. Kafka headers are merged into ``Header`` as the plugin does; the
    ``Header`` is the sender's ``extensions``; the id is ``Micro-Id``."""

    __slots__ = ("_json", "_schema", "_signal")

    def __init__(self, route: Route, json: JsonCodec, schema: SchemaOf):
        self._json = json
        self._schema = schema
        self._signal = route.signals[0]

    def read(self, record: Record) -> tuple[Envelope, dict[str, Any]]:
        value = record.value
        message = self._json.decode_object(value if value is not None else b"", GO_MICRO_EXPECTED)
        # Go's encoding/json matches field names case-insensitively.
        fields = {key.lower(): item for key, item in message.items()}
        header = fields.get("header")
        if header is None:
            header = {}
        if type(header) is not dict or not all(type(v) is str for v in header.values()):
            raise DecodeError(f"Header is not an object of strings: expected {GO_MICRO_EXPECTED}")
        body = fields.get("body")
        if not isinstance(body, str):
            raise DecodeError(
                f"Body is missing or not a base64 string: expected {GO_MICRO_EXPECTED}"
            )
        try:
            raw = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise DecodeError("Body is not valid base64") from None
        for name, item in record.headers:  # as the plugin does: Kafka headers win
            if type(item) is bytes:
                header[name] = item.decode(errors="replace")
        content_type = header.get("Content-Type", "application/json")
        if not is_json_content_type(content_type):
            raise DecodeError(
                f"Body content type {content_type[:60]!r}: expected application/json "
                "(protobuf bodies are not supported)"
            )
        payload = self._json.decode_object(raw, "a JSON object in Body")
        name = self._signal
        event_id = header.get("Micro-Id") or _position(record)
        trace = header.get("traceparent")
        state = header.get("tracestate")
        envelope = _new_envelope(
            Envelope,
            (
                event_id,
                header.get("Micro-From-Service") or _origin_topic(record),
                name,
                _record_time(record),
                header.get(GO_MICRO_ORIGIN),
                trace.encode() if trace is not None else None,
                state.encode() if state is not None else None,
                JSON,
                MappingProxyType(header),
            ),
        )
        return envelope, restore(self._schema(name), payload)

    def decode(self, record: Record, envelope: Envelope) -> dict[str, Any]:
        return self.read(record)[1]  # not reached: read returns the payload


def _position(record: Record) -> str:
    """``topic/partition/offset`` of the record as first read: the id of an event whose
    format has none. A record on a delayed retry topic names its origin in its headers."""
    topic = record.header(RETRY_PREFIX + "topic")
    if topic is not None:
        partition = record.header(RETRY_PREFIX + "partition") or b"?"
        offset = record.header(RETRY_PREFIX + "offset") or b"?"
        return b"/".join((topic, partition, offset)).decode(errors="replace")
    return f"{record.topic}/{record.partition}/{record.offset}"


def _origin_topic(record: Record) -> str:
    topic = record.header(RETRY_PREFIX + "topic")
    return topic.decode(errors="replace") if topic is not None else record.topic


def _record_time(record: Record) -> str | None:
    if record.timestamp_ms is not None and record.timestamp_ms >= 0:
        return datetime.fromtimestamp(record.timestamp_ms / 1000, UTC).isoformat()
    return None


class Readers:
    """The reader of each inbound topic, from the inbound routes; thread safe.

    ``read(record)`` returns the envelope (the type mapped to a signal name) and the
    payload when reading needed decoding the value anyway, else None; then
    ``decode(record, envelope)`` returns the payload (after routing). The inbound routes
    of one topic share a format (``cloudevents`` and ``cloudevents-structured`` read the
    same); ConfigError if they do not.
    """

    __slots__ = ("_by_topic", "_decode", "_default", "_read", "decode", "read")

    read: Callable[[Record], tuple[Envelope, dict[str, Any] | None]]
    decode: Callable[[Record, Envelope], dict[str, Any]]

    def __init__(self, routes: Sequence[Route], codec: MsgpackCodec, schema: SchemaOf) -> None:
        json = JsonCodec(max_size=codec.max_size, max_depth=codec.max_depth)
        data = DataDecoder(codec, json, schema)
        self._default = CloudEventsReader(data, json, TypeNames(()), schema)
        topics: dict[str, list[Route]] = {}
        for route in routes:
            if route.is_inbound:
                topics.setdefault(route.topic, []).append(route)
        self._by_topic: dict[str, Reader] = {}
        for topic, on_topic in topics.items():
            formats = {_family(r.format) for r in on_topic}
            if len(formats) > 1:
                raise ConfigError(
                    f"inbound routes on topic {topic!r} have different formats "
                    f"({', '.join(sorted(formats))}); a topic has one format"
                )
            names = TypeNames(on_topic)
            first = on_topic[0]
            if first.format == "json":
                if len(on_topic) > 1 and any(r.type_field is None for r in on_topic):
                    raise ConfigError(
                        f"json routes on topic {topic!r}: several routes need type_field"
                    )
                self._by_topic[topic] = JsonReader(first, json, names, schema)
            elif first.format == "go-micro":
                if len({r.signals for r in on_topic}) > 1:
                    raise ConfigError(f"go-micro routes on topic {topic!r}: one signal name")
                self._by_topic[topic] = GoMicroReader(first, json, schema)
            elif names:
                self._by_topic[topic] = CloudEventsReader(data, json, names, schema)
            else:
                self._by_topic[topic] = self._default
            for route in on_topic:  # its delayed retry topics carry the same format
                for retry_topic in route.retry_topics:
                    self._by_topic.setdefault(retry_topic, self._by_topic[topic])
        readers = set(self._by_topic.values())
        if len(readers) <= 1:
            # One reader for every topic (the usual case): no lookup per record.
            only = readers.pop() if readers else self._default
            self.read = only.read
            self.decode = only.decode
        else:
            self._read = {topic: reader.read for topic, reader in self._by_topic.items()}
            self._decode = {topic: reader.decode for topic, reader in self._by_topic.items()}
            self.read = self._read_by_topic
            self.decode = self._decode_by_topic

    def _read_by_topic(self, record: Record) -> tuple[Envelope, dict[str, Any] | None]:
        return self._read.get(record.topic, self._default.read)(record)

    def _decode_by_topic(self, record: Record, envelope: Envelope) -> dict[str, Any]:
        return self._decode.get(record.topic, self._default.decode)(record, envelope)


def _family(fmt: str) -> str:
    return "cloudevents" if fmt.startswith("cloudevents") else fmt


# -- writers ------------------------------------------------------------------------------


class Writer(Protocol):
    """Writes the events of one or more routes of one format."""

    def write(self, ce_type: str, payload: Mapping[str, Any]) -> tuple[bytes, Headers]:
        """The value and the headers of a new record for an event of type ``ce_type``
        (the type on the wire: ``Writers.type_of`` maps the signal name)."""


class BinaryWriter:
    """CloudEvents binary mode: the data by ``codec``, the attributes in headers."""

    __slots__ = ("_build", "_encode")

    def __init__(
        self, encode: Callable[[Mapping[str, Any]], bytes], headers: HeaderBuilder
    ) -> None:
        self._encode = encode
        self._build = headers.build

    def write(self, ce_type: str, payload: Mapping[str, Any]) -> tuple[bytes, Headers]:
        return self._encode(payload), self._build(ce_type)


def _trace_headers(headers: Headers) -> Headers:
    trace = current_trace()
    if trace is not None:
        headers.append(("traceparent", trace[0]))
        if trace[1] is not None:
            headers.append(("tracestate", trace[1]))
    return headers


class StructuredWriter:
    """CloudEvents structured mode: one JSON object with the attributes and ``data``."""

    __slots__ = ("_clock", "_json", "_origin", "_source")

    def __init__(self, json: JsonCodec, service: str, origin: str) -> None:
        self._json = json
        self._source = service
        self._origin = origin
        self._clock = Clock()

    def write(self, ce_type: str, payload: Mapping[str, Any]) -> tuple[bytes, Headers]:
        data = self._json.encode(payload)
        attributes: dict[str, Any] = {
            "specversion": "1.0",
            "id": new_event_id().decode(),
            "source": self._source,
            "type": ce_type,
            "time": self._clock.now().decode(),
            "datacontenttype": JSON_CONTENT_TYPE,
            "eventbusorigin": self._origin,
        }
        trace = current_trace()
        if trace is not None:  # the CloudEvents distributed-tracing extension
            attributes["traceparent"] = trace[0].decode(errors="replace")
            if trace[1] is not None:
                attributes["tracestate"] = trace[1].decode(errors="replace")
        head = self._json.encode(attributes)
        value = b'%s,"data":%s}' % (head[:-1], data)
        headers = [("content-type", STRUCTURED_CONTENT_TYPE.encode())]
        return value, _trace_headers(headers)


class JsonWriter:
    """A plain JSON object (with the type in ``type_field`` if the route names one)."""

    __slots__ = ("_json", "_origin", "_type_field")

    def __init__(self, json: JsonCodec, origin: str, type_field: str | None) -> None:
        self._json = json
        self._origin = origin.encode()
        self._type_field = type_field

    def write(self, ce_type: str, payload: Mapping[str, Any]) -> tuple[bytes, Headers]:
        if self._type_field is not None:
            payload = {self._type_field: ce_type, **payload}
        return self._json.encode(payload), _trace_headers([(ORIGIN, self._origin)])


GO_MICRO_ORIGIN = "Eventbus-Origin"


class GoMicroWriter:
    """What go-micro's event publisher sends through the Kafka plugin: the JSON of
    ``broker.Message`` with ``Content-Type``, ``Micro-Id`` and ``Micro-Topic`` in
    ``Header`` and the payload's JSON, base64, in ``Body``; no Kafka headers."""

    __slots__ = ("_json", "_origin", "_topic")

    def __init__(self, json: JsonCodec, origin: str, topic: str) -> None:
        self._json = json
        self._origin = origin
        self._topic = topic

    def write(self, ce_type: str, payload: Mapping[str, Any]) -> tuple[bytes, Headers]:
        body = base64.b64encode(self._json.encode(payload)).decode("ascii")
        header = {
            "Content-Type": JSON_CONTENT_TYPE,
            GO_MICRO_ORIGIN: self._origin,
            "Micro-Id": new_event_id().decode(),
            "Micro-Topic": self._topic,
        }
        trace = current_trace()
        if trace is not None:
            header["traceparent"] = trace[0].decode(errors="replace")
            if trace[1] is not None:
                header["tracestate"] = trace[1].decode(errors="replace")
        return go_message(header, body), []


# Go's encoding/json: struct fields in order, map keys sorted, no spaces, UTF-8.
_GO_JSON = _COMPACT_JSON


def go_message(header: Mapping[str, str], body: str) -> bytes:
    """The bytes Go's ``json.Marshal(&broker.Message{...})`` writes (for header values
    without ``<``, ``>``, ``&``, which Go escapes as ``\\u003c``...)."""
    message = {"Header": dict(sorted(header.items())), "Body": body}
    return _GO_JSON.encode(message).encode()


class Writers:
    """The writer of each outbound route (routes of the same format share one), and the
    type each route writes for a signal name."""

    __slots__ = ("_by_route", "_types")

    def __init__(
        self, routes: Sequence[Route], codec: MsgpackCodec, service: str, origin: str
    ) -> None:
        json = JsonCodec(max_size=codec.max_size, max_depth=codec.max_depth)
        made: dict[tuple[Any, ...], Writer] = {}
        self._by_route: dict[int, Writer] = {}
        self._types: dict[int, dict[str, str]] = {}
        for route in routes:
            table = route.types if isinstance(route.types, Mapping) else {}
            self._types[id(route)] = {signal: foreign for foreign, signal in table.items()}
            topic = route.topic if route.format == "go-micro" else None
            spec = (route.format, route.content_type, route.type_field, topic)
            writer = made.get(spec)
            if writer is None:
                writer = made[spec] = self._make(route, codec, json, service, origin)
            self._by_route[id(route)] = writer

    @staticmethod
    def _make(
        route: Route, codec: MsgpackCodec, json: JsonCodec, service: str, origin: str
    ) -> Writer:
        if route.format == "cloudevents-structured":
            return StructuredWriter(json, service, origin)
        if route.format == "json":
            return JsonWriter(json, origin, route.type_field)
        if route.format == "go-micro":
            return GoMicroWriter(json, origin, route.topic)
        if route.content_type == JSON_CONTENT_TYPE:
            return BinaryWriter(json.encode, HeaderBuilder(service, origin, JSON_CONTENT_TYPE))
        return BinaryWriter(codec.encode, HeaderBuilder(service, origin))

    def of(self, route: Route) -> Writer:
        """The writer of ``route`` (one of the routes this was made with)."""
        return self._by_route[id(route)]

    def type_of(self, route: Route, name: str) -> str:
        """The type ``route`` writes for signal ``name`` (its ``types`` map it back)."""
        return self._types[id(route)].get(name, name)
