"""Wire-format test vectors: tests/bridge/vectors.json, checked in both directions.

The vectors are the conformance suite for other implementations (see docs/wire-format.md).
Each ``valid`` entry holds a payload in a small typed JSON form and the exact value bytes:
``encode(payload)`` must give those bytes (unless ``decode_only``: a valid value another
encoder may write, which ours never does) and ``decode(bytes)`` must give the payload back,
with the same types and, for datetimes, the same UTC offset. Each ``invalid`` entry is a
value that every decoder must reject.

Typed JSON: ``{"$datetime": "<ISO 8601 with offset>"}``, ``{"$date": "YYYY-MM-DD"}``,
``{"$uuid": "<canonical text>"}``, ``{"$decimal": "<text>"}``, ``{"$bytes": "<hex>"}``;
every other JSON value stands for itself (a JSON number with a fraction or an exponent is a
float, one without is an int).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import msgpack
import pytest

from bridge._codec import DecodeError, MsgpackCodec

VECTORS = json.loads((Path(__file__).parent / "vectors.json").read_text(encoding="utf-8"))
CODEC = MsgpackCodec()

_TYPED: dict[str, Callable[[str], Any]] = {
    "$datetime": datetime.fromisoformat,
    "$date": date.fromisoformat,
    "$uuid": UUID,
    "$decimal": Decimal,
    "$bytes": bytes.fromhex,
}


def from_json(value: Any) -> Any:
    """Return the Python payload value that a typed JSON value stands for."""
    if isinstance(value, dict):
        if len(value) == 1:
            ((key, text),) = value.items()
            if key in _TYPED:
                return _TYPED[key](text)
        return {key: from_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_json(item) for item in value]
    return value


def assert_same(actual: Any, expected: Any, path: str = "payload") -> None:
    """Assert equal values of the same types; datetimes also with the same UTC offset."""
    assert type(actual) is type(expected), f"{path}: {type(actual)} != {type(expected)}"
    if isinstance(expected, dict):
        assert list(actual) == list(expected), f"{path}: keys differ"
        for key in expected:
            assert_same(actual[key], expected[key], f"{path}[{key!r}]")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), f"{path}: lengths differ"
        for index, (got, want) in enumerate(zip(actual, expected, strict=True)):
            assert_same(got, want, f"{path}[{index}]")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"
        if isinstance(expected, datetime):
            assert actual.utcoffset() == expected.utcoffset(), f"{path}: offsets differ"
        if isinstance(expected, Decimal):
            assert actual.as_tuple() == expected.as_tuple(), f"{path}: digits differ"


def _ids(entries: list[dict[str, Any]]) -> list[str]:
    return [entry["name"] for entry in entries]


def test_vectors_file_is_well_formed() -> None:
    names = _ids(VECTORS["valid"]) + _ids(VECTORS["invalid"])
    assert len(names) == len(set(names)), "vector names must be unique"
    assert len(VECTORS["valid"]) >= 15
    assert len(VECTORS["invalid"]) >= 15
    for entry in VECTORS["valid"] + VECTORS["invalid"]:
        bytes.fromhex(entry["value_hex"])
        assert entry.get("description"), entry["name"]


@pytest.mark.parametrize("entry", VECTORS["valid"], ids=_ids(VECTORS["valid"]))
def test_valid_vector_decodes_to_payload(entry: dict[str, Any]) -> None:
    assert_same(CODEC.decode(bytes.fromhex(entry["value_hex"])), from_json(entry["payload"]))


@pytest.mark.parametrize(
    "entry",
    [entry for entry in VECTORS["valid"] if not entry.get("decode_only")],
    ids=_ids([entry for entry in VECTORS["valid"] if not entry.get("decode_only")]),
)
def test_valid_vector_encodes_to_value(entry: dict[str, Any]) -> None:
    assert CODEC.encode(from_json(entry["payload"])).hex() == entry["value_hex"]


@pytest.mark.parametrize("entry", VECTORS["valid"], ids=_ids(VECTORS["valid"]))
def test_valid_vector_is_plain_msgpack(entry: dict[str, Any]) -> None:
    """Any msgpack library reads every valid value as a map, ext types as opaque values."""
    plain = msgpack.unpackb(bytes.fromhex(entry["value_hex"]), raw=False)
    assert isinstance(plain, dict)
    assert list(plain) == list(entry["payload"])


@pytest.mark.parametrize("entry", VECTORS["invalid"], ids=_ids(VECTORS["invalid"]))
def test_invalid_vector_is_a_decode_error(entry: dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        CODEC.decode(bytes.fromhex(entry["value_hex"]))


# -- JSON data (docs/wire-format.md#json-data) ----------------------------------------------

JSON_VECTORS = json.loads((Path(__file__).parent / "vectors-json.json").read_text("utf-8"))


@pytest.mark.parametrize("vector", JSON_VECTORS["valid"], ids=_ids(JSON_VECTORS["valid"]))
def test_json_vector_is_written_exactly_and_read_back(vector: dict[str, Any]) -> None:
    from bridge._json import JsonCodec

    codec = JsonCodec()
    assert codec.encode(from_json(vector["payload"])).decode() == vector["value"]
    assert codec.decode(vector["value"].encode()) == json.loads(vector["value"])


@pytest.mark.parametrize("vector", JSON_VECTORS["invalid"], ids=_ids(JSON_VECTORS["invalid"]))
def test_invalid_json_vector_is_rejected(vector: dict[str, Any]) -> None:
    from bridge._json import JsonCodec

    with pytest.raises(DecodeError):
        JsonCodec().decode(vector["value"].encode())
