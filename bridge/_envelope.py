"""The record envelope: CloudEvents Kafka binding headers (binary mode) around the data.

The bridge writes msgpack data; it reads msgpack or JSON data (``content`` says which,
or that the record had no content-type). See docs/wire-format.md. Building headers is on
the emit hot path, so the constant parts are encoded once per bridge and the timestamp
prefix once per second.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, NamedTuple, NoReturn

from ._errors import DecodeError
from ._json import is_json_content_type
from ._transport import Record

SPECVERSION = b"1.0"
CONTENT_TYPE = "application/vnd.msgpack"
ACCEPTED_CONTENT_TYPES = frozenset(
    {b"application/vnd.msgpack", b"application/msgpack", b"application/x-msgpack"}
)
JSON_CONTENT_TYPES = frozenset(
    {b"application/json", b"text/json", b"application/json; charset=utf-8"}
)
ORIGIN = "eventbus-origin"

# What the data of a binary-mode record is, by its content-type header.
MSGPACK = "msgpack"
JSON = "json"
UNKNOWN = ""  # no content-type: the reader looks at the value
DLQ_PREFIX = "eventbus-dlq-"

_trace: ContextVar[tuple[bytes, bytes | None] | None] = ContextVar("eventbus_trace", default=None)


@contextlib.contextmanager
def trace_context(
    traceparent: str | bytes, tracestate: str | bytes | None = None
) -> Iterator[None]:
    """Carry a W3C trace context on the events emitted inside the block.

    The bridge sets it around handlers of an inbound event that had one, so a chain of
    events across services keeps its trace; call it yourself to start one.
    """
    parent = traceparent.encode() if isinstance(traceparent, str) else traceparent
    state = tracestate.encode() if isinstance(tracestate, str) else tracestate
    token = _trace.set((parent, state))
    try:
        yield
    finally:
        _trace.reset(token)


def current_trace() -> tuple[bytes, bytes | None] | None:
    """The trace context of the running handler or block, or None."""
    return _trace.get()


_random_bits = random.getrandbits
_V4_MASK = ~(0xF << 76) & ~(0x3 << 62)
_V4_BITS = (0x4 << 76) | (0x2 << 62)


def new_event_id() -> bytes:
    """A random (version 4) UUID in its text form, as bytes.

    Uses the ``random`` module's generator (seeded from the OS, reseeded after fork):
    event ids need uniqueness, not secrecy, and this is twice as fast as ``uuid4()``.
    """
    h = "%032x" % ((_random_bits(128) & _V4_MASK) | _V4_BITS)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}".encode()


class Clock:
    """Formats the current UTC time as RFC 3339 with microseconds, cheaply."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = b""

    def now(self) -> bytes:
        ns = time.time_ns()
        second, micros = divmod(ns // 1000, 1_000_000)
        if second != self._second:
            # Two threads may race here; both write the same values.
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
            self._second = second
        return b"%s.%06dZ" % (self._prefix, micros)


# The headers a bridge writes, in this order, then the trace context when there is one.
_LAYOUT = ("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "content-type", ORIGIN)


class HeaderBuilder:
    """Builds the headers of outbound records for one bridge."""

    __slots__ = ("_clock", "_content_type", "_origin", "_source", "_templates")

    def __init__(self, service: str, origin: str, content_type: str = CONTENT_TYPE) -> None:
        self._clock = Clock()
        self._content_type = content_type.encode()
        self._source = service.encode()
        self._origin = origin.encode()
        self._templates: dict[str, list[tuple[str, bytes]]] = {}

    def build(self, name: str) -> list[tuple[str, bytes]]:
        """Return the headers of a new event of type ``name`` (with a new ``ce_id``)."""
        template = self._templates.get(name)
        if template is None:
            template = self._templates.setdefault(name, self._template(name))
        headers = template.copy()  # then only the id and the time are new
        headers[1] = ("ce_id", new_event_id())
        headers[4] = ("ce_time", self._clock.now())
        trace = _trace.get()
        if trace is not None:
            headers.append(("traceparent", trace[0]))
            if trace[1] is not None:
                headers.append(("tracestate", trace[1]))
        return headers

    def _template(self, name: str) -> list[tuple[str, bytes]]:
        values = (
            SPECVERSION,
            b"",
            self._source,
            name.encode(),
            b"",
            self._content_type,
            self._origin,
        )
        return list(zip(_LAYOUT, values, strict=True))


class Envelope(NamedTuple):
    """The CloudEvents attributes of an inbound record.

    ``type`` is the ``ce_type`` as written (a format maps it to a signal name);
    ``content`` is ``MSGPACK``, ``JSON`` or ``UNKNOWN`` (no content-type);
    ``extensions`` holds the other ``ce_*`` attributes (``subject``, ``partitionkey``...).
    """

    id: str
    source: str
    type: str
    time: str | None
    origin: str | None
    traceparent: bytes | None
    tracestate: bytes | None
    content: str
    extensions: Mapping[str, str] | None


_Read = tuple[Envelope, "dict[str, Any] | None"]

# Header values seen before, decoded: a topic carries few distinct types and sources, so
# the inbound hot path mostly skips UTF-8 decoding.
_types: dict[bytes, str] = {}
_decoded: dict[bytes, str] = {}
_CACHE_LIMIT = 10_000


# The records of one producer differ only in ce_id and ce_time (positions 1 and 4 of
# _LAYOUT), so the other five (name, value) pairs are checked once and then found here:
# (source, type, origin, content).
_layouts: dict[tuple[tuple[str, bytes], ...], tuple[str, str, str | None, str]] = {}


def read_envelope(record: Record) -> Envelope:
    """Read and check the CloudEvents headers of a record; DecodeError if they are wrong."""
    return read_binary(_refuse, record)[0]


def _refuse(record: Record, error: DecodeError) -> NoReturn:
    raise error


def read_binary(otherwise: Callable[[Record, DecodeError], _Read], record: Record) -> _Read:
    """``(envelope, None)`` for a record in CloudEvents binary mode; for any other record,
    what ``otherwise(record, error)`` returns (or raises).

    The pair is what a format's reader returns (bridge._formats: the payload, None here,
    is decoded after routing); one function, not a wrapper, because it runs per record
    (``otherwise`` first: a reader is ``functools.partial(read_binary, otherwise)``, and
    a positional partial costs less per call than one with a keyword).
    """
    headers = record.headers
    if len(headers) == 7:
        try:
            known = _layouts.get((headers[0], headers[2], headers[3], headers[5], headers[6]))
        except TypeError:  # an unhashable header: the full check says what is wrong
            known = None
        if known is not None:
            id_name, raw_id = headers[1]
            time_name, raw_time = headers[4]
            if (
                id_name == "ce_id"
                and time_name == "ce_time"
                and type(raw_id) is bytes
                and raw_id
                and type(raw_time) is bytes
            ):
                try:
                    ce_id = raw_id.decode()
                except UnicodeDecodeError:
                    pass
                else:
                    source, ce_type, origin, content = known
                    at = raw_time.decode(errors="replace")
                    envelope = _new_envelope(
                        Envelope, (ce_id, source, ce_type, at, origin, None, None, content, None)
                    )
                    return envelope, None
    try:
        envelope = envelope_of(dict(headers))  # the last value of a repeated header wins
    except DecodeError as exc:
        return otherwise(record, exc)
    if len(headers) == 7 and tuple(name for name, _ in headers) == _LAYOUT:
        if len(_layouts) >= _CACHE_LIMIT:  # producers come and go (each has an origin)
            _layouts.clear()
        static = (headers[0], headers[2], headers[3], headers[5], headers[6])
        _layouts[static] = (envelope.source, envelope.type, envelope.origin, envelope.content)
    return envelope, None


_new_envelope = tuple.__new__

# Headers with a meaning of their own: every other ce_* header is an extension.
_KNOWN = frozenset(
    {
        "ce_specversion",
        "ce_id",
        "ce_source",
        "ce_type",
        "ce_time",
        "content-type",
        ORIGIN,
        "traceparent",
        "tracestate",
    }
)
_CORE = frozenset({"specversion", "id", "source", "type", "time"})


def envelope_of(found: dict[str, bytes]) -> Envelope:
    """The envelope in headers ``found`` (name -> value); DecodeError if they are wrong."""
    get = found.get
    raw_id, raw_type, raw_source = get("ce_id"), get("ce_type"), get("ce_source")
    # The inbound hot path: well-formed headers of a type and a source seen before.
    ce_type = _types.get(raw_type) if type(raw_type) is bytes else None
    ce_source = _decoded.get(raw_source) if type(raw_source) is bytes else None
    ce_id = None
    content_type = get("content-type")
    if (
        ce_type is not None
        and ce_source is not None
        and type(raw_id) is bytes
        and raw_id
        and get("ce_specversion") == SPECVERSION
        and content_type in ACCEPTED_CONTENT_TYPES
    ):
        # Not contextlib.suppress: that costs an object and two calls per record.
        try:  # noqa: SIM105
            ce_id = raw_id.decode()
        except UnicodeDecodeError:
            pass  # _check below says what is wrong
        content = MSGPACK
    if ce_id is None:
        ce_id, ce_type, ce_source = _check(found)
        content = _content(content_type)
    raw = get(ORIGIN)
    origin = (_decoded.get(raw) or _origin(raw)) if type(raw) is bytes else None
    raw = get("ce_time")
    traceparent = get("traceparent")
    tracestate = get("tracestate")
    extensions = None
    if not _KNOWN.issuperset(found):
        extensions = _extensions(found)
        if traceparent is None and "traceparent" in extensions:
            # The CloudEvents distributed-tracing extension, when the W3C header is absent.
            traceparent = found["ce_traceparent"]
            tracestate = get("ce_tracestate")
    return _new_envelope(
        Envelope,
        (
            ce_id,
            ce_source,
            ce_type,
            raw.decode(errors="replace") if type(raw) is bytes else None,
            origin,
            traceparent,
            tracestate,
            content,
            extensions,
        ),
    )


def _content(content_type: bytes | None) -> str:
    if content_type is None:
        return UNKNOWN
    if content_type in ACCEPTED_CONTENT_TYPES:
        return MSGPACK
    if content_type in JSON_CONTENT_TYPES or is_json_content_type(
        content_type.decode(errors="replace")
    ):
        return JSON
    raise DecodeError(f"content-type {_show(content_type)} is neither msgpack nor JSON")


def _extensions(found: dict[str, bytes]) -> Mapping[str, str]:
    """The ``ce_*`` attributes beyond the core ones, as text (at most 64), read-only."""
    extensions: dict[str, str] = {}
    for name, value in found.items():
        if name.startswith("ce_") and name[3:] not in _CORE and type(value) is bytes:
            extensions[name[3:]] = value[:4096].decode(errors="replace")
            if len(extensions) >= 64:
                break
    return MappingProxyType(extensions)


def _check(found: dict[str, bytes]) -> tuple[str, str, str]:
    """Check the required attributes one by one: their id, type and source, or DecodeError."""
    get = found.get
    if get("ce_specversion") != SPECVERSION:
        raise DecodeError(f"ce_specversion is {_show(get('ce_specversion'))}, expected '1.0'")
    _content(get("content-type"))
    raw = get("ce_type")
    ce_type = _types.get(raw) if type(raw) is bytes else None
    if ce_type is None:
        ce_type = _text(found, "ce_type")
        if len(_types) < _CACHE_LIMIT:
            _types[found["ce_type"]] = ce_type
    ce_id = _text(found, "ce_id")
    raw = get("ce_source")
    ce_source = _decoded.get(raw) if type(raw) is bytes else None
    if ce_source is None:
        ce_source = _text(found, "ce_source")
        if len(_decoded) < _CACHE_LIMIT:
            _decoded[found["ce_source"]] = ce_source
    return ce_id, ce_type, ce_source


def _text(found: dict[str, bytes], attr: str) -> str:
    raw = found.get(attr)
    if not raw or not isinstance(raw, bytes):
        raise DecodeError(f"header {attr} is missing or empty")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise DecodeError(f"header {attr} is not UTF-8") from None


def _origin(raw: bytes) -> str:
    text = raw.decode(errors="replace")
    if len(_decoded) < _CACHE_LIMIT:
        _decoded[raw] = text
    return text


def _show(value: bytes | None) -> str:
    return "missing" if value is None else repr(value.decode(errors="replace")[:60])
