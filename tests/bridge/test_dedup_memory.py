"""The in-memory dedup window: ids are remembered for a time, and at most so many."""

from __future__ import annotations

import pytest

from bridge import _bridge
from bridge._dedup import MemoryDedup as _Dedup


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(_bridge.time, "monotonic", clock)
    return clock


def test_an_added_id_is_seen_within_the_window_and_not_after(clock: Clock) -> None:
    dedup = _Dedup(window=10, size=100)
    dedup.add("a")
    clock.now += 9.9
    assert dedup.seen("a") and not dedup.seen("b")
    clock.now += 0.1
    assert not dedup.seen("a")


def test_the_oldest_ids_go_beyond_the_size_bound(clock: Clock) -> None:
    dedup = _Dedup(window=60, size=3)
    for event_id in "abcde":
        dedup.add(event_id)
        clock.now += 1
    assert [dedup.seen(i) for i in "abcde"] == [False, False, True, True, True]
    assert len(dedup._ids) == 3


def test_expired_ids_are_evicted_so_memory_stays_bounded(clock: Clock) -> None:
    dedup = _Dedup(window=5, size=1_000_000)
    for n in range(10_000):
        dedup.add(str(n))
        clock.now += 0.01  # 500 ids per window
    assert 500 <= len(dedup._ids) <= 500 + 256  # expired ones go every 256 adds
    assert dedup.seen("9999") and not dedup.seen("0")


def test_an_id_added_again_after_its_window_counts_from_then(clock: Clock) -> None:
    dedup = _Dedup(window=10, size=1000)
    dedup.add("a")
    clock.now += 11
    assert not dedup.seen("a")
    dedup.add("a")  # handled again: remembered anew
    for n in range(300):  # past its first entry, which must not evict the new one
        dedup.add(str(n))
    clock.now += 5
    assert dedup.seen("a")
