"""The JSON payload codec: a signal's keyword arguments as one JSON object, and back.

The types JSON has no family for travel as strings (docs/wire-format.md, "JSON data"):

===================  ========================================================
Python type          JSON value
===================  ========================================================
``datetime``         RFC 3339 text, ``2026-12-01T09:30:00.250000Z`` (offset kept;
                     ``Z`` for UTC); a naive datetime is an ``EncodeError``
``date``             ``2026-12-01``
``uuid.UUID``        the canonical lower-case text
``decimal.Decimal``  its exact text, ``"-1.50"`` (finite only)
``bytes``            standard base64 with padding
===================  ========================================================

A JSON reader cannot tell such a string from any other, so decoding returns the string;
``restore`` turns it back into the declared type of an ``@event`` dataclass field, so a
typed handler gets the same types whatever the format.

Decoding is bounded: the size is checked first, the nesting depth after parsing (and a
parser recursion error is a ``DecodeError`` too), NaN and Infinity are refused, ints are
limited by Python's ``int_max_str_digits``; nothing runs but the parser.

The stdlib ``json`` module is the reference. With the ``json`` extra installed, orjson
encodes and msgspec decodes first (several times faster, docs/performance.md); whatever
they refuse, or would write differently (NaN, floats orjson spells otherwise), goes
through the stdlib, so the bytes and the values are the same either way. One documented
difference: orjson writes a plain ``Enum`` member as its value, the stdlib refuses it.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final
from uuid import UUID

from ._errors import DecodeError, EncodeError
from ._transport import MESSAGE_MAX_BYTES

try:  # the json extra
    import orjson
except ImportError:  # pragma: no cover - the extra absent
    orjson = None  # type: ignore[assignment]
try:
    import msgspec
except ImportError:  # pragma: no cover - the extra absent
    msgspec = None  # type: ignore[assignment]

ACCELERATED: Final = orjson is not None and msgspec is not None
"""True when the json extra is installed (orjson and msgspec)."""

JSON_CONTENT_TYPE: Final = "application/json"

_DECODED_CONTAINERS: Final[frozenset[type]] = frozenset({dict, list})


def is_json_content_type(value: str) -> bool:
    """True for ``application/json``, ``text/json`` and ``application/<x>+json``, with or
    without parameters such as ``; charset=utf-8``."""
    media = value.split(";", 1)[0].strip().lower()
    kind, _, sub = media.partition("/")
    return kind in ("application", "text") and (sub == "json" or sub.endswith("+json"))


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            raise EncodeError(
                "naive datetime (no UTC offset); use a timezone-aware datetime, "
                "e.g. datetime.now(timezone.utc)"
            )
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise EncodeError(f"Decimal {value} is not finite; only finite decimals are supported")
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(value).decode("ascii")
    cls = type(value)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__name__}"
    raise EncodeError(f"unsupported type {name}")


def _refuse_constant(name: str) -> Any:
    raise DecodeError(f"malformed JSON: {name} is not a JSON number")


# orjson hands datetimes and dataclasses to _default as the stdlib encoder does.
_ORJSON_OPTIONS: Final = (
    orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS if orjson else 0
)


def _orjson_encode(payload: Mapping[str, Any]) -> bytes | None:
    """orjson's bytes for ``payload`` when they are the stdlib encoder's, else None."""
    try:
        data = orjson.dumps(payload, default=_default, option=_ORJSON_OPTIONS)
    except Exception:  # orjson's refusals (big ints, surrogates...): the stdlib says why
        return None
    if b"null" in data or b"e-" in data or b"0.0000" in data:
        # NaN/Infinity (orjson writes null), or a float below 1e-4 (orjson writes 1e-7 and
        # 0.00001 where the stdlib writes 1e-07 and 1e-05): the stdlib's bytes or error.
        return None
    return data


def _msgspec_decoder() -> Callable[[Any], Any]:
    return msgspec.json.Decoder().decode


class JsonCodec:
    """Encode a payload as one JSON object (UTF-8), and decode one back, within limits.

    ``max_size`` bytes for the whole value and ``max_depth`` nested containers (the
    top-level object counts as 1), both ways. Thread safe.
    """

    content_type: str = JSON_CONTENT_TYPE

    def __init__(
        self, *, max_size: int = MESSAGE_MAX_BYTES, max_depth: int = 32, accelerate: bool = True
    ) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        if max_depth < 1:
            raise ValueError(f"max_depth must be >= 1, got {max_depth}")
        self.max_size = max_size
        self.max_depth = max_depth
        self._encoder = json.JSONEncoder(
            ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_default
        )
        self._decoder = json.JSONDecoder(parse_constant=_refuse_constant)  # one, not per call
        self._fast_encode = _orjson_encode if accelerate and ACCELERATED else None
        self._fast_decode = _msgspec_decoder() if accelerate and ACCELERATED else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_size={self.max_size}, max_depth={self.max_depth})"

    def encode(self, payload: Mapping[str, Any]) -> bytes:
        """Return the JSON object of ``payload``; ``EncodeError`` with the reason if the
        payload has a non-str key, a value with no JSON form, nesting deeper than
        ``max_depth`` or an encoded size over ``max_size``."""
        if not isinstance(payload, Mapping):
            raise EncodeError(f"payload: must be a mapping with str keys, not {type(payload)}")
        self._check_tree(payload, EncodeError)
        if self._fast_encode is not None:
            data = self._fast_encode(payload)
            if data is not None:
                if len(data) > self.max_size:
                    raise EncodeError(
                        f"payload: encoded size {len(data)} bytes exceeds max_size={self.max_size}"
                    )
                return data
        try:
            data = self._encoder.encode(payload).encode("utf-8")
        except EncodeError as exc:
            raise EncodeError(f"payload: {exc}") from None
        except (ValueError, TypeError, UnicodeEncodeError) as exc:
            raise EncodeError(f"payload: {exc}") from None
        if len(data) > self.max_size:
            raise EncodeError(
                f"payload: encoded size {len(data)} bytes exceeds max_size={self.max_size}"
            )
        return data

    def decode(self, data: bytes) -> dict[str, Any]:
        """Return the payload of ``data``, exactly one JSON object; ``DecodeError`` for
        anything else (and no other exception)."""
        return self.decode_object(data, "a JSON object")

    def decode_object(self, data: bytes, expected: str) -> dict[str, Any]:
        """Parse ``data`` as one JSON object; ``expected`` names it in error reasons."""
        result = self._load(data, expected)
        if type(result) is not dict:
            raise DecodeError(f"top level is a JSON {_json_kind(result)}, expected {expected}")
        for value in result.values():
            if type(value) in _DECODED_CONTAINERS:
                self._check_tree(result, DecodeError)
                break
        return result

    def decode_array(self, data: bytes, expected: str) -> list[Any]:
        """Parse ``data`` as one JSON array (of anything, bounded like an object)."""
        result = self._load(data, expected)
        if type(result) is not list:
            raise DecodeError(f"top level is a JSON {_json_kind(result)}, expected {expected}")
        self._check_tree(result, DecodeError)
        return result

    def _load(self, data: bytes, expected: str) -> Any:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise DecodeError(f"value must be bytes, expected {expected}")
        size = len(data)
        if size == 0:
            raise DecodeError(f"empty value: expected {expected}")
        if size > self.max_size:
            raise DecodeError(f"value of {size} bytes exceeds max_size={self.max_size}")
        if self._fast_decode is not None:
            try:
                return self._fast_decode(data)
            except (msgspec.DecodeError, RecursionError):
                pass  # the stdlib parser: the same value (1e400, "\ud800") or reason
        try:
            text = bytes(data).decode("utf-8")
            result = self._decoder.decode(text)
        except DecodeError:
            raise
        except UnicodeDecodeError as exc:
            raise DecodeError(
                f"malformed JSON: not UTF-8 ({exc.reason} at byte {exc.start}), expected {expected}"
            ) from None
        except RecursionError:
            raise DecodeError(f"nesting deeper than max_depth={self.max_depth}") from None
        except ValueError as exc:  # json.JSONDecodeError, or an int over int_max_str_digits
            raise DecodeError(f"malformed JSON: {exc}; expected {expected}") from None
        return result

    def _check_tree(self, payload: Any, error: type[Exception]) -> None:
        """Raise ``error`` for a non-str key or nesting deeper than ``max_depth``."""
        nested: list[Any] = [payload]
        depth = 1
        budget = self.max_size  # bounds shared and cyclic references on encode
        while nested:
            if depth > self.max_depth:
                raise error(f"nesting deeper than max_depth={self.max_depth}")
            level: list[Any] = []
            for container in nested:
                budget -= len(container)
                if budget < 0:
                    raise error(f"payload larger than max_size={self.max_size}")
                if isinstance(container, Mapping):
                    for key in container:
                        if type(key) is not str:
                            raise error(
                                f"key {key!r} is of type {type(key).__name__}; keys must be str"
                            )
                    items: Any = container.values()
                else:
                    items = container
                for value in items:
                    if isinstance(value, (Mapping, list, tuple)):
                        level.append(value)
            nested = level
            depth += 1


def _json_kind(value: object) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


# -- typed events: JSON strings back to the declared types --------------------------------

Convert = Callable[[Any], Any]


def _to_datetime(value: Any) -> Any:
    if type(value) is str:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return value
        return parsed if parsed.utcoffset() is not None else value
    return value


def _to_date(value: Any) -> Any:
    if type(value) is str and len(value) == 10:
        try:
            return date.fromisoformat(value)
        except ValueError:
            return value
    return value


def _to_uuid(value: Any) -> Any:
    if type(value) is str and len(value) <= 45:
        try:
            return UUID(value)
        except ValueError:
            return value
    return value


def _to_decimal(value: Any) -> Any:
    if type(value) is str and len(value) <= 1000:
        try:
            number = Decimal(value)
        except InvalidOperation:
            return value
        return number if number.is_finite() else value
    if type(value) is int:
        return Decimal(value)
    return value


def _to_bytes(value: Any) -> Any:
    if type(value) is str:
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return value
    return value


_SCALARS: Final[dict[Any, Convert]] = {
    datetime: _to_datetime,
    date: _to_date,
    UUID: _to_uuid,
    Decimal: _to_decimal,
    bytes: _to_bytes,
}


def _converter(hint: Any) -> Convert | None:
    """A function turning the JSON form of ``hint`` back into it; None if nothing to do."""
    scalar = _SCALARS.get(hint)
    if scalar is not None:
        return scalar
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        # Optional[X] and unions: the first member that turns the value into something else
        options = [c for c in (_converter(arg) for arg in args) if c is not None]
        if not options:
            return None

        def union(value: Any) -> Any:
            for option in options:
                result = option(value)
                if result is not value:
                    return result
            return value

        return union
    if origin in (list, tuple) and args and (len(args) == 1 or args[-1] is Ellipsis):
        item = _converter(args[0])
        if item is None:
            return None
        return lambda value: [item(v) for v in value] if type(value) is list else value
    if origin is dict and len(args) == 2:
        entry = _converter(args[1])
        if entry is None:
            return None
        return lambda value: (
            {k: entry(v) for k, v in value.items()} if type(value) is dict else value
        )
    return None


_restorers: dict[type[Any], dict[str, Convert]] = {}


def _restorer(cls: type[Any]) -> dict[str, Convert]:
    found = _restorers.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls)
        found = {}
        for field in dataclasses.fields(cls):
            convert = _converter(hints[field.name])
            if convert is not None:
                found[field.name] = convert
        _restorers[cls] = found
    return found


def restore(cls: type[Any] | None, payload: dict[str, Any]) -> dict[str, Any]:
    """Turn the JSON strings of ``payload`` back into the field types of the ``@event``
    dataclass ``cls`` (datetime, date, UUID, Decimal, bytes; also inside Optional, unions,
    ``list[X]`` and ``dict[str, X]``). A string that does not parse is left as it is, so
    validation then names the field. ``payload`` is changed in place and returned."""
    if cls is None:
        return payload
    for name, convert in _restorer(cls).items():
        if name in payload:
            payload[name] = convert(payload[name])
    return payload
