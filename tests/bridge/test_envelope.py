"""Reading the CloudEvents headers of inbound records (bridge._envelope.read_envelope).

Records written by a bridge share five of their seven headers with every other record of
the same producer and type; those are checked once and then looked up. These tests hold
the looked-up path to the same answers as the full check.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bridge import _envelope
from bridge._envelope import HeaderBuilder, envelope_of, read_envelope
from bridge._errors import DecodeError
from bridge._transport import Record


@pytest.fixture(autouse=True)
def _no_learned_layouts() -> Iterator[None]:
    saved = dict(_envelope._layouts)
    _envelope._layouts.clear()
    yield
    _envelope._layouts.clear()
    _envelope._layouts.update(saved)


def record(headers: list[tuple[str, bytes]]) -> Record:
    return Record("t", 0, 0, None, b"\x80", headers, None)


def full_check_fails(*_args: object) -> None:
    raise AssertionError("the full header check ran")


def test_second_record_of_a_producer_skips_the_full_check(monkeypatch: pytest.MonkeyPatch) -> None:
    builder = HeaderBuilder("orders", "origin-1")
    first = builder.build("order.placed")
    assert read_envelope(record(first)) == envelope_of(dict(first))
    second = builder.build("order.placed")
    monkeypatch.setattr(_envelope, "envelope_of", full_check_fails)
    envelope = read_envelope(record(second))
    assert envelope == (
        dict(second)["ce_id"].decode(),
        "orders",
        "order.placed",
        dict(second)["ce_time"].decode(),
        "origin-1",
        None,
        None,
        "msgpack",
        None,
    )


@pytest.mark.parametrize(
    ("bad_id", "why"),
    [(b"", "ce_id is missing or empty"), (b"\xff\xfe", "ce_id is not UTF-8")],
)
def test_a_learned_layout_still_checks_the_id(bad_id: bytes, why: str) -> None:
    builder = HeaderBuilder("orders", "origin-1")
    read_envelope(record(builder.build("order.placed")))
    headers = builder.build("order.placed")
    headers[1] = ("ce_id", bad_id)
    with pytest.raises(DecodeError, match=why):
        read_envelope(record(headers))


def test_headers_out_of_order_are_read_in_full() -> None:
    builder = HeaderBuilder("orders", "origin-1")
    read_envelope(record(builder.build("order.placed")))
    headers = builder.build("order.placed")
    headers[1], headers[4] = headers[4], headers[1]  # ce_time where ce_id was
    envelope = read_envelope(record(headers))
    assert envelope.id == dict(headers)["ce_id"].decode()
    assert envelope.time == dict(headers)["ce_time"].decode()


def test_a_repeated_header_is_never_learned() -> None:
    """Seven headers, but ce_type twice: the last one wins, every time."""
    headers = HeaderBuilder("orders", "origin-1").build("order.placed")
    headers[6] = ("ce_type", b"order.cancelled")
    for _ in range(2):
        assert read_envelope(record(headers)).type == "order.cancelled"
    assert not _envelope._layouts


def test_trace_context_is_read_in_full() -> None:
    builder = HeaderBuilder("orders", "origin-1")
    read_envelope(record(builder.build("order.placed")))
    headers = [*builder.build("order.placed"), ("traceparent", b"00-abc-def-01")]
    assert read_envelope(record(headers)).traceparent == b"00-abc-def-01"


def test_learned_layouts_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_envelope, "_CACHE_LIMIT", 3)
    for n in range(10):  # ten producers (origins) come and go
        headers = HeaderBuilder("orders", f"origin-{n}").build("order.placed")
        assert read_envelope(record(headers)).origin == f"origin-{n}"
        assert len(_envelope._layouts) <= 3


def test_json_content_types_are_read_as_json() -> None:
    base = [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_source", b"s"), ("ce_type", b"t")]
    for value in (
        b"application/json",
        b"application/json; charset=utf-8",
        b"text/json",
        b"application/vnd.user+json",
    ):
        assert envelope_of(dict([*base, ("content-type", value)])).content == _envelope.JSON
    assert envelope_of(dict(base)).content == _envelope.UNKNOWN
    with pytest.raises(DecodeError, match="'text/plain' is neither msgpack nor JSON"):
        envelope_of(dict([*base, ("content-type", b"text/plain")]))


def test_a_foreign_type_is_read_as_written() -> None:
    """Mapping a type to a signal name is the route's business (bridge._formats)."""
    headers = {
        "ce_specversion": b"1.0",
        "ce_id": b"1",
        "ce_source": b"s",
        "ce_type": b"com.example/user:registered",
    }
    assert envelope_of(headers).type == "com.example/user:registered"


def test_extensions_and_the_tracing_extension() -> None:
    headers = {
        "ce_specversion": b"1.0",
        "ce_id": b"1",
        "ce_source": b"s",
        "ce_type": b"t",
        "ce_subject": b"user/42",
        "ce_partitionkey": b"42",
        "ce_traceparent": b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "ce_tracestate": b"k=v",
    }
    envelope = envelope_of(headers)
    assert envelope.extensions is not None
    assert envelope.extensions["subject"] == "user/42"
    assert envelope.extensions["partitionkey"] == "42"
    assert envelope.traceparent == headers["ce_traceparent"]
    assert envelope.tracestate == b"k=v"
    # The W3C header wins over the extension.
    w3c = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert envelope_of({**headers, "traceparent": w3c}).traceparent == w3c
    with pytest.raises(TypeError):
        envelope.extensions["subject"] = "x"  # type: ignore[index]
