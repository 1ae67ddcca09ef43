"""Persistent dedup: handled ids survive a reopen, a crash, and a restarted bridge."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import msgpack
import pytest

from bridge import Bridge, ConfigError, MemoryTransport, Route
from bridge._dedup import SqliteDedup
from eventbus import EventBus
from tests.bridge.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "dedup.db")


def test_seen_after_add_and_after_reopen(db: str) -> None:
    dedup = SqliteDedup(db, window=60, size=100)
    assert not dedup.seen("a")
    dedup.add("a")
    assert dedup.seen("a") and not dedup.seen("b")
    dedup.close()
    assert SqliteDedup(db, window=60, size=100).seen("a")


def test_ids_added_before_a_kill_9_are_kept(db: str) -> None:
    child = textwrap.dedent(
        f"""
        import os, signal
        from bridge._dedup import SqliteDedup
        dedup = SqliteDedup({db!r}, 60, 10_000)
        for i in range(300):
            dedup.add(f"id-{{i}}")
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", child], cwd=ROOT, check=False)
    assert proc.returncode == -signal.SIGKILL
    dedup = SqliteDedup(db, 60, 10_000)
    assert all(dedup.seen(f"id-{i}") for i in range(300))


def test_ids_expire_after_the_window(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("bridge._dedup.time.time", lambda: now[0])
    dedup = SqliteDedup(db, window=10, size=100)
    dedup.add("a")
    now[0] += 9.9
    assert dedup.seen("a")
    now[0] += 0.2
    assert not dedup.seen("a")
    dedup.prune()
    assert len(dedup) == 0


def test_prune_keeps_the_newest_size_ids(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr("bridge._dedup.time.time", lambda: now[0])
    dedup = SqliteDedup(db, window=1e9, size=10)
    for i in range(25):
        now[0] += 1
        dedup.add(str(i))
    dedup.prune()
    assert len(dedup) == 10
    assert [dedup.seen(str(i)) for i in range(25)] == [False] * 15 + [True] * 10


def test_zero_size_or_window_remembers_nothing(db: str) -> None:
    for dedup in (SqliteDedup(db, 0, 10), SqliteDedup(db, 10, 0)):
        dedup.add("a")
        assert not dedup.seen("a")


def test_bad_options(db: str) -> None:
    with pytest.raises(ConfigError):
        SqliteDedup(db, -1, 10)
    with pytest.raises(ConfigError):
        SqliteDedup(db, 1, 10, synchronous="OFF")  # type: ignore[arg-type]


HEADERS = [
    ("ce_specversion", b"1.0"),
    ("ce_id", b"event-1"),
    ("ce_source", b"t"),
    ("ce_type", b"a.b"),
]


def redeliver_once(memory: MemoryTransport, bus: EventBus, **kw: Any) -> Bridge:
    """Run a fresh bridge (a restarted daemon) that receives the same event again."""
    with Bridge(
        bus, transport=memory, service="svc", routes=[Route.inbound("a.b", topic="t")], **kw
    ) as b:
        producer = memory.producer()
        producer.produce("t", msgpack.packb({"n": 1}), None, HEADERS)
        producer.flush(5)
        producer.close()
        wait_for(lambda: b.stats.received == 1)
    return b


@pytest.mark.parametrize("persistent", [True, False])
def test_a_restarted_bridge_does_not_handle_a_redelivered_event_again(
    db: str, persistent: bool
) -> None:
    memory = MemoryTransport()
    bus = EventBus()
    calls: list[int] = []
    bus.on("a.b")(lambda sender, n: calls.append(n))
    kw = {"dedup_path": db} if persistent else {}
    first = redeliver_once(memory, bus, **kw)
    second = redeliver_once(memory, bus, **kw)
    assert first.stats.handled == 1
    if persistent:
        assert calls == [1] and second.stats.duplicates == 1
    else:
        assert calls == [1, 1] and second.stats.duplicates == 0


def _open_and_add(path: str, barrier: Any, results: Any) -> None:
    barrier.wait()
    try:
        store = SqliteDedup(path, window=60, size=100)
        store.add(f"id-{os.getpid()}")
        store.close()
        results.put("ok")
    except Exception as exc:  # reported to the parent, which asserts on it
        results.put(repr(exc))


def test_processes_opening_one_fresh_file_at_once_all_succeed(tmp_path: Path) -> None:
    # Two daemons started together on one dedup_path: SQLite answers the loser of the WAL
    # switch "database is locked" at once; the store waits for the lock instead.
    ctx = multiprocessing.get_context("fork")
    outcomes: list[str] = []
    for trial in range(40):
        path = str(tmp_path / f"dedup-{trial}.db")
        barrier, results = ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=_open_and_add, args=(path, barrier, results)) for _ in range(3)]
        for proc in procs:
            proc.start()
        outcomes += [results.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(timeout=60)
        store = SqliteDedup(path, window=60, size=100)
        assert all(store.seen(f"id-{proc.pid}") for proc in procs)
        store.close()
    assert outcomes == ["ok"] * len(outcomes)
