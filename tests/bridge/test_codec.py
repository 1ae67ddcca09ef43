"""The payload codec: round trips, encode errors, bounded decoding, interop, properties."""

from __future__ import annotations

import math
import struct
import threading
from collections import OrderedDict
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from types import MappingProxyType
from typing import Any
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge._codec import (
    ACCEPTED_CONTENT_TYPES,
    CONTENT_TYPE,
    EXT_DATE,
    EXT_DATETIME,
    EXT_DECIMAL,
    EXT_UUID,
    MAX_DEPTH_LIMIT,
    DecodeError,
    EncodeError,
    MsgpackCodec,
)

CODEC = MsgpackCodec()


def roundtrip(payload: dict[str, Any], codec: MsgpackCodec = CODEC) -> dict[str, Any]:
    return codec.decode(codec.encode(payload))


def nested_lists(depth: int) -> list[Any]:
    """Return ``depth`` nested lists: [[[...]]]."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def tz(**offset: int) -> timezone:
    return timezone(timedelta(**offset))


# -- round trips --------------------------------------------------------------------------


SCALARS: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    127,
    128,
    -32,
    -33,
    2**31,
    2**63,
    2**64 - 1,
    -(2**63),
    0.0,
    -0.0,
    1.5,
    1e300,
    math.inf,
    -math.inf,
    "",
    "hello",
    "h\u00e9llo \u20ac \U0001f600",
    "x" * 70_000,
    b"",
    b"\x00\xff" * 40_000,
    date(1, 1, 1),
    date(2024, 2, 29),
    date(9999, 12, 31),
    UUID(int=0),
    UUID(int=2**128 - 1),
    uuid4(),
    Decimal("0"),
    Decimal("-0"),
    Decimal("19.90"),
    Decimal("-0.001"),
    Decimal("1E+3"),
    Decimal("1E-7"),
    Decimal("123456789012345678901234567890.123456789"),
    Decimal("1E+999999"),
]


@pytest.mark.parametrize("value", SCALARS, ids=lambda v: f"{type(v).__name__}:{str(v)[:20]}")
def test_scalar_round_trips_with_its_type(value: Any) -> None:
    result = roundtrip({"v": value})["v"]
    assert type(result) is type(value)
    assert result == value
    if isinstance(value, float):
        assert math.copysign(1, result) == math.copysign(1, value)
    if isinstance(value, Decimal):
        assert result.as_tuple() == value.as_tuple()


def test_float_nan_round_trips() -> None:
    assert math.isnan(roundtrip({"v": math.nan})["v"])


DATETIMES = [
    datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
    datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC),
    datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=tz(hours=2)),
    datetime(2024, 5, 1, 12, 0, 0, 1, tzinfo=tz(hours=-5, minutes=-30)),
    datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=tz(hours=14)),
    datetime(1920, 1, 1, tzinfo=tz(minutes=19, seconds=32)),
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(1, 1, 1, tzinfo=tz(hours=23, minutes=59, seconds=59)),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=tz(hours=-23, minutes=-59)),
    datetime(2106, 2, 7, 6, 28, 16, tzinfo=UTC),  # 2**32 seconds: past timestamp 32
    datetime(2514, 5, 30, 1, 53, 4, tzinfo=UTC),  # 2**34 seconds: past timestamp 64
]


@pytest.mark.parametrize("value", DATETIMES, ids=str)
def test_datetime_round_trips_with_microseconds_and_offset(value: datetime) -> None:
    result = roundtrip({"v": value})["v"]
    assert type(result) is datetime
    assert result == value
    assert result.utcoffset() == value.utcoffset()
    assert result.replace(tzinfo=None) == value.replace(tzinfo=None)  # same wall time


def test_datetime_in_a_named_zone_comes_back_with_its_offset() -> None:
    try:
        paris = ZoneInfo("Europe/Paris")
    except ZoneInfoNotFoundError:
        pytest.skip("no time zone database")
    value = datetime(2024, 7, 1, 9, 30, 0, 250000, tzinfo=paris)
    result = roundtrip({"v": value})["v"]
    assert result == value
    assert result.utcoffset() == timedelta(hours=2)
    assert result.tzinfo == tz(hours=2)  # a fixed offset: zone names are not carried


def test_utc_datetime_uses_the_standard_timestamp_and_offsets_use_ext_1() -> None:
    utc = CODEC.encode({"v": datetime(2024, 5, 1, 12, tzinfo=UTC)})
    assert utc == bytes.fromhex("81a176d6ff66322ec0")  # fixext 4, type -1, uint32 seconds
    plus = CODEC.encode({"v": datetime(2024, 5, 1, 14, tzinfo=tz(hours=2))})
    assert plus[3:5] == bytes([0xD8, EXT_DATETIME])
    assert struct.unpack(">Iqi", plus[5:]) == (0, 1714564800, 7200)
    # Same instant in a tz whose offset is zero: the standard timestamp, read back as UTC.
    zero = CODEC.encode({"v": datetime(2024, 5, 1, 12, tzinfo=tz(hours=0))})
    assert zero == utc
    assert roundtrip({"v": datetime(2024, 5, 1, 12, tzinfo=tz(hours=0))})["v"].tzinfo is UTC


def test_ext_type_codes() -> None:
    def ext_code(value: Any) -> int:
        (plain,) = msgpack.unpackb(CODEC.encode({"v": value}), raw=False).values()
        assert isinstance(plain, msgpack.ExtType)
        return int(plain.code)

    assert ext_code(date(2024, 5, 1)) == EXT_DATE == 2
    assert ext_code(UUID(int=1)) == EXT_UUID == 3
    assert ext_code(Decimal("1.5")) == EXT_DECIMAL == 4
    assert ext_code(datetime(2024, 5, 1, tzinfo=tz(hours=1))) == EXT_DATETIME == 1


def test_nested_payload_round_trips_and_tuples_become_lists() -> None:
    when = datetime(2024, 5, 1, 12, 0, 0, 7, tzinfo=tz(hours=9))
    payload = {
        "user": {"id": UUID(int=42), "tags": ("a", "b"), "born": date(1990, 1, 2)},
        "items": [{"sku": "x", "price": Decimal("9.99"), "at": when}, [], {}],
        "raw": bytearray(b"\x01\x02"),
        "view": memoryview(b"\x03"),
        "n": None,
    }
    assert roundtrip(payload) == {
        "user": {"id": UUID(int=42), "tags": ["a", "b"], "born": date(1990, 1, 2)},
        "items": [{"sku": "x", "price": Decimal("9.99"), "at": when}, [], {}],
        "raw": b"\x01\x02",
        "view": b"\x03",
        "n": None,
    }


def test_key_order_is_kept() -> None:
    payload = {"z": 1, "a": 2, "m": 3}
    assert list(roundtrip(payload)) == ["z", "a", "m"]


def test_mappings_and_subclasses_are_encoded_as_their_base_type() -> None:
    class Tag(str):
        pass

    payload: Any = MappingProxyType({"d": OrderedDict(a=1), Tag("k"): Tag("v"), "b": True})
    assert roundtrip(payload) == {"d": {"a": 1}, "k": "v", "b": True}


def test_depth_up_to_max_depth_round_trips() -> None:
    # The top-level map is depth 1, so max_depth - 1 nested lists fit.
    payload = {"v": nested_lists(31)}
    assert roundtrip(payload) == payload
    deep = MsgpackCodec(max_depth=MAX_DEPTH_LIMIT)
    payload = {"v": nested_lists(MAX_DEPTH_LIMIT - 1)}
    assert roundtrip(payload, deep) == payload


def test_empty_payload() -> None:
    assert CODEC.encode({}) == b"\x80"
    assert CODEC.decode(b"\x80") == {}


def test_content_type() -> None:
    assert MsgpackCodec.content_type == CONTENT_TYPE == "application/vnd.msgpack"
    assert CODEC.content_type in ACCEPTED_CONTENT_TYPES
    assert {
        "application/vnd.msgpack",
        "application/msgpack",
        "application/x-msgpack",
    } == ACCEPTED_CONTENT_TYPES


# -- interop: any msgpack library reads the value ----------------------------------------


def test_plain_msgpack_reads_the_value_as_a_map() -> None:
    payload = {
        "user_id": 42,
        "email": "a@example.com",
        "score": 1.5,
        "blob": b"\x00",
        "tags": ["a", "b"],
        "meta": {"ok": True, "none": None},
        "at": datetime(2024, 5, 1, 12, tzinfo=UTC),
        "local": datetime(2024, 5, 1, 14, tzinfo=tz(hours=2)),
        "id": UUID(int=7),
    }
    plain = msgpack.unpackb(CODEC.encode(payload), raw=False)
    simple = ("user_id", "email", "score", "blob", "tags", "meta")
    assert {key: plain[key] for key in simple} == {key: payload[key] for key in simple}
    assert plain["at"] == msgpack.Timestamp(1714564800)  # the standard type, understood natively
    assert plain["local"] == msgpack.ExtType(1, struct.pack(">Iqi", 0, 1714564800, 7200))
    assert plain["id"] == msgpack.ExtType(3, UUID(int=7).bytes)


def test_plain_msgpack_with_an_ext_hook_reads_every_type() -> None:
    """The few lines another Python program needs to read the value (docs/wire-format.md)."""

    def ext_hook(code: int, data: bytes) -> Any:
        if code == 1:
            ns, seconds, offset = struct.unpack(">Iqi", data)
            local = datetime(1970, 1, 1) + timedelta(
                seconds=seconds + offset, microseconds=ns // 1000
            )
            return local.replace(tzinfo=timezone(timedelta(seconds=offset)))
        if code == 2:
            return date(*struct.unpack(">HBB", data))
        if code == 3:
            return UUID(bytes=data)
        if code == 4:
            return Decimal(data.decode("ascii"))
        return msgpack.ExtType(code, data)

    payload = {
        "at": datetime(2024, 5, 1, 12, 0, 0, 5, tzinfo=UTC),
        "local": datetime(2024, 5, 1, 14, 0, 0, 5, tzinfo=tz(hours=2)),
        "day": date(2024, 5, 1),
        "id": UUID(int=7),
        "price": Decimal("9.90"),
    }
    value = CODEC.encode(payload)
    assert msgpack.unpackb(value, raw=False, timestamp=3, ext_hook=ext_hook) == payload


# -- encode errors ------------------------------------------------------------------------


class Opaque:
    pass


ENCODE_ERRORS: list[tuple[Any, str]] = [
    ({"a": {1, 2}}, r"^payload\['a'\]: unsupported type set$"),
    ({"user": {"tags": frozenset()}}, r"^payload\['user'\]\['tags'\]: unsupported type frozenset$"),
    ({"a": [1, Opaque()]}, r"^payload\['a'\]\[1\]: unsupported type .*Opaque$"),
    ({"a": 1j}, r"^payload\['a'\]: unsupported type complex$"),
    ({"a": timedelta(1)}, r"^payload\['a'\]: unsupported type datetime.timedelta$"),
    (
        {"a": MappingProxyType({})},
        r"^payload\['a'\]: unsupported type mappingproxy \(use a dict\)$",
    ),
    ({"a": msgpack.ExtType(9, b"")}, r"^payload\['a'\]: unsupported type .*ExtType .*not allowed"),
    ({"a": msgpack.Timestamp(0)}, r"^payload\['a'\]: unsupported type .*Timestamp .*not allowed"),
    ({1: "x"}, r"^payload: key 1 is of type int; keys must be str$"),
    (
        {"a": {"b": {b"k": 1}}},
        r"^payload\['a'\]\['b'\]: key b'k' is of type bytes; keys must be str$",
    ),
    ({"a": [({None: 1},)]}, r"^payload\['a'\]\[0\]\[0\]: key None is of type NoneType"),
    (
        {"at": datetime(2024, 5, 1)},
        r"^payload\['at'\]: naive datetime \(no UTC offset\); use a timezone-aware datetime",
    ),
    (
        {"at": datetime(2024, 5, 1, tzinfo=tz(microseconds=500))},
        r"^payload\['at'\]: datetime UTC offset .* is not a whole number of seconds$",
    ),
    ({"n": 2**64}, r"^payload\['n'\]: int out of the 64-bit range \[-2\*\*63, 2\*\*64 - 1\]$"),
    ({"n": [-(2**63) - 1]}, r"^payload\['n'\]\[0\]: int out of the 64-bit range"),
    ({"n": 10**100}, r"^payload\['n'\]: int out of the 64-bit range"),
    (
        {"s": "a\ud800"},
        r"^payload\['s'\]: str is not valid Unicode \(surrogates not allowed at index 1\)$",
    ),
    ({"d": Decimal("NaN")}, r"^payload\['d'\]: Decimal NaN is not finite; only finite decimals"),
    ({"d": Decimal("-Infinity")}, r"^payload\['d'\]: Decimal -Infinity is not finite"),
    ({"d": Decimal("sNaN")}, r"^payload\['d'\]: Decimal sNaN is not finite"),
    (
        {"v": nested_lists(32)},
        r"^payload\['v'\](\[0\]){11}\[\.\.\.\]: nesting deeper than max_depth=32$",
    ),
    ({"v": {"w": nested_lists(31)}}, r"nesting deeper than max_depth=32$"),
]


@pytest.mark.parametrize(("payload", "message"), ENCODE_ERRORS, ids=lambda v: str(v)[:30])
def test_encode_error_names_the_field(payload: Any, message: str) -> None:
    with pytest.raises(EncodeError, match=message):
        CODEC.encode(payload)


def test_encode_error_is_a_value_error() -> None:
    assert issubclass(EncodeError, ValueError)
    assert issubclass(DecodeError, ValueError)


def test_payload_that_is_not_a_mapping() -> None:
    with pytest.raises(EncodeError, match=r"^payload: must be a mapping with str keys, not list$"):
        CODEC.encode([("a", 1)])  # type: ignore[arg-type]


def test_self_referencing_payload_is_an_encode_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(EncodeError, match=r"nesting deeper than max_depth"):
        CODEC.encode({"loop": loop})
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    with pytest.raises(EncodeError, match=r"nesting deeper than max_depth"):
        CODEC.encode(cyclic)


def test_shared_references_that_blow_up_are_bounded() -> None:
    value: list[Any] = ["x" * 100]
    for _ in range(30):
        value = [value, value]  # 2**30 leaves, but only 31 distinct lists
    with pytest.raises(EncodeError, match=r"larger than max_size"):
        CODEC.encode({"v": value})


def test_encoded_size_over_max_size() -> None:
    small = MsgpackCodec(max_size=100)
    small.encode({"s": "x" * 90})
    with pytest.raises(
        EncodeError, match=r"^payload: encoded size 101 bytes exceeds max_size=100$"
    ):
        small.encode({"s": "x" * 96})
    # The default is librdkafka's message.max.bytes: one limit for the codec and the producer.
    with pytest.raises(EncodeError, match=r"exceeds max_size=1000000"):
        CODEC.encode({"b": b"\x00" * 1_000_000})


@pytest.mark.parametrize(
    ("limits", "payload", "message"),
    [
        (
            {"max_str_len": 8},
            {"a": ["ok", "\u20ac" * 3]},
            r"^payload\['a'\]\[1\]: str of 9 UTF-8 bytes exceeds max_str_len=8$",
        ),
        (
            {"max_bin_len": 2},
            {"a": {"b": b"abc"}},
            r"^payload\['a'\]\['b'\]: bytes of length 3 exceeds max_bin_len=2$",
        ),
        (
            {"max_array_len": 3},
            {"a": (1, 2, 3, 4)},
            r"^payload\['a'\]: array of 4 items exceeds max_array_len=3$",
        ),
        (
            {"max_map_len": 2},
            {"a": 1, "b": 2, "c": 3},
            r"^payload: map of 3 entries exceeds max_map_len=2$",
        ),
        (
            {"max_ext_len": 16},
            {"d": Decimal("1." + "0" * 20)},
            r"^payload\['d'\]: decimal.Decimal of 22 bytes exceeds max_ext_len=16$",
        ),
    ],
)
def test_per_item_limits_apply_at_encode_and_decode(
    limits: dict[str, int], payload: dict[str, Any], message: str
) -> None:
    strict = MsgpackCodec(**limits)
    with pytest.raises(EncodeError, match=message):
        strict.encode(payload)
    with pytest.raises(DecodeError, match=r"declared length too large|exceeds|incomplete"):
        strict.decode(CODEC.encode(payload))


def test_values_at_the_per_item_limits_pass() -> None:
    strict = MsgpackCodec(max_str_len=3, max_bin_len=3, max_array_len=3, max_map_len=3)
    payload = {"s": "abc", "b": b"abc", "l": [1, 2, 3]}
    assert roundtrip(payload, strict) == payload


def test_packer_is_clean_after_a_failed_encode() -> None:
    codec = MsgpackCodec()
    with pytest.raises(EncodeError):
        codec.encode({"a": "x" * 1000, "b": {1, 2}})
    assert codec.encode({"a": 1}) == b"\x81\xa1a\x01"


def test_encode_and_decode_from_many_threads() -> None:
    codec = MsgpackCodec()
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(300):
                payload = {"n": n, "i": i, "s": "x" * (i % 50), "l": [n] * (i % 7)}
                assert codec.decode(codec.encode(payload)) == payload
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_size": 0},
        {"max_depth": 0},
        {"max_depth": MAX_DEPTH_LIMIT + 1},
        {"max_str_len": -1},
        {"max_map_len": 0},
        {"max_ext_len": 15},
    ],
)
def test_bad_limits_are_value_errors(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        MsgpackCodec(**kwargs)


# -- decode errors ------------------------------------------------------------------------

K = b"\x81\xa1a"  # {"a": <value follows>}

DECODE_ERRORS: list[tuple[bytes, str]] = [
    (b"", r"^empty value"),
    (b"\xc1", r"^malformed msgpack: invalid type byte"),
    (K, r"^malformed msgpack: truncated"),
    (K + b"\xa5ab", r"^malformed msgpack: truncated"),
    (msgpack.packb({"a": [1, 2, 3]})[:-1], r"^malformed msgpack: truncated"),
    (b"\x80\xc0", r"^1 trailing bytes after the first msgpack value$"),
    (b"\x80\x80\x80", r"^2 trailing bytes"),
    (b"\x90", r"^top level is list, expected a msgpack map$"),
    (b"\xc0", r"^top level is NoneType, expected a msgpack map$"),
    (b"\xa1a", r"^top level is str"),
    (b"\x81\xc4\x01a\x01", r"^payload: map key b'a' is bin; keys must be str$"),
    (b"\x81\x01\x01", r"^map key of type int; keys must be str$"),
    (K + b"\x81\xc0\x01", r"^map key of type NoneType; keys must be str$"),
    (K + b"\x92\x01\x81\xc4\x01b\x01", r"^payload\['a'\]\[1\]: map key b'b' is bin"),
    (K + b"\xa2\xc3\x28", r"^malformed msgpack: a str is not valid UTF-8"),
    (K + b"\xdb\xff\xff\xff\xff", r"^malformed msgpack"),
    (K + b"\xc6\xff\xff\xff\xff", r"^malformed msgpack"),
    (K + b"\xdd\xff\xff\xff\xff", r"^malformed msgpack: declared length too large"),
    (b"\xdf\xff\xff\xff\xff", r"^malformed msgpack: declared length too large"),
    (K + b"\xc9\xff\xff\xff\xff\x05", r"^malformed msgpack"),
    (
        K + b"\x91" * 32 + b"\xc0",
        r"^payload\['a'\](\[0\]){11}\[\.\.\.\]: nesting deeper than max_depth=32$",
    ),
    (K + b"\x91" * 100_000 + b"\xc0", r"^nesting deeper than max_depth=32$"),
    (K + b"\x81\xa1a" * 100_000 + b"\xc0", r"^nesting deeper than max_depth=32$"),
    (b"\x91" * 100_000, r"^nesting deeper|^malformed msgpack"),
    (K + b"\xd4\x05\x00", r"^unknown extension type 5$"),
    (K + b"\xd4\x7f\x00", r"^unknown extension type 127$"),
    (K + b"\xd4\xfe\x00", r"^unknown extension type -2$"),
    (K + b"\xd4\x80\x00", r"^unknown extension type -128$"),
    (K + b"\xd5\xff\x00\x00", r"^malformed extension type -1 \(timestamp\)"),
    (K + b"\xc7\x0c\xff" + struct.pack(">Iq", 10**9, 0), r"^malformed extension type -1"),
    (K + b"\xc7\x0c\xff" + struct.pack(">Iq", 0, 2**40), r"^malformed extension type -1"),
    (K + b"\xc7\x0c\xff" + struct.pack(">Iq", 0, -(2**40)), r"^malformed extension type -1"),
    (K + b"\xd7\x01" + b"\x00" * 8, r"^malformed extension type 1: 8 bytes, expected 16$"),
    (
        K + b"\xd8\x01" + struct.pack(">Iqi", 10**9, 0, 60),
        r"^malformed extension type 1: nanoseconds",
    ),
    (
        K + b"\xd8\x01" + struct.pack(">Iqi", 0, 0, -86400),
        r"^malformed extension type 1: UTC offset",
    ),
    (
        K + b"\xd8\x01" + struct.pack(">Iqi", 0, 2**62, 60),
        r"^malformed extension type 1: datetime out of range",
    ),
    (
        K + b"\xd8\x01" + struct.pack(">Iqi", 0, -(2**63), 60),
        r"^malformed extension type 1: datetime out of range",
    ),
    (K + b"\xd5\x02\x07\xe8", r"^malformed extension type 2: 2 bytes, expected 4$"),
    (
        K + b"\xd6\x02" + struct.pack(">HBB", 2023, 2, 29),
        r"^malformed extension type 2: day is out of range",
    ),
    (
        K + b"\xd6\x02" + struct.pack(">HBB", 10000, 1, 1),
        r"^malformed extension type 2: year 10000",
    ),
    (K + b"\xd7\x03" + b"\x00" * 8, r"^malformed extension type 3: 8 bytes, expected 16$"),
    (K + b"\xc7\x00\x04", r"^malformed extension type 4: not a finite decimal"),
    (K + b"\xc7\x03\x04NaN", r"^malformed extension type 4: not a finite decimal"),
    (K + b"\xc7\x04\x04-inf", r"^malformed extension type 4: not a finite decimal"),
    (K + b"\xc7\x05\x04 1.5 ", r"^malformed extension type 4: not a finite decimal"),
    (K + b"\xc7\x05\x041_000", r"^malformed extension type 4: not a finite decimal"),
    (K + b"\xc7\x04\x04\xd9\xa1\xd9\xa2", r"^malformed extension type 4: not a finite decimal"),
    (
        K + b"\xc7\x19\x041E+99999999999999999999999",
        r"^malformed extension type 4: decimal out of range",
    ),
]


@pytest.mark.parametrize(("data", "message"), DECODE_ERRORS, ids=lambda v: repr(v)[:30])
def test_decode_error_says_why(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        CODEC.decode(data)


def test_decode_rejects_oversized_input_before_unpacking() -> None:
    small = MsgpackCodec(max_size=10)
    value = CODEC.encode({"s": "x" * 20})
    for data in (value, bytearray(value), memoryview(value)):
        with pytest.raises(DecodeError, match=r"^value of 24 bytes exceeds max_size=10$"):
            small.decode(data)  # type: ignore[arg-type]


def test_decode_accepts_bytearray_and_memoryview() -> None:
    value = CODEC.encode({"a": 1})
    assert CODEC.decode(bytearray(value)) == {"a": 1}  # type: ignore[arg-type]
    assert CODEC.decode(memoryview(value)) == {"a": 1}  # type: ignore[arg-type]


@pytest.mark.parametrize("data", [None, "\x80", 128, [0x80]])
def test_decode_of_a_non_bytes_value(data: Any) -> None:
    with pytest.raises(DecodeError, match=r"^value must be bytes, not "):
        CODEC.decode(data)


def test_decode_enforces_a_lower_max_depth() -> None:
    shallow = MsgpackCodec(max_depth=2)
    assert shallow.decode(CODEC.encode({"a": [1]})) == {"a": [1]}
    with pytest.raises(
        DecodeError, match=r"^payload\['a'\]\[0\]: nesting deeper than max_depth=2$"
    ):
        shallow.decode(CODEC.encode({"a": [[1]]}))
    with pytest.raises(
        EncodeError, match=r"^payload\['a'\]\[0\]: nesting deeper than max_depth=2$"
    ):
        shallow.encode({"a": [[1]]})


# -- properties ---------------------------------------------------------------------------

offsets = st.integers(min_value=-86399, max_value=86399).map(
    lambda s: timezone(timedelta(seconds=s))
)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(),
    st.binary(),
    st.datetimes(timezones=st.one_of(st.just(UTC), offsets)),
    st.dates(),
    st.uuids(),
    st.decimals(allow_nan=False, allow_infinity=False),
)
values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
        st.dictionaries(st.text(max_size=10), children, max_size=5),
    ),
    max_leaves=20,
)
payloads = st.dictionaries(st.text(max_size=10), values, max_size=8)


def normalized(value: Any) -> Any:
    """Return what a value decodes as: tuples become lists."""
    if isinstance(value, dict):
        return {key: normalized(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalized(item) for item in value]
    return value


def assert_identical(actual: Any, expected: Any) -> None:
    assert type(actual) is type(expected)
    if isinstance(expected, dict):
        assert list(actual) == list(expected)
        for key in expected:
            assert_identical(actual[key], expected[key])
    elif isinstance(expected, list):
        assert len(actual) == len(expected)
        for got, want in zip(actual, expected, strict=True):
            assert_identical(got, want)
    else:
        assert actual == expected
        if isinstance(expected, datetime):
            assert actual.utcoffset() == expected.utcoffset()
        if isinstance(expected, Decimal):
            assert actual.as_tuple() == expected.as_tuple()
        if isinstance(expected, float):
            assert math.copysign(1, actual) == math.copysign(1, expected)


@given(payloads)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_every_supported_payload_round_trips(payload: dict[str, Any]) -> None:
    assert_identical(roundtrip(payload), normalized(payload))


@given(payloads)
def test_plain_msgpack_reads_every_encoded_payload(payload: dict[str, Any]) -> None:
    plain = msgpack.unpackb(CODEC.encode(payload), raw=False, strict_map_key=False)
    assert list(plain) == list(payload)


def assert_decodes_or_decode_error(data: bytes) -> None:
    try:
        result = CODEC.decode(data)
    except DecodeError as exc:
        assert str(exc)
    else:
        assert type(result) is dict


@given(st.binary(max_size=512))
@settings(max_examples=1000)
def test_random_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    assert_decodes_or_decode_error(data)


@given(st.binary(max_size=64))
@settings(max_examples=1000)
def test_random_bytes_inside_a_map_decode_or_raise_decode_error(data: bytes) -> None:
    assert_decodes_or_decode_error(K + data)


@given(
    st.sampled_from([-128, -2, -1, 0, 1, 2, 3, 4, 5, 127]),
    st.one_of(st.binary(max_size=24), st.from_regex(rb"\A[-+0-9.eE]{0,30}\Z")),
)
@settings(max_examples=1000)
def test_random_extension_payloads_decode_or_raise_decode_error(code: int, data: bytes) -> None:
    header = bytes([0xC7, len(data), code & 0xFF])
    assert_decodes_or_decode_error(K + header + data)


@given(payloads, st.data())
@settings(max_examples=300)
def test_corrupted_values_decode_or_raise_decode_error(
    payload: dict[str, Any], data: st.DataObject
) -> None:
    value = bytearray(CODEC.encode(payload))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        index = data.draw(st.integers(min_value=0, max_value=len(value) - 1))
        value[index] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(value)))
    assert_decodes_or_decode_error(bytes(value[:cut]))
    assert_decodes_or_decode_error(bytes(value))
