"""The payload codec: a signal's keyword arguments as a plain msgpack map, and back.

The value of every record the bridge writes is the payload itself, a msgpack map with str
keys, readable by any msgpack library. The few Python types that msgpack has no family for
travel as extension types whose byte layouts are fixed here and in docs/wire-format.md:

====  =========================  ===========================================================
code  Python type                ext payload (big-endian)
====  =========================  ===========================================================
-1    ``datetime``, offset 0     the msgpack standard timestamp (32, 64 or 96-bit form)
1     ``datetime``, offset != 0  uint32 nanoseconds, int64 Unix seconds, int32 UTC offset (s)
2     ``date``                   uint16 year, uint8 month, uint8 day
3     ``uuid.UUID``              the 16 bytes of the UUID (RFC 9562 byte order)
4     ``decimal.Decimal``        ASCII text of the finite decimal, e.g. ``-1.50`` or ``1E+3``
====  =========================  ===========================================================

Decoding is bounded: the size is checked before unpacking, every length is capped, the
nesting depth is capped, nothing runs but the fixed extension decoders, and every failure
is a ``DecodeError`` with a reason.
"""

from __future__ import annotations

import re
import struct
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Final, NoReturn
from uuid import UUID

import msgpack  # type: ignore[import-untyped]

from ._errors import DecodeError, EncodeError
from ._transport import MESSAGE_MAX_BYTES

__all__ = [
    "ACCEPTED_CONTENT_TYPES",
    "CONTENT_TYPE",
    "EXT_DATE",
    "EXT_DATETIME",
    "EXT_DECIMAL",
    "EXT_TIMESTAMP",
    "EXT_UUID",
    "DecodeError",
    "EncodeError",
    "MsgpackCodec",
]

CONTENT_TYPE: Final = "application/vnd.msgpack"
"""The ``content-type`` header value of the records the bridge writes."""

ACCEPTED_CONTENT_TYPES: Final = frozenset(
    {"application/vnd.msgpack", "application/msgpack", "application/x-msgpack"}
)
"""The ``content-type`` header values a decoder accepts as this codec's format."""

EXT_TIMESTAMP: Final = -1
"""msgpack's standard timestamp extension: a ``datetime`` whose UTC offset is zero."""
EXT_DATETIME: Final = 1
"""A ``datetime`` with a non-zero UTC offset: the instant plus the offset."""
EXT_DATE: Final = 2
"""A ``date``: year, month, day."""
EXT_UUID: Final = 3
"""A ``uuid.UUID``: its 16 bytes."""
EXT_DECIMAL: Final = 4
"""A finite ``decimal.Decimal``: its exact text."""

MAX_DEPTH_LIMIT: Final = 512
"""The largest ``max_depth`` a codec accepts (the msgpack C unpacker stops at 1024)."""

_INT_MIN: Final = -(1 << 63)
_INT_MAX: Final = (1 << 64) - 1
_EPOCH: Final = datetime(1970, 1, 1)  # naive: all arithmetic on wall times, no overflow at UTC
_DATETIME_EXT: Final = struct.Struct(">Iqi")  # nanoseconds, seconds, offset seconds
_DATE_EXT: Final = struct.Struct(">HBB")
_DECIMAL_TEXT: Final = re.compile(rb"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")

# Exact types the packer (with ``_default``) handles with no closer look from us.
_LEAF_TYPES: Final[frozenset[type]] = frozenset(
    {str, int, float, bool, type(None), bytes, datetime, date, UUID, Decimal}
)
_ENCODE_CONTAINERS: Final[frozenset[type]] = frozenset({dict, list, tuple})
_DECODED_CONTAINERS: Final[frozenset[type]] = frozenset({dict, list})


class _Unsupported(Exception):
    """Raised by ``_default`` for a value that has no wire form; the message is the reason."""


# -- extension types: encoding ------------------------------------------------------------


def _type_name(value: object) -> str:
    cls = type(value)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _encode_datetime(value: datetime) -> Any:
    offset = value.utcoffset()
    if offset is None:
        raise _Unsupported(
            "naive datetime (no UTC offset); use a timezone-aware datetime, "
            "e.g. datetime.now(timezone.utc)"
        )
    if offset.microseconds:
        raise _Unsupported(f"datetime UTC offset {offset} is not a whole number of seconds")
    delta = (value.replace(tzinfo=None) - _EPOCH) - offset
    seconds = delta.days * 86400 + delta.seconds
    nanoseconds = delta.microseconds * 1000
    offset_seconds = offset.days * 86400 + offset.seconds
    if offset_seconds == 0:
        return msgpack.Timestamp(seconds, nanoseconds)
    return msgpack.ExtType(EXT_DATETIME, _DATETIME_EXT.pack(nanoseconds, seconds, offset_seconds))


def _default(value: Any) -> Any:
    """Return the msgpack form of a value the packer has no family for, or raise."""
    if isinstance(value, datetime):
        return _encode_datetime(value)
    if isinstance(value, date):
        return msgpack.ExtType(EXT_DATE, _DATE_EXT.pack(value.year, value.month, value.day))
    if isinstance(value, UUID):
        return msgpack.ExtType(EXT_UUID, value.bytes)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise _Unsupported(f"Decimal {value} is not finite; only finite decimals are supported")
        return msgpack.ExtType(EXT_DECIMAL, str(value).encode("ascii"))
    if isinstance(value, int) and not isinstance(value, bool):
        raise _Unsupported("int out of the 64-bit range [-2**63, 2**64 - 1]")
    raise _Unsupported(f"unsupported type {_type_name(value)}")


# -- extension types: decoding ------------------------------------------------------------


def _bad_ext(code: int, reason: str) -> NoReturn:
    raise DecodeError(f"malformed extension type {code}: {reason}")


def _decode_datetime(data: bytes) -> datetime:
    if len(data) != _DATETIME_EXT.size:
        _bad_ext(EXT_DATETIME, f"{len(data)} bytes, expected {_DATETIME_EXT.size}")
    nanoseconds, seconds, offset = _DATETIME_EXT.unpack(data)
    if nanoseconds > 999_999_999:
        _bad_ext(EXT_DATETIME, f"nanoseconds {nanoseconds} > 999999999")
    if not -86400 < offset < 86400:
        _bad_ext(EXT_DATETIME, f"UTC offset {offset} s is not within a day")
    try:
        local = _EPOCH + timedelta(seconds=seconds + offset, microseconds=nanoseconds // 1000)
    except (OverflowError, ValueError):
        _bad_ext(EXT_DATETIME, "datetime out of range (years 1 to 9999)")
    tz = UTC if offset == 0 else timezone(timedelta(seconds=offset))
    return local.replace(tzinfo=tz)


def _decode_date(data: bytes) -> date:
    if len(data) != _DATE_EXT.size:
        _bad_ext(EXT_DATE, f"{len(data)} bytes, expected {_DATE_EXT.size}")
    try:
        return date(*_DATE_EXT.unpack(data))
    except ValueError as exc:
        _bad_ext(EXT_DATE, str(exc))


def _decode_uuid(data: bytes) -> UUID:
    if len(data) != 16:
        _bad_ext(EXT_UUID, f"{len(data)} bytes, expected 16")
    return UUID(bytes=data)


def _decode_decimal(data: bytes) -> Decimal:
    if not _DECIMAL_TEXT.fullmatch(data):
        _bad_ext(EXT_DECIMAL, f"not a finite decimal number: {data[:40]!r}")
    try:
        return Decimal(data.decode("ascii"))
    except Exception:  # decimal.InvalidOperation: exponent beyond the decimal module's range
        _bad_ext(EXT_DECIMAL, f"decimal out of range: {data[:40]!r}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_DATETIME:
        return _decode_datetime(data)
    if code == EXT_DATE:
        return _decode_date(data)
    if code == EXT_UUID:
        return _decode_uuid(data)
    if code == EXT_DECIMAL:
        return _decode_decimal(data)
    raise DecodeError(f"unknown extension type {code}")


def _describe(exc: Exception) -> str:
    """Return the reason for an exception that msgpack raised while unpacking."""
    text = str(exc)
    if isinstance(exc, msgpack.FormatError):
        return "malformed msgpack: invalid type byte (0xc1 is never used) or malformed data"
    if isinstance(exc, UnicodeDecodeError):
        return f"malformed msgpack: a str is not valid UTF-8 ({exc.reason} at byte {exc.start})"
    if "incomplete input" in text:
        return "malformed msgpack: truncated (incomplete input)"
    if "exceeds max_" in text:
        return f"malformed msgpack: declared length too large: {text}"
    if "is not allowed for map key" in text:
        return f"map key of type {text.split(maxsplit=1)[0]}; keys must be str"
    if "timestamp" in text or "nanoseconds" in text or "date value" in text:
        return f"malformed extension type -1 (timestamp): {text}"
    return f"malformed msgpack: {type(exc).__name__}: {text}" if text else type(exc).__name__


# -- field paths --------------------------------------------------------------------------

Path = tuple[object, ...]


def _path(path: Path) -> str:
    """Return ``payload['user']['tags'][0]``, cut to the first 12 steps."""
    steps = "".join(f"[{part!r}]" for part in path[:12])
    return f"payload{steps}[...]" if len(path) > 12 else f"payload{steps}"


# -- the codec ----------------------------------------------------------------------------


class MsgpackCodec:
    """Encode a payload (a signal's keyword arguments) as a msgpack map, and decode it back.

    Supported values: None, bool, int in [-2**63, 2**64 - 1], float, str, bytes (bytearray
    and memoryview too; they come back as bytes), list and tuple (a tuple comes back as a
    list), dict with str keys, a timezone-aware ``datetime`` (microseconds and the UTC offset
    are kept; the tzinfo comes back as a fixed-offset ``datetime.timezone``), ``date``,
    ``uuid.UUID`` and a finite ``decimal.Decimal``. Subclasses of these are encoded as the
    base type. Anything else is an ``EncodeError`` at ``encode``.

    Limits apply both ways, so that what ``encode`` returns, ``decode`` of a codec with the
    same limits reads: ``max_size`` bytes for the whole value, ``max_depth`` nested
    containers (the top-level map counts as 1), and the per-item lengths ``max_str_len``
    (UTF-8 bytes), ``max_bin_len``, ``max_ext_len`` (bytes), ``max_array_len`` (items) and
    ``max_map_len`` (entries), each defaulting to ``max_size``. A codec is thread safe.
    """

    content_type: str = CONTENT_TYPE
    accepted_content_types: frozenset[str] = ACCEPTED_CONTENT_TYPES

    def __init__(
        self,
        *,
        max_size: int = MESSAGE_MAX_BYTES,
        max_depth: int = 32,
        max_str_len: int | None = None,
        max_bin_len: int | None = None,
        max_array_len: int | None = None,
        max_map_len: int | None = None,
        max_ext_len: int | None = None,
    ) -> None:
        """Set the limits; a limit left at None is ``max_size``. Bad limits are ValueError."""
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        if not 1 <= max_depth <= MAX_DEPTH_LIMIT:
            raise ValueError(f"max_depth must be in 1..{MAX_DEPTH_LIMIT}, got {max_depth}")
        self.max_size = max_size
        self.max_depth = max_depth
        self.max_str_len = self._limit("max_str_len", max_str_len, 0)
        self.max_bin_len = self._limit("max_bin_len", max_bin_len, 0)
        self.max_array_len = self._limit("max_array_len", max_array_len, 0)
        self.max_map_len = self._limit("max_map_len", max_map_len, 1)
        self.max_ext_len = self._limit("max_ext_len", max_ext_len, _DATETIME_EXT.size)
        # An encoded value no longer than this cannot hold an item over a per-item limit.
        self._lengths_fit = min(
            self.max_str_len,
            self.max_bin_len,
            self.max_array_len,
            2 * self.max_map_len,
            self.max_ext_len,
        )
        self._local = threading.local()

    def _limit(self, name: str, value: int | None, minimum: int) -> int:
        if value is None:
            return self.max_size
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
        return value

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_size={self.max_size}, max_depth={self.max_depth})"

    # -- encode ---------------------------------------------------------------------------

    def encode(self, payload: Mapping[str, Any]) -> bytes:
        """Return the msgpack map of ``payload``, in its key order.

        Raises ``EncodeError`` naming the field path (``payload['user']['tags']: unsupported
        type set``) for a value with no wire form, a non-str key, a naive datetime, an int
        out of range, nesting deeper than ``max_depth``, an item over its length limit, or
        an encoded value over ``max_size`` bytes.
        """
        if type(payload) is not dict:
            if not isinstance(payload, Mapping):
                raise EncodeError(
                    f"payload: must be a mapping with str keys, not {_type_name(payload)}"
                )
            payload = dict(payload)
        if not self._plain(payload):
            problem = self._find_problem(payload, check_lengths=False)
            if problem is not None:
                raise EncodeError(problem)
        try:
            packer = self._local.packer
        except AttributeError:
            packer = self._local.packer = msgpack.Packer(use_bin_type=True, default=_default)
        try:
            data: bytes = packer.pack(payload)
        except Exception as exc:
            del self._local.packer  # never reuse a packer that failed half way
            problem = self._find_problem(payload, check_lengths=False)
            raise EncodeError(problem or f"payload: {exc}") from None
        if len(data) > self.max_size:
            raise EncodeError(
                f"payload: encoded size {len(data)} bytes exceeds max_size={self.max_size}"
            )
        if len(data) > self._lengths_fit:
            problem = self._find_problem(payload, check_lengths=True)
            if problem is not None:
                raise EncodeError(problem)
        return data

    def _plain(self, payload: dict[Any, Any]) -> bool:
        """Return True when a payload needs no closer look before packing.

        That is: every key is exactly a str, every value is of an exact type in
        ``_LEAF_TYPES`` or an exact dict/list/tuple holding the same, within ``max_depth``.
        False means "look closer", not "wrong". A flat payload costs one loop over its
        items; only containers are descended into.
        """
        nested: list[Any] | None = None
        for key, value in payload.items():
            if type(key) is not str:
                return False
            kind = type(value)
            if kind not in _LEAF_TYPES:
                if kind not in _ENCODE_CONTAINERS:
                    return False
                if nested is None:
                    nested = []
                nested.append(value)
        depth = 2
        budget = self.max_size  # each item takes >= 1 byte: bounds shared and cyclic refs
        while nested:
            if depth > self.max_depth:
                return False
            level: list[Any] = []
            for container in nested:
                budget -= len(container)
                if budget < 0:
                    return False
                if type(container) is dict:
                    for key in container:
                        if type(key) is not str:
                            return False
                    items = container.values()
                else:
                    items = container
                if len(items) > 16 and _LEAF_TYPES.issuperset(map(type, items)):
                    continue  # a long run of scalars: one pass in C
                for value in items:
                    kind = type(value)
                    if kind not in _LEAF_TYPES:
                        if kind not in _ENCODE_CONTAINERS:
                            return False
                        level.append(value)
            nested = level
            depth += 1
        return True

    def _find_problem(self, payload: Mapping[Any, Any], *, check_lengths: bool) -> str | None:
        """Return the first reason, with its field path, why ``payload`` cannot be encoded.

        A full walk, for the slow path only. Returns None when nothing is wrong.
        """
        budget = self.max_size  # each item takes >= 1 byte: bounds shared and cyclic refs
        stack: list[tuple[Any, Path, int]] = [(payload, (), 1)]
        while stack:
            value, path, depth = stack.pop()
            if isinstance(value, msgpack.ExtType) or not isinstance(value, (Mapping, list, tuple)):
                problem = self._leaf_problem(value, check_lengths)
            elif depth > self.max_depth:
                problem = f"nesting deeper than max_depth={self.max_depth}"
            elif (budget := budget - len(value)) < 0:
                problem = f"payload larger than max_size={self.max_size}"
            else:
                problem = self._container_problem(value, check_lengths)
                if problem is None:
                    pairs = value.items() if isinstance(value, Mapping) else enumerate(value)
                    children = [(item, (*path, key), depth + 1) for key, item in pairs]
                    stack.extend(reversed(children))
            if problem is not None:
                return f"{_path(path)}: {problem}"
        return None

    def _container_problem(self, value: Any, check_lengths: bool) -> str | None:
        """Return why a map or array itself (not its items) cannot be encoded, or None."""
        size = len(value)
        if not isinstance(value, Mapping):
            if check_lengths and size > self.max_array_len:
                return f"array of {size} items exceeds max_array_len={self.max_array_len}"
            return None
        if not isinstance(value, dict):
            return f"unsupported type {_type_name(value)} (use a dict)"
        if check_lengths and size > self.max_map_len:
            return f"map of {size} entries exceeds max_map_len={self.max_map_len}"
        for key in value:
            if not isinstance(key, str):
                return f"key {key!r} is of type {_type_name(key)}; keys must be str"
        return None

    def _leaf_problem(self, value: Any, check_lengths: bool) -> str | None:
        """Return why a non-container value cannot be encoded, or None."""
        if value is None or isinstance(value, (bool, float)):
            return None
        if isinstance(value, int):
            if not _INT_MIN <= value <= _INT_MAX:
                return "int out of the 64-bit range [-2**63, 2**64 - 1]"
            return None
        if isinstance(value, str):
            try:
                size = len(value.encode("utf-8"))
            except UnicodeEncodeError as exc:
                return f"str is not valid Unicode ({exc.reason} at index {exc.start})"
            if check_lengths and size > self.max_str_len:
                return f"str of {size} UTF-8 bytes exceeds max_str_len={self.max_str_len}"
            return None
        if isinstance(value, (bytes, bytearray, memoryview)):
            size = value.nbytes if isinstance(value, memoryview) else len(value)
            if check_lengths and size > self.max_bin_len:
                return f"bytes of length {size} exceeds max_bin_len={self.max_bin_len}"
            return None
        if isinstance(value, (msgpack.ExtType, msgpack.Timestamp)):
            return f"unsupported type {_type_name(value)} (raw msgpack extensions are not allowed)"
        try:
            ext = _default(value)
        except _Unsupported as exc:
            return str(exc)
        size = len(ext.data) if isinstance(ext, msgpack.ExtType) else 0
        if check_lengths and size > self.max_ext_len:
            return f"{_type_name(value)} of {size} bytes exceeds max_ext_len={self.max_ext_len}"
        return None

    # -- decode ---------------------------------------------------------------------------

    def decode(self, data: bytes) -> dict[str, Any]:
        """Return the payload that ``data`` (one record value) encodes.

        ``data`` must be exactly one msgpack map with str keys, within the limits, using
        only the extension types above. Anything else (empty or oversized input, malformed
        or truncated msgpack, trailing bytes, another top-level type, a non-str key, too deep
        nesting, an unknown or malformed extension) raises ``DecodeError``, and no other
        exception; no code from the input runs.
        """
        if type(data) is not bytes:
            if not isinstance(data, (bytearray, memoryview)):
                raise DecodeError(f"value must be bytes, not {_type_name(data)}")
            nbytes = data.nbytes if isinstance(data, memoryview) else len(data)
            if nbytes > self.max_size:
                raise DecodeError(f"value of {nbytes} bytes exceeds max_size={self.max_size}")
            data = bytes(data)
        size = len(data)
        if not 0 < size <= self.max_size:
            if size == 0:
                raise DecodeError("empty value: expected a msgpack map")
            raise DecodeError(f"value of {size} bytes exceeds max_size={self.max_size}")
        try:
            if size <= self._lengths_fit:
                # No item can be longer than the value: msgpack's defaults cap every
                # declared length at ``size`` already (and passing none is faster).
                result = msgpack.unpackb(
                    data, raw=False, strict_map_key=True, timestamp=3, ext_hook=_ext_hook
                )
            else:
                result = msgpack.unpackb(
                    data,
                    raw=False,
                    strict_map_key=True,
                    timestamp=3,  # ext -1 -> datetime in UTC
                    ext_hook=_ext_hook,
                    max_str_len=min(self.max_str_len, size),
                    max_bin_len=min(self.max_bin_len, size),
                    max_array_len=min(self.max_array_len, size),
                    max_map_len=min(self.max_map_len, size),
                    max_ext_len=min(self.max_ext_len, size),
                )
        except DecodeError:
            raise
        except msgpack.ExtraData as exc:
            raise DecodeError(
                f"{len(exc.extra)} trailing bytes after the first msgpack value"
            ) from None
        except msgpack.StackError:
            raise DecodeError(f"nesting deeper than max_depth={self.max_depth}") from None
        except Exception as exc:  # anything else from unpacking arbitrary bytes
            raise DecodeError(_describe(exc)) from None
        if type(result) is not dict:
            raise DecodeError(f"top level is {_type_name(result)}, expected a msgpack map")
        for key, value in result.items():
            if type(key) is not str or type(value) in _DECODED_CONTAINERS:
                self._check_decoded(result)  # nested, or a bad key: the full check
                break
        return result

    def _check_decoded(self, result: dict[Any, Any]) -> None:
        """Raise DecodeError for a non-str map key or nesting deeper than ``max_depth``."""
        containers = _DECODED_CONTAINERS
        nested: list[Any] = [result]
        depth = 1
        while nested:
            if depth > self.max_depth:
                self._raise_decoded_problem(result)
            level: list[Any] = []
            append = level.append
            for container in nested:
                if type(container) is dict:
                    for key, value in container.items():
                        if type(key) is not str:
                            self._raise_decoded_problem(result)
                        if type(value) in containers:
                            append(value)
                else:
                    for value in container:
                        if type(value) in containers:
                            append(value)
            nested = level
            depth += 1

    def _raise_decoded_problem(self, result: dict[Any, Any]) -> NoReturn:
        """Find the first bad key or too deep container again, with its path, and raise."""
        stack: list[tuple[Any, Path, int]] = [(result, (), 1)]
        while stack:
            value, path, depth = stack.pop()
            if type(value) not in _DECODED_CONTAINERS:
                continue
            if depth > self.max_depth:
                raise DecodeError(f"{_path(path)}: nesting deeper than max_depth={self.max_depth}")
            if type(value) is dict:
                for key in value:
                    if type(key) is not str:
                        raise DecodeError(
                            f"{_path(path)}: map key {key!r} is bin; keys must be str"
                        )
                children = [(item, (*path, key), depth + 1) for key, item in value.items()]
            else:
                children = [(item, (*path, index), depth + 1) for index, item in enumerate(value)]
            stack.extend(reversed(children))
        raise DecodeError("payload: invalid")  # not reached: _check_decoded found a problem


def headers_to_msgpack(headers: Sequence[tuple[str, bytes]]) -> bytes:
    """Record headers as a msgpack array of ``[name, value]`` pairs (how the SQL outbox
    stores them: read back in C, several times faster than a Python loop)."""
    return msgpack.packb(list(headers), use_bin_type=True)  # type: ignore[no-any-return]


def headers_from_msgpack(blob: bytes) -> tuple[tuple[str, bytes], ...]:
    """The pairs ``headers_to_msgpack`` packed (only ever our own rows: not untrusted input)."""
    return msgpack.unpackb(blob, use_list=False, raw=False)  # type: ignore[no-any-return]
