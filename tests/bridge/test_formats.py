"""Readers and writers of the wire formats (bridge._formats) and the JSON codec
(bridge._json), without a broker: what each accepts, the reason for what it refuses, and
that arbitrary input only ever yields a payload or a DecodeError."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import ConfigError, DecodeError, EncodeError, MsgpackCodec, Route
from bridge._formats import MAX_BATCH_EVENTS, Batched, Readers, Writers
from bridge._json import ACCELERATED, JsonCodec, restore
from bridge._transport import Record
from eventbus import event

CE = [("ce_specversion", b"1.0"), ("ce_id", b"id-1"), ("ce_source", b"src"), ("ce_type", b"a.b")]


def readers(*routes: Route, schema: Any = None) -> Readers:
    return Readers(routes or (Route.inbound("**", topic="t"),), MsgpackCodec(), lambda name: schema)


def rec(value: bytes | None, headers: list[tuple[str, bytes]], **kw: Any) -> Record:
    return Record(
        kw.get("topic", "t"), 0, kw.get("offset", 5), None, value, headers, 1_700_000_000_000
    )


def read_all(r: Readers, record: Record) -> tuple[Any, dict[str, Any]]:
    envelope, payload = r.read(record)
    return envelope, payload if payload is not None else r.decode(record, envelope)


# -- the JSON codec -----------------------------------------------------------------------


@event("typed.thing")
@dataclasses.dataclass
class Thing:
    at: dt.datetime
    day: dt.date
    ident: uuid.UUID
    amount: Decimal
    blob: bytes
    maybe: dt.datetime | None = None
    many: list[uuid.UUID] = dataclasses.field(default_factory=list)
    text: str = "2026-01-01"  # a str field that looks like a date stays a str


def test_json_mapping_of_the_types_json_lacks() -> None:
    codec = JsonCodec()
    at = dt.datetime(2026, 12, 1, 9, 30, 0, 250_000, tzinfo=dt.UTC)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    data = codec.encode(
        {
            "at": at,
            "day": dt.date(2026, 12, 1),
            "ident": ident,
            "amount": Decimal("-1.50"),
            "blob": b"\x00\xff",
            "plus2": at.astimezone(dt.timezone(dt.timedelta(hours=2))),
        }
    )
    assert json.loads(data) == {
        "at": "2026-12-01T09:30:00.250000Z",
        "day": "2026-12-01",
        "ident": "12345678-1234-5678-1234-567812345678",
        "amount": "-1.50",
        "blob": "AP8=",
        "plus2": "2026-12-01T11:30:00.250000+02:00",
    }


def test_restore_turns_json_text_back_into_field_types() -> None:
    thing = Thing(
        dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        dt.date(2026, 1, 2),
        uuid.uuid4(),
        Decimal("3.14"),
        b"\x01\x02",
        dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
        [uuid.uuid4()],
    )
    codec = JsonCodec()
    payload = restore(Thing, codec.decode(codec.encode(dataclasses.asdict(thing))))
    assert Thing(**payload) == thing
    # Text that does not parse stays text (validation then names the field).
    assert restore(Thing, {"at": "yesterday", "blob": "!!"}) == {"at": "yesterday", "blob": "!!"}
    # A naive time is not a datetime of this schema's kind: left alone.
    assert restore(Thing, {"at": "2026-01-01T00:00:00"})["at"] == "2026-01-01T00:00:00"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"x": float("nan")}, "Out of range float"),
        ({1: "x"}, "keys must be str"),
        ({"x": {2: 1}}, "keys must be str"),
        ({"x": dt.datetime(2026, 1, 1)}, "naive datetime"),
        ({"x": Decimal("NaN")}, "not finite"),
        ({"x": {1, 2}}, "unsupported type set"),
        ({"x": [[[[[[]]]]]]}, "nesting deeper than max_depth=4"),
        ({"x": "y" * 100}, "exceeds max_size=64"),
    ],
)
def test_json_encode_refuses_with_a_reason(payload: Any, reason: str) -> None:
    with pytest.raises(EncodeError, match=reason):
        JsonCodec(max_size=64, max_depth=4).encode(payload)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty value"),
        (b"[1]", "top level is a JSON array, expected a JSON object"),
        (b'"x"', "top level is a JSON string"),
        (b'{"a": 1} x', "malformed JSON: Extra data"),
        (b'{"a": NaN}', "NaN is not a JSON number"),
        (b'{"a": Infinity}', "Infinity is not a JSON number"),
        (b'{"a": "\xff"}', "not UTF-8"),
        (b'{"a": [[[[[1]]]]]}', "nesting deeper than max_depth=4"),
        (b"[" * 100_000, "nesting deeper|malformed JSON"),
        (b'{"a": ' + b"9" * 5000 + b"}", "malformed JSON"),  # int_max_str_digits
        (b'{"a": "' + b"x" * 200 + b'"}', "exceeds max_size=128"),
    ],
)
def test_json_decode_refuses_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        JsonCodec(max_size=128 if len(data) < 1000 else 1 << 20, max_depth=4).decode(data)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_json_round_trip(payload: dict[str, Any]) -> None:
    codec = JsonCodec(max_depth=64)
    assert codec.decode(codec.encode(payload)) == payload


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_json_decode_of_arbitrary_bytes_is_a_dict_or_a_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        assert type(JsonCodec(max_depth=8).decode(data)) is dict


# The json extra (orjson encodes, msgspec decodes) against the stdlib: the same bytes,
# values and reasons. make test installs the extra.
with_extra = pytest.mark.skipif(not ACCELERATED, reason="the json extra is not installed")
any_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text()
    | st.floats()
    | st.datetimes(timezones=st.none() | st.timezones())
    | st.dates()
    | st.uuids()
    | st.decimals()
    | st.binary(max_size=8)
    | st.sampled_from([1e-5, 1.5e-7, -2.5e-10, 1e16, 1e22, 5e-324, 2**64, -(2**63) - 1]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


def outcome(call: Any, *args: Any) -> Any:
    try:
        return ("ok", call(*args))
    except (DecodeError, EncodeError) as exc:
        return ("error", str(exc))


@with_extra
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(max_size=8), any_values, max_size=6))
def test_the_json_extra_writes_the_stdlib_bytes(payload: dict[str, Any]) -> None:
    fast, stdlib = JsonCodec(max_depth=6), JsonCodec(max_depth=6, accelerate=False)
    assert outcome(fast.encode, payload) == outcome(stdlib.encode, payload)


@with_extra
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.binary(max_size=100)
    | st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(st.text(max_size=5), json_values))
    | st.sampled_from(
        [b'{"a": 1e400}', b'{"a": "\\ud800"}', b'{"a": NaN}', b'{"a": %d}' % 2**80, b"[1, 2]"]
    )
)
def test_the_json_extra_reads_the_stdlib_values(data: bytes) -> None:
    fast, stdlib = JsonCodec(max_depth=6), JsonCodec(max_depth=6, accelerate=False)
    assert outcome(fast.decode, data) == outcome(stdlib.decode, data)


# -- the cloudevents reader: binary mode --------------------------------------------------


def test_binary_mode_data_by_content_type_or_by_its_look() -> None:
    r = readers()
    as_msgpack = msgpack.packb({"n": 1})
    as_json = b'{"n": 1}'
    for value, headers in [
        (as_msgpack, [*CE, ("content-type", b"application/vnd.msgpack")]),
        (as_json, [*CE, ("content-type", b"application/json")]),
        (as_json, [*CE, ("content-type", b"application/json; charset=utf-8")]),
        (as_msgpack, CE),  # no content-type: one msgpack map
        (as_json, CE),  # no content-type: not msgpack, one JSON object
    ]:
        envelope, payload = read_all(r, rec(value, headers))
        assert (envelope.id, envelope.type, payload) == ("id-1", "a.b", {"n": 1})


@pytest.mark.parametrize(
    ("value", "headers", "reason"),
    [
        (b"[1, 2]", CE, "neither one msgpack map .* nor one JSON object .*JSON array"),
        (b"\xc1", CE, "neither one msgpack map"),
        (msgpack.packb({"n": 1}), [*CE, ("content-type", b"application/json")], "malformed JSON"),
        (b'{"n": 1}', [*CE, ("content-type", b"application/vnd.msgpack")], "trailing bytes"),
        (b"{}", [*CE, ("content-type", b"text/plain")], "neither msgpack nor JSON"),
        (b'{"n": 1}', [], 'not a CloudEvent: no ce_specversion .* needs format="json"'),
        (
            b'{"n": 1}',
            [("content-type", b"application/json")],
            "not a CloudEvent: no ce_specversion",
        ),
    ],
)
def test_binary_mode_refusals_name_what_was_expected(
    value: bytes, headers: list[tuple[str, bytes]], reason: str
) -> None:
    with pytest.raises(DecodeError, match=reason):
        read_all(readers(), rec(value, headers))


def test_a_foreign_type_is_mapped_by_a_table_or_a_rule() -> None:
    table = Route.inbound(
        "user.*", topic="t", types={"com.example/user:registered": "user.registered"}
    )
    rule = Route.inbound(
        "audit.*", topic="t", types=lambda t: t.replace("com.example/audit:", "audit.")
    )
    r = readers(table, rule)
    headers = [*CE[:3], ("ce_type", b"com.example/user:registered")]
    assert r.read(rec(b"\x80", headers))[0].type == "user.registered"
    headers = [*CE[:3], ("ce_type", b"com.example/audit:logged")]
    assert r.read(rec(b"\x80", headers))[0].type == "audit.logged"
    headers = [*CE[:3], ("ce_type", b"org.other/thing")]
    assert r.read(rec(b"\x80", headers))[0].type == "org.other/thing"  # unrouted later


def test_json_data_of_a_typed_event_is_restored() -> None:
    r = readers(schema=Thing)
    ident = uuid.uuid4()
    value = json.dumps({"ident": str(ident), "amount": "2.5"}).encode()
    _, payload = read_all(r, rec(value, [*CE, ("content-type", b"application/json")]))
    assert payload == {"ident": ident, "amount": Decimal("2.5")}


# -- the cloudevents reader: structured mode ----------------------------------------------

STRUCTURED = [("content-type", b"application/cloudevents+json")]


def structured(**fields: Any) -> bytes:
    event_ = {"specversion": "1.0", "id": "e1", "source": "s", "type": "a.b", **fields}
    return json.dumps({k: v for k, v in event_.items() if v is not None}).encode()


def test_structured_mode() -> None:
    r = readers()
    envelope, payload = read_all(
        r, rec(structured(data={"n": 1}, subject="x", time="2026-01-01T00:00:00Z"), STRUCTURED)
    )
    assert (envelope.id, envelope.source, envelope.type, envelope.time) == (
        "e1",
        "s",
        "a.b",
        "2026-01-01T00:00:00Z",
    )
    assert payload == {"n": 1}
    assert envelope.extensions == {"subject": "x"}
    # data_base64 holding msgpack; no data at all is an empty payload.
    packed = base64.b64encode(msgpack.packb({"n": 2})).decode()
    value = structured(data_base64=packed, datacontenttype="application/vnd.msgpack")
    assert read_all(r, rec(value, STRUCTURED))[1] == {"n": 2}
    assert read_all(r, rec(structured(), STRUCTURED))[1] == {}
    # traceparent as the tracing extension, and our own origin extension
    value = structured(data={}, traceparent="00-ab-cd-01", eventbusorigin="bridge-1")
    envelope, _ = read_all(r, rec(value, STRUCTURED))
    assert envelope.traceparent == b"00-ab-cd-01" and envelope.origin == "bridge-1"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"[]", r"JSON array, expected a CloudEvent \(application/cloudevents\+json\)"),
        (structured(specversion="0.3"), "specversion is '0.3', expected '1.0'"),
        (structured(id=""), "attribute 'id' is missing"),
        (structured(type=None), "attribute 'type' is missing"),
        (structured(source=5), "attribute 'source' is missing or not a non-empty string"),
        (structured(data=[1]), "data is not a JSON object"),
        (structured(data="text"), "data is not a JSON object"),
        (structured(data={}, datacontenttype="text/xml"), "expected JSON data"),
        (structured(data_base64="!!"), "not valid base64"),
        (structured(data_base64="AA==", datacontenttype="image/png"), "neither msgpack nor JSON"),
    ],
)
def test_structured_refusals(value: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        read_all(readers(), rec(value, STRUCTURED))


# -- the json format ----------------------------------------------------------------------


def test_json_format_one_signal_and_the_offset_as_id() -> None:
    r = readers(Route.inbound("order.placed", topic="t", format="json"))
    envelope, payload = read_all(r, rec(b'{"order_id": 3}', [], offset=17))
    assert (envelope.type, envelope.id, payload) == ("order.placed", "t/0/17", {"order_id": 3})
    assert envelope.time == "2023-11-14T22:13:20+00:00"


def test_json_format_type_and_id_fields() -> None:
    route = Route.inbound(
        "order.*",
        topic="t",
        format="json",
        type_field="kind",
        id_field="event_id",
        types={"OrderPlaced": "order.placed"},
    )
    r = readers(route)
    value = b'{"kind": "OrderPlaced", "event_id": "e-9", "n": 1}'
    envelope, payload = read_all(r, rec(value, []))
    assert (envelope.type, envelope.id, payload) == (
        "order.placed",
        "e-9",
        {"event_id": "e-9", "n": 1},
    )
    with pytest.raises(DecodeError, match=r"field 'kind' .* is missing"):
        read_all(r, rec(b'{"n": 1}', []))
    with pytest.raises(DecodeError, match="expected a JSON object"):
        read_all(r, rec(msgpack.packb({"n": 1}), []))


def test_route_format_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="format must be one of"):
        Route.inbound("a.b", topic="t", format="xml")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="content_type applies to format 'cloudevents'"):
        Route.outbound("a.b", topic="t", format="json", content_type="application/json")
    with pytest.raises(ConfigError, match="type_field applies to format 'json'"):
        Route.inbound("a.b", topic="t", type_field="kind")
    with pytest.raises(ConfigError, match="json route without type_field carries one signal name"):
        Route.inbound("a.*", topic="t", format="json")
    with pytest.raises(ConfigError, match="invalid signal name"):
        Route.inbound("a.*", topic="t", types={"x": "not a name"})
    with pytest.raises(ConfigError, match="a topic has one format"):
        Readers(
            [Route.inbound("a.b", topic="t"), Route.inbound("c.d", topic="t", format="json")],
            MsgpackCodec(),
            lambda name: None,
        )


# -- every reader, arbitrary input --------------------------------------------------------

header_names = st.sampled_from(
    [
        "ce_specversion",
        "ce_id",
        "ce_source",
        "ce_type",
        "content-type",
        "ce_time",
        "traceparent",
        "ce_traceparent",
        "ce_subject",
        "eventbus-origin",
    ]
)
header_values = st.sampled_from(
    [
        b"1.0",
        b"a.b",
        b"application/json",
        b"application/cloudevents+json",
        b"application/cloudevents-batch+json",
        b"application/vnd.msgpack",
        b"",
        b"\xff",
    ]
) | st.binary(max_size=20)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["cloudevents", "json-one", "json-field", "go-micro"]),
    st.lists(st.tuples(header_names, header_values), max_size=8),
    st.binary(max_size=200)
    | st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(st.text(max_size=5), json_values))
    | st.builds(
        lambda d: structured(data=d).decode("utf-8").encode(),
        st.dictionaries(st.text(max_size=3), json_values),
    )
    | st.builds(
        lambda header, body: json.dumps(
            {"Header": header, "Body": base64.b64encode(body).decode()}
        ).encode(),
        st.dictionaries(st.text(max_size=3), st.text(max_size=3) | st.integers()),
        st.binary(max_size=30) | st.builds(lambda d: json.dumps(d).encode(), json_values),
    )
    | st.builds(
        lambda ds: b"[%s]" % b",".join(structured(data=d) for d in ds),
        st.lists(st.dictionaries(st.text(max_size=3), json_values) | json_values, max_size=3),
    ),
)
def test_every_reader_yields_a_payload_or_a_decode_error(
    kind: str, headers: list[tuple[str, bytes]], value: bytes
) -> None:
    route = {
        "cloudevents": Route.inbound("**", topic="t"),
        "json-one": Route.inbound("a.b", topic="t", format="json"),
        "json-field": Route.inbound("**", topic="t", format="json", type_field="type"),
        "go-micro": Route.inbound("a.b", topic="t", format="go-micro"),
    }[kind]
    r = readers(route, schema=Thing)
    try:
        envelope, payload = read_all(r, rec(value, headers))
    except DecodeError:
        return
    except Batched as batch:  # each event of a batch: a payload or a decode error
        assert len(batch.records) <= MAX_BATCH_EVENTS
        for record in batch.records:
            with contextlib.suppress(DecodeError):
                envelope, payload = read_all(r, record)
                assert type(payload) is dict and isinstance(envelope.id, str)
        return
    assert type(payload) is dict
    assert isinstance(envelope.id, str) and isinstance(envelope.type, str)


# -- the cloudevents reader: batch mode ---------------------------------------------------

BATCH = [("content-type", b"application/cloudevents-batch+json"), ("x-app", b"a")]


def test_a_batch_is_one_structured_record_per_event_in_order() -> None:
    r = readers()
    value = b"[%s, %s]" % (structured(id="e1", data={"n": 1}), structured(id="e2", data={"n": 2}))
    with pytest.raises(Batched) as caught:
        r.read(rec(value, BATCH, offset=9))
    first, second = caught.value.records
    for record in (first, second):
        assert (record.topic, record.partition, record.offset) == ("t", 0, 9)
        assert record.headers == [
            ("x-app", b"a"),
            ("content-type", b"application/cloudevents+json"),
        ]
    assert [read_all(r, x)[0].id for x in (first, second)] == ["e1", "e2"]
    assert [read_all(r, x)[1] for x in (first, second)] == [{"n": 1}, {"n": 2}]
    with pytest.raises(Batched) as caught:
        r.read(rec(b"[]", BATCH))
    assert caught.value.records == ()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{}", "top level is a JSON object, expected a JSON array of CloudEvents"),
        (b"[1]", "a batch item is not a JSON object"),
        (b"[" + b",".join([b"{}"] * (MAX_BATCH_EVENTS + 1)) + b"]", "at most 1000 per record"),
        (b"[" * 40 + b"]" * 40, "nesting deeper than max_depth"),
        (b"[{}", "malformed JSON"),
    ],
)
def test_batch_refusals_name_what_was_expected(value: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        readers().read(rec(value, BATCH))


# -- writers ------------------------------------------------------------------------------


def test_routes_of_one_format_share_a_writer_and_types_are_written_foreign() -> None:
    a = Route.outbound("x.*", topic="a")
    b = Route.outbound("x.*", topic="b", key="k")
    c = Route.outbound("x.*", topic="c", content_type="application/json", types={"X/y": "x.y"})
    writers = Writers([a, b, c], MsgpackCodec(), "svc", "origin")
    assert writers.of(a) is writers.of(b) is not writers.of(c)
    value, headers = writers.of(c).write(writers.type_of(c, "x.y"), {"n": 1})
    assert json.loads(value) == {"n": 1}
    assert dict(headers)["ce_type"] == b"X/y"
    assert dict(headers)["content-type"] == b"application/json"
