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
