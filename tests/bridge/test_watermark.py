"""The per-partition offset watermark of key-ordered concurrency (bridge._inbound)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import Record
from bridge._inbound import _Watermark


@settings(deadline=None, max_examples=300)
@given(st.integers(1, 40).flatmap(lambda n: st.permutations(range(n))))
def test_the_stored_offset_never_passes_an_unfinished_record(order: list[int]) -> None:
    """Records finish in any order; after each, the offset to store is the last record
    below which every record is done, and it only moves forward."""
    records = [Record("t", 0, 100 + i, None, b"") for i in range(len(order))]
    mark = _Watermark(("t", 0))
    for record in records:
        mark.track(record)
    done: set[int] = set()
    stored = -1
    for i in order:
        mark.done(records[i])
        done.add(i)
        contiguous = 0
        while contiguous in done:
            contiguous += 1
        last = mark.take_stored()
        if last is not None:
            assert last.offset > stored
            stored = last.offset
        expected = 100 + contiguous - 1 if contiguous else -1
        assert stored == expected
