"""The SQL outbox on real PostgreSQL (POSTGRES_URL) and Kafka (KAFKA_BOOTSTRAP), same run.

    python bench/bench_sql_outbox.py                 # all three parts
    python bench/bench_sql_outbox.py txn|relay|claim [-n N] [--json FILE]

``txn``: a transaction that inserts an order row (ORM session) and emits its event,
against the same transaction without the emit; alternating rounds, median. Target: the
emit adds <= 30%.

``relay``: the table is filled with ``n`` events while the relay stands by (this bench
holds its advisory lock); then the lock is released and the clock runs until the table is
empty. Baselines in the same run: a bare confluent-kafka producer sending the same records
(the broker side), and the relay's database work alone (read a batch, delete it). Target:
>= 10k events/s.

``latency``: commit -> acknowledged by the broker with the relay idle, woken by
``NOTIFY``, against polling alone (``poll_interval`` 1 s, the trigger dropped).

``claim``: the database side of the two relay designs, no broker: one leader reading and
deleting batches, against workers that claim per key with ``pg_try_advisory_xact_lock``
in a transaction (the ``FOR UPDATE SKIP LOCKED``-style design that keeps key order), with
1 and 2 workers, 8 and 1000 keys. See docs/decisions.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bridge import Bridge, KafkaTransport, Route, SqlOutbox
from bridge._envelope import HeaderBuilder
from eventbus import EventBus

metadata = sa.MetaData()
orders = sa.Table(
    "bench_orders",
    metadata,
    sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
    sa.Column("customer", sa.Integer, nullable=False),
    sa.Column("total", sa.Integer, nullable=False),
)
lines = sa.Table(
    "bench_order_lines",
    metadata,
    sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
    sa.Column("order_id", sa.Integer, nullable=False),
    sa.Column("sku", sa.Text, nullable=False),
)


def env(name: str, hint: str) -> str:
    value = os.environ.get(name)
    if not value:
        sys.exit(f"set {name} ({hint})")
    return value


def database_url() -> str:
    url = env("POSTGRES_URL", "scripts/postgres start prints it")
    return "postgresql+psycopg://" + url.split("://", 1)[1]


def kafka() -> KafkaTransport:
    return KafkaTransport({"bootstrap.servers": env("KAFKA_BOOTSTRAP", "scripts/kafka start")})


def make_topic(transport: KafkaTransport) -> str:
    topic = f"bench-sql-{uuid.uuid4().hex[:8]}"
    transport.ensure_topics([topic], 1, 30)
    return topic


def vacuum(engine: sa.Engine, table: str) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f'VACUUM ANALYZE "{table}"')


def drop(engine: sa.Engine, table: str) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{table}"')
        conn.exec_driver_sql(f'DROP FUNCTION IF EXISTS "{table}_notify"()')


# -- txn: what an emit adds to the application's transaction ---------------------------


def bench_txn(n: int, rounds: int) -> dict[str, Any]:
    engine = sa.create_engine(database_url())
    metadata.drop_all(engine)
    metadata.create_all(engine)
    table = f"bench_outbox_{uuid.uuid4().hex[:8]}"
    outbox = SqlOutbox(engine, table=table)
    transport = kafka()
    topic = make_topic(transport)
    bus = EventBus()
    bridge = Bridge(
        bus,
        transport=transport,
        service="bench",
        routes=[Route.outbound("order.*", topic=topic, key="customer")],
        outbox=outbox,
        create_topics=False,
    )

    def plain(i: int) -> None:
        with Session(engine) as session, session.begin():
            session.execute(orders.insert().values(customer=i % 100, total=i))

    def emitting(i: int) -> None:
        with Session(engine) as session, session.begin(), outbox.bind(session):
            session.execute(orders.insert().values(customer=i % 100, total=i))
            bus.emit("order.placed", customer=i % 100, total=i)

    def order(session: Session, i: int) -> None:
        """A more typical unit of work: read the last order, write an order and 2 lines."""
        session.execute(sa.select(orders.c.total).order_by(orders.c.id.desc()).limit(1))
        order_id = session.execute(
            orders.insert().values(customer=i % 100, total=i).returning(orders.c.id)
        ).scalar_one()
        session.execute(lines.insert(), [{"order_id": order_id, "sku": s} for s in "ab"])

    def typical(i: int) -> None:
        with Session(engine) as session, session.begin():
            order(session, i)

    def typical_emitting(i: int) -> None:
        with Session(engine) as session, session.begin(), outbox.bind(session):
            order(session, i)
            bus.emit("order.placed", customer=i % 100, total=i)

    def rounds_of(names: tuple[str, ...]) -> dict[str, float]:
        """Median seconds per transaction of each kind, interleaved one by one (so that
        drift of the disk's fsync time hits every kind alike)."""
        times: dict[str, list[float]] = {name: [] for name in names}
        fns = {"plain": plain, "emit": emitting, "typical": typical}
        fns["typical+emit"] = typical_emitting
        for _ in range(rounds):
            spent = dict.fromkeys(names, 0.0)
            for i in range(n):
                for name in names:
                    start = time.perf_counter()
                    fns[name](i)
                    spent[name] += time.perf_counter() - start
            for name in names:
                times[name].append(spent[name] / n)
        return {name: statistics.median(t) for name, t in times.items()}

    # First with the relay standing by (this bench holds its lock): the emit's own cost,
    # without the relay's reads and deletes competing for the 2 cores and the disk.
    with engine.connect() as holder:
        holder.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": outbox.lock_id})
        bridge.start()
        for fn in (plain, emitting, typical, typical_emitting):  # warm up: statement caches
            for i in range(200):
                fn(i)
        standby = rounds_of(("plain", "emit", "typical", "typical+emit"))
        holder.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": outbox.lock_id})
        holder.commit()
    try:
        deadline = time.monotonic() + 60
        while outbox.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        running = rounds_of(("plain", "emit", "typical", "typical+emit"))
        while outbox.pending() and time.monotonic() < deadline + 60:
            time.sleep(0.05)
    finally:
        bridge.stop()
    drop(engine, table)
    metadata.drop_all(engine)
    engine.dispose()
    result: dict[str, Any] = {"running": {}, "standby": {}}
    for label, times in (("running", running), ("standby", standby)):
        for kind in ("plain", "typical"):
            base, emit = times[kind], times[f"{kind}+emit" if kind == "typical" else "emit"]
            result[label][kind] = {"txn_us": base * 1e6, "emit_txn_us": emit * 1e6}
            result[label][kind]["emit_adds"] = emit / base - 1
            print(
                f"txn  relay {label:8} {kind:8} {base * 1e6:7.0f} us   with emit "
                f"{emit * 1e6:7.0f} us   emit adds {emit / base - 1:+.0%} (target <= +30%)"
            )
    return result


# -- relay: throughput to Kafka ---------------------------------------------------------


def fill(engine: sa.Engine, outbox: SqlOutbox, topic: str, n: int, keys: int) -> None:
    """``n`` rows as the bridge would write them, in transactions of 1000."""
    headers = HeaderBuilder("bench", "bench-id")
    value = b"\x84\xa8customer\x01\xa5total\xcd\x03\xe8\xa4note\xa5hello\xa1n\x00"
    for start in range(0, n, 1000):
        with Session(engine) as session, session.begin(), outbox.bind(session):
            for i in range(start, min(start + 1000, n)):
                outbox.append(topic, value, str(i % keys).encode(), headers.build("order.placed"))


def bench_relay(n: int, keys: int = 100) -> dict[str, Any]:
    engine = sa.create_engine(database_url())
    transport = kafka()
    table = f"bench_outbox_{uuid.uuid4().hex[:8]}"
    outbox = SqlOutbox(engine, table=table)
    result: dict[str, Any] = {"events": n}

    # Baseline 1, the broker side: a bare producer sends the same records.
    from confluent_kafka import Producer

    topic = make_topic(transport)
    headers = HeaderBuilder("bench", "bench-id").build("order.placed")
    value = b"\x84\xa8customer\x01\xa5total\xcd\x03\xe8\xa4note\xa5hello\xa1n\x00"
    raw = Producer(
        {
            "bootstrap.servers": env("KAFKA_BOOTSTRAP", ""),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
        }
    )
    start = time.perf_counter()
    for i in range(n):
        while True:
            try:
                raw.produce(topic, value, str(i % keys).encode(), headers=headers)
                break
            except BufferError:
                raw.poll(0.01)
        raw.poll(0)
    raw.flush(60)
    result["producer_eps"] = n / (time.perf_counter() - start)

    # Baseline 2, the database side: read a batch, delete it, until empty.
    fill(engine, outbox, topic, n, keys)
    vacuum(engine, table)
    t = outbox.table
    select = sa.select(t.c.id, t.c.topic, t.c.key, t.c.value, t.c.headers).order_by(t.c.id)
    delete = t.delete().where(t.c.id.in_(sa.bindparam("ids", expanding=True)))
    start = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        while rows := conn.execute(select.limit(outbox.batch_size)).all():
            conn.execute(delete, {"ids": [r[0] for r in rows]})
    result["database_eps"] = n / (time.perf_counter() - start)

    # The relay: fill while it stands by, then let it lead.
    fill(engine, outbox, topic, n, keys)
    vacuum(engine, table)
    bridge = Bridge(
        EventBus(),
        transport=transport,
        service="bench",
        routes=[Route.outbound("order.*", topic=topic)],
        outbox=outbox,
        create_topics=False,
    )
    with engine.connect() as holder:
        holder.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": outbox.lock_id})
        bridge.start()
        start = time.perf_counter()
        holder.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": outbox.lock_id})
        holder.commit()
        # The standby takes the lead within standby_interval (1 s): not relay time.
        while not outbox.leading:
            time.sleep(0.001)
        start = time.perf_counter()
        while bridge.stats.delivered < n:
            time.sleep(0.002)
        elapsed = time.perf_counter() - start
    bridge.stop()
    assert outbox.pending() == 0
    result["relay_eps"] = n / elapsed
    drop(engine, table)
    engine.dispose()
    ratio = result["relay_eps"] / result["producer_eps"]
    print(
        f"relay {result['relay_eps']:9,.0f} events/s   bare producer "
        f"{result['producer_eps']:9,.0f} events/s ({ratio:.2f}x)"
        f"   database read+delete alone {result['database_eps']:9,.0f} rows/s  (target >= 10k)"
    )
    return result


# -- latency: commit -> acknowledged by the broker, idle relay --------------------------


def bench_latency(n: int) -> dict[str, Any]:
    """Commits spaced 50 ms apart (the relay idle in between): commit -> delivered, with
    ``LISTEN``/``NOTIFY`` against a relay in another process (here: a second engine and an
    outbox whose in-process wake-up is not used) and against polling alone."""
    engine = sa.create_engine(database_url())
    transport = kafka()
    topic = make_topic(transport)
    result: dict[str, Any] = {}
    for mode in ("notify", "poll"):
        table = f"bench_outbox_{uuid.uuid4().hex[:8]}"
        relay_engine = sa.create_engine(database_url())
        relay = SqlOutbox(relay_engine, table=table, poll_interval=1.0)
        if mode == "poll":
            with engine.begin() as conn:
                conn.exec_driver_sql(f'DROP TRIGGER "{table}_notify" ON "{table}"')
        writer = SqlOutbox(engine, table=table, create_table=False)  # the "application"
        headers = HeaderBuilder("bench", "bench-id")
        bridge = Bridge(
            EventBus(),
            transport=transport,
            service="bench",
            routes=[Route.outbound("order.*", topic=topic)],
            outbox=relay,
            create_topics=False,
        )
        latencies: list[float] = []
        with bridge:
            while not relay.leading:
                time.sleep(0.001)
            for i in range(n):
                before = bridge.stats.delivered
                with Session(engine) as session, session.begin(), writer.bind(session):
                    writer.append(topic, b"\x80", str(i).encode(), headers.build("order.placed"))
                start = time.perf_counter()
                while bridge.stats.delivered == before:
                    time.sleep(0.0002)
                latencies.append(time.perf_counter() - start)
                time.sleep(0.05)
        latencies.sort()
        p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99) - 1]
        result[mode] = {"p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3, "max_ms": latencies[-1] * 1e3}
        print(
            f"latency {mode:6} commit -> delivered  p50 {p50 * 1e3:6.1f} ms  "
            f"p99 {p99 * 1e3:6.1f} ms  max {latencies[-1] * 1e3:6.1f} ms"
        )
        drop(engine, table)
        relay_engine.dispose()
    engine.dispose()
    return result


# -- claim: leader vs per-key locking, database side only --------------------------------


def bench_claim(n: int, rounds: int) -> dict[str, Any]:
    engine = sa.create_engine(database_url(), pool_size=4)
    table = f"bench_outbox_{uuid.uuid4().hex[:8]}"
    outbox = SqlOutbox(engine, table=table)
    t = outbox.table
    batch = 1000
    leader_select = (
        sa.select(t.c.id, t.c.topic, t.c.key, t.c.value, t.c.headers).order_by(t.c.id).limit(batch)
    )
    delete = t.delete().where(t.c.id.in_(sa.bindparam("ids", expanding=True)))
    # Per key: a row is taken only if this transaction holds its key's lock; rows of keys
    # another worker holds are skipped, so each key has one reader at a time (its order).
    claim = sa.text(
        f'SELECT id, topic, key, value, headers FROM "{table}" '
        "WHERE pg_try_advisory_xact_lock(hashtextextended(encode(key, 'escape'), 0)) "
        "ORDER BY id LIMIT :n"
    )

    def leader() -> None:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            while rows := conn.execute(leader_select).all():
                conn.execute(delete, {"ids": [r[0] for r in rows]})

    def per_key_worker() -> None:
        with engine.connect() as conn:
            while True:
                rows = conn.execute(claim, {"n": batch}).all()
                if rows:
                    conn.execute(delete, {"ids": [r[0] for r in rows]})
                conn.commit()
                if not rows and outbox.pending() == 0:
                    return

    result: dict[str, Any] = {}
    modes = (("leader", leader, 1), ("per-key x1", per_key_worker, 1))
    modes += (("per-key x2", per_key_worker, 2),)
    for keys in (8, 1000):
        rates: dict[str, list[float]] = {name: [] for name, _, _ in modes}
        for _ in range(rounds):
            for name, target, workers in modes:
                fill(engine, outbox, "t", n, keys)
                vacuum(engine, table)  # every mode starts from the same table state
                threads = [threading.Thread(target=target) for _ in range(workers)]
                start = time.perf_counter()
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                rates[name].append(n / (time.perf_counter() - start))
        for name, values in rates.items():
            result[f"{name} keys={keys}"] = statistics.median(values)
            print(f"claim {name:11} keys={keys:<5} {statistics.median(values):10,.0f} rows/s")
    drop(engine, table)
    engine.dispose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parts = ["all", "txn", "relay", "latency", "claim"]
    parser.add_argument("part", nargs="?", default="all", choices=parts)
    parser.add_argument("-n", type=int, default=0, help="events (default per part)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    if args.part in ("all", "txn"):
        results["txn"] = bench_txn(args.n or 1000, args.rounds)
    if args.part in ("all", "relay"):
        results["relay"] = bench_relay(args.n or 100_000)
    if args.part in ("all", "latency"):
        results["latency"] = bench_latency(args.n or 100)
    if args.part in ("all", "claim"):
        results["claim"] = bench_claim(args.n or 30_000, max(1, args.rounds // 2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
