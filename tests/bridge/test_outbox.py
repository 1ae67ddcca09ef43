"""The durable outbox on MemoryTransport: storage, relay, order, bound, crash recovery."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from bridge import (
    Bridge,
    BridgeError,
    ConfigError,
    MemoryTransport,
    QueueFullError,
    Record,
    Route,
    TransportError,
)
from bridge._outbox import Outbox
from eventbus import EmitError, EventBus
from tests.bridge.helpers import read, wait_for

ROOT = Path(__file__).resolve().parents[2]
RETRIABLE = TransportError("broker unreachable", retriable=True)


@pytest.fixture
def memory() -> Iterator[MemoryTransport]:
    t = MemoryTransport()
    t.ensure_topics(["t"])
    yield t
    t.close()


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "outbox.db")


class Delivered:
    """An ``on_delivery`` callback that records what it was given."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.errors: list[Exception] = []

    def __call__(self, error: Exception | None, record: Record) -> None:
        if error is None:
            self.records.append(record)
        else:
            self.errors.append(error)


def append(box: Outbox, n: int, key: bytes | None = b"k", start: int = 0) -> None:
    for i in range(start, start + n):
        box.append("t", str(i).encode(), key, [("ce_id", f"id-{i}".encode())])


def values(records: list[Record]) -> list[int]:
    return [int(r.value or b"") for r in records]


def test_append_then_relay_delivers_in_order_with_key_and_headers(
    memory: MemoryTransport, db: str
) -> None:
    box = Outbox(db)
    box.append("t", b"v", b"key", [("ce_id", b"1"), ("x", b"\x00\xff"), ("x", b"")])
    append(box, 99, start=1)
    assert box.pending() == 100
    delivered = Delivered()
    producer = memory.producer()
    box.start(producer, delivered)
    wait_for(lambda: box.pending() == 0, what="the outbox to empty")
    box.stop(5)
    producer.close()
    first, *rest = read(memory, "t", 100)
    assert (first.key, first.value) == (b"key", b"v")
    assert first.headers == (("ce_id", b"1"), ("x", b"\x00\xff"), ("x", b""))
    assert values(rest) == list(range(1, 100))
    assert len(delivered.records) == 100 and not delivered.errors


def test_records_of_a_crashed_process_are_sent_on_the_next_start(
    memory: MemoryTransport, db: str
) -> None:
    # A real crash: the child appends, then kills itself with SIGKILL (no stop, no close).
    child = textwrap.dedent(
        f"""
        import os, signal
        from bridge._outbox import Outbox
        box = Outbox({db!r})
        for i in range(500):
            box.append("t", str(i).encode(), b"k", [("ce_id", str(i).encode())])
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", child], cwd=ROOT, check=False)
    assert proc.returncode == -signal.SIGKILL
    box = Outbox(db)
    assert box.pending() == 500
    producer = memory.producer()
    box.start(producer, Delivered())
    wait_for(lambda: box.pending() == 0)
    box.stop(5)
    producer.close()
    assert values(read(memory, "t", 500)) == list(range(500))


def test_undelivered_records_stay_for_the_next_start(memory: MemoryTransport, db: str) -> None:
    memory.broker.pause_delivery()  # an outage: nothing is acknowledged
    box = Outbox(db)
    producer = memory.producer()
    box.start(producer, Delivered())
    append(box, 50)
    box.stop(0.05)
    producer.close(0)  # fails the held records: they are reported, not delivered
    memory.broker.resume_delivery()

    box = Outbox(db)
    assert box.pending() == 50
    producer = memory.producer()
    box.start(producer, Delivered())
    wait_for(lambda: box.pending() == 0)
    box.stop(5)
    producer.close()
    assert values(read(memory, "t", 50)) == list(range(50))


def test_order_is_kept_when_the_records_in_flight_fail(memory: MemoryTransport, db: str) -> None:
    # Like a Kafka producer giving up after message.timeout.ms during an outage: every
    # record in flight fails; the relay waits for all reports and resends from the first.
    memory.broker.pause_delivery()
    box = Outbox(db, retry_backoff=0.001)
    producer = memory.producer()
    box.start(producer, Delivered())
    append(box, 20)
    wait_for(lambda: len(producer._held) == 20, what="20 records in flight")  # type: ignore[attr-defined]
    memory.broker.fail_next(20, RETRIABLE)
    memory.broker.resume_delivery()
    wait_for(lambda: box.pending() == 0)
    append(box, 5, start=20)
    wait_for(lambda: box.pending() == 0)
    box.stop(5)
    producer.close()
    assert box.retries == 20
    assert values(read(memory, "t", 25)) == list(range(25))
    assert memory.broker.end_offset("t", 0) == 25  # resent once each, no duplicates


def test_a_record_that_fails_alone_is_resent_never_lost(memory: MemoryTransport, db: str) -> None:
    # The documented limit: records produced after the failed one and delivered before its
    # failure was reported stay ahead of its resend (docs/reliability.md, "Order").
    memory.broker.pause_delivery()
    box = Outbox(db, retry_backoff=0.001)
    producer = memory.producer()
    delivered = Delivered()
    box.start(producer, delivered)
    append(box, 10)
    wait_for(lambda: len(producer._held) == 10)  # type: ignore[attr-defined]
    memory.broker.fail_next(1, RETRIABLE)
    memory.broker.resume_delivery()
    wait_for(lambda: box.pending() == 0)
    box.stop(5)
    producer.close()
    assert values(read(memory, "t", 10)) == [*range(1, 10), 0]
    assert box.retries == 1 and not delivered.errors and len(delivered.records) == 10


def test_bound_reached_raises_queue_full_with_a_clear_message(db: str) -> None:
    box = Outbox(db, max_events=3, full_timeout=0)
    append(box, 3)
    with pytest.raises(QueueFullError, match=r"holds 3 undelivered events.*outbox_max_events=3"):
        append(box, 1)
    box.stop(0)
    assert Outbox(db).pending() == 3  # the refused event was not stored


def test_a_full_outbox_waits_for_room(memory: MemoryTransport, db: str) -> None:
    memory.broker.pause_delivery()
    box = Outbox(db, max_events=5, full_timeout=30)
    producer = memory.producer()
    box.start(producer, Delivered())
    append(box, 5)
    done = threading.Event()
    waiter = threading.Thread(target=lambda: (append(box, 1, start=5), done.set()))
    waiter.start()
    assert not done.wait(0.05)  # blocked: the outbox is full
    memory.broker.resume_delivery()
    waiter.join(10)
    assert done.is_set()
    wait_for(lambda: box.pending() == 0)
    box.stop(5)
    producer.close()
    assert values(read(memory, "t", 6)) == list(range(6))


def test_concurrent_appends_share_commits_and_keep_each_threads_order(
    memory: MemoryTransport, db: str
) -> None:
    box = Outbox(db)
    producer = memory.producer()
    box.start(producer, Delivered())

    def emit(thread: int) -> None:
        for i in range(300):
            box.append("t", f"{thread}:{i}".encode(), str(thread).encode(), [])

    threads = [threading.Thread(target=emit, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for(lambda: box.pending() == 0)
    box.stop(5)
    producer.close()
    got: dict[str, list[int]] = {}
    for record in read(memory, "t", 2400):
        thread, i = (record.value or b"").decode().split(":")
        got.setdefault(thread, []).append(int(i))
    assert got == {str(n): list(range(300)) for n in range(8)}


def test_one_owner_per_file(db: str) -> None:
    box = Outbox(db)
    with pytest.raises(ConfigError, match="in use"):
        Outbox(db)
    box.stop(0)
    Outbox(db).stop(0)  # free again once stopped


def test_stop_is_idempotent_and_append_after_stop_raises(db: str) -> None:
    box = Outbox(db)
    box.stop(0)
    box.stop(0)
    with pytest.raises(BridgeError, match="closed"):
        append(box, 1)


def test_bad_options_are_config_errors(db: str) -> None:
    with pytest.raises(ConfigError):
        Outbox(db, max_events=0)
    with pytest.raises(ConfigError):
        Outbox(db, synchronous="OFF")  # type: ignore[arg-type]


# -- through the Bridge ------------------------------------------------------------------


def make_bridge(bus: EventBus, memory: MemoryTransport, outbox: str | Outbox, **kw: Any) -> Bridge:
    return Bridge(
        bus,
        transport=memory,
        service="svc",
        routes=[Route.outbound("user.*", topic="t", key="user_id")],
        outbox=outbox,
        **kw,
    )


def test_bridge_with_outbox_delivers_and_counts(memory: MemoryTransport, db: str) -> None:
    bus = EventBus()
    with make_bridge(bus, memory, db) as b:
        for n in range(100):
            bus.emit("user.registered", user_id=n % 3, n=n)
        wait_for(lambda: b.stats.delivered == 100)
    records = read(memory, "t", 100)
    assert [msgpack.unpackb(r.value)["n"] for r in records] == list(range(100))
    assert b.stats.produced == 100 and b.stats.delivery_failed == 0


def test_bridge_outbox_keeps_events_across_an_outage_and_a_restart(
    memory: MemoryTransport, db: str
) -> None:
    bus = EventBus()
    memory.broker.pause_delivery()
    with make_bridge(bus, memory, db, drain_timeout=0.05) as b:
        for n in range(30):
            bus.emit("user.registered", user_id=n, n=n)  # returns: stored, not yet sent
    assert b.stats.delivered == 0 and b.stats.delivery_failed == 0
    memory.broker.resume_delivery()
    with make_bridge(bus, memory, Outbox(db, synchronous="FULL")) as b2:
        wait_for(lambda: b2.stats.delivered == 30)
    assert sorted(msgpack.unpackb(r.value)["n"] for r in read(memory, "t", 30)) == list(range(30))


def test_bridge_emit_raises_when_the_outbox_is_full(memory: MemoryTransport, db: str) -> None:
    bus = EventBus()
    memory.broker.pause_delivery()
    with make_bridge(bus, memory, Outbox(db, max_events=2, full_timeout=0), drain_timeout=0):
        bus.emit("user.registered", user_id=1)
        bus.emit("user.registered", user_id=2)
        with pytest.raises(EmitError) as caught:
            bus.emit("user.registered", user_id=3)
    assert caught.group_contains(QueueFullError, match="outbox_max_events=2")
    memory.broker.resume_delivery()


def test_a_refused_record_is_resent_alone_then_moved_to_dead_letters(
    memory: MemoryTransport, db: str
) -> None:
    box = Outbox(db, retry_backoff=0.001)
    delivered = Delivered()
    append(box, 1)
    refusal = TransportError("Broker: Message size too large", permanent=True)
    memory.broker.fail_next(2, refusal)  # the record, then the record sent alone
    box.start(memory.producer(), delivered)
    wait_for(lambda: box.pending() == 0, what="the refused record to leave the queue")
    append(box, 3, start=1)
    wait_for(lambda: len(delivered.records) == 3, what="the records after it")
    assert [str(e) for e in delivered.errors] == [str(refusal)]  # reported once
    assert box.refused == 1 and box.dead_letters() == 1 and box.pending() == 0
    assert values(read(memory, "t", 3)) == [1, 2, 3]
    box.stop(1)


def test_a_record_failed_with_its_batch_is_not_refused_when_it_goes_through_alone(
    memory: MemoryTransport, db: str
) -> None:
    box = Outbox(db, retry_backoff=0.001)
    delivered = Delivered()
    append(box, 3)
    memory.broker.fail_next(1, TransportError("batch too large", permanent=True))
    box.start(memory.producer(), delivered)
    wait_for(lambda: len(delivered.records) == 3, what="all three records")
    assert box.refused == 0 and box.dead_letters() == 0 and delivered.errors == []
    box.stop(1)


def test_the_relay_retries_a_full_disk_and_recovers(memory: MemoryTransport, db: str) -> None:
    """SQLite's max_page_count makes the file report SQLITE_FULL exactly as a full disk
    does; raising it again is freeing space."""
    box = Outbox(db, retry_backoff=0.001, max_retry_backoff=0.05)
    bus = EventBus()
    bridge = Bridge(
        bus,
        transport=memory,
        service="svc",
        routes=[Route.outbound("e.*", topic="t")],
        outbox=box,
        drain_timeout=1,
    )
    with bridge:
        memory.broker.pause_delivery()
        bus.emit("e.big", blob=b"x" * 20_000)  # refused below; parking it needs new pages
        with box._db_lock:
            (pages,) = box._db.execute("PRAGMA page_count").fetchone()
            box._db.execute(f"PRAGMA max_page_count={pages}")  # the disk is full
        with pytest.raises(EmitError) as caught:
            bus.emit("e.small", n=2, blob=b"y" * 20_000)  # a clear error: not accepted
        assert "database or disk is full" in str(caught.value.exceptions[0])
        memory.broker.fail_next(2, TransportError("too large", permanent=True))
        memory.broker.resume_delivery()
        wait_for(lambda: box.problem is not None, what="the relay to meet the full disk")
        assert "database or disk is full" in str(box.problem)
        assert not bridge.healthy and box.alive  # unhealthy, and still trying
        with box._db_lock:
            box._db.execute("PRAGMA max_page_count=1073741823")  # space freed
        wait_for(lambda: box.problem is None, what="the relay to recover")
        assert bridge.healthy
        bus.emit("e.small", n=1)
        bus.emit("e.small", n=3)
        wait_for(lambda: bridge.stats.delivered == 2, what="the small records")
        assert box.dead_letters() == 1 and box.pending() == 0
        assert bridge.stats.refused == 1
    payloads = [msgpack.unpackb(r.value) for r in read(memory, "t", 2)]
    assert payloads == [{"n": 1}, {"n": 3}]


def test_the_relay_survives_a_write_error_on_delete_and_recovers(db: str) -> None:
    """The file-size limit (RLIMIT_FSIZE, in a child process) makes the WAL unwritable as
    a full disk does: the relay's deletes fail; lifting it is freeing space. The child
    prints what it saw; the wait-for loops are in the child (it owns the outbox)."""
    child = textwrap.dedent(
        f"""
        import json, resource, signal, time
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a kill
        from bridge import MemoryTransport
        from bridge._outbox import Outbox

        def wait(what, condition):
            deadline = time.monotonic() + 20
            while not condition():
                assert time.monotonic() < deadline, what
                time.sleep(0.01)

        memory = MemoryTransport()
        memory.ensure_topics(["t"])
        memory.broker.pause_delivery()
        box = Outbox({db!r}, retry_backoff=0.01, max_retry_backoff=0.05)
        delivered = []
        box.start(memory.producer(), lambda e, r: delivered.append(e))
        for i in range(2000):
            box.append("t", b"v" * 300, None, [("ce_id", str(i).encode())])
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # the disk is full
        memory.broker.resume_delivery()
        wait("the relay to meet the full disk", lambda: box.problem is not None)
        full = dict(problem=box.problem, alive=box.alive, pending=box.pending())
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space freed
        wait("the relay to recover", lambda: box.problem is None and box.pending() == 0)
        assert len(delivered) == 2000
        print(json.dumps(dict(full=full, alive=box.alive, errors=sum(map(bool, delivered)))))
        box.stop(1)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", child], cwd=ROOT, check=False, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.splitlines()[-1])
    assert seen["full"]["alive"] and seen["full"]["pending"] == 2000  # delivered, not deleted
    assert "error" in seen["full"]["problem"]  # "disk I/O error": the WAL write failed
    assert "storage error" in proc.stderr and "storage works again" in proc.stderr
    assert seen["alive"] and seen["errors"] == 0
    assert Outbox(db).pending() == 0  # the deletes reached the file
