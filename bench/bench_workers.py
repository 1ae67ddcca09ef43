"""CPU-bound handlers on a real Kafka broker (KAFKA_BOOTSTRAP): ``run --workers 2`` vs 1.

    python bench/bench_workers.py [--records 100000] [--handler-us 50] [--rounds 3]

A pure-Python handler that computes for about ``handler_us`` microseconds per event (a
loop calibrated here) is hosted by the daemon (``python -m bridge run``), with one worker
process and with two, on a topic of 4 partitions filled beforehand, in the same run
(alternating, each ``rounds`` times, the median kept). Each handler samples its count
every 20 ms with its own clock (``time.monotonic``, one clock for every process); events/s
is that of all the workers together while every one of them is handling (from the last
one's first event to the first one's last), so the start-up (the second worker joins the
group a little after the first) and an uneven tail are left out. Printed: events/s of
each, the ratio (target >= 1.6 on 2 cores), the handler's own ceiling on one core, and
the load average at the start and the end (the machine may be shared). Every run checks
that the events handled add up to the events produced.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack
from bench_bridge import bootstrap, report
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from bridge import KafkaTransport

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 4
SAMPLE = 0.02  # seconds between two samples of a worker's count

HANDLER = '''
"""The bench's handler: about HANDLER_LOOPS iterations of pure Python per event."""
import os, threading, time
from eventbus import default_bus

LOOPS = int(os.environ["HANDLER_LOOPS"])
OUT = os.path.join(os.environ["BENCH_OUT"], str(os.getpid()))
state = {"count": 0}


@default_bus.on("job.*")
def handle(sender, **payload):
    total = 0
    for i in range(LOOPS):
        total += i * i
    state["count"] += 1


def write():
    # (time, count) samples while the count moves, to one file per process
    last = -1
    with open(OUT, "a") as f:
        while True:
            time.sleep(float(os.environ["BENCH_SAMPLE"]))
            count = state["count"]
            if count != last:
                f.write(f"{time.monotonic()} {count}\\n")
                f.flush()
                last = count


threading.Thread(target=write, daemon=True).start()
'''

CONFIG = """
[bridge]
service = "{service}"
modules = ["bench_handler"]
log_level = "WARNING"
[kafka]
"bootstrap.servers" = "{bootstrap}"
"auto.offset.reset" = "earliest"
"heartbeat.interval.ms" = 300  # the first worker hears of the second one sooner
[[route]]
signals = "job.*"
topic = "{topic}"
direction = "in"
"""


def per_call(loops: int) -> float:
    """Seconds one handler call takes: the best of 50 short batches (the machine may be
    shared: some batch runs without being preempted)."""
    best = float("inf")
    for _ in range(50):
        started = time.perf_counter()
        for _ in range(10):
            total = 0
            for i in range(loops):
                total += i * i
        best = min(best, (time.perf_counter() - started) / 10)
    return best


def calibrate(handler_us: float) -> int:
    """Loop iterations that take about ``handler_us`` microseconds here."""
    loops = 1000
    while (took := per_call(loops)) < 20e-6:
        loops *= 2
    return max(1, round(loops * handler_us * 1e-6 / took))


def fill(topic: str, records: int) -> None:
    """Produce ``records`` events (the bridge's wire format: msgpack value, CloudEvents
    headers, one id each) over 64 keys, as fast as the client goes."""
    producer = Producer({"bootstrap.servers": bootstrap(), "linger.ms": 5})
    value = msgpack.packb({"seq": 0}, use_bin_type=True)
    fixed = [
        ("ce_specversion", b"1.0"),
        ("ce_source", b"bench"),
        ("ce_type", b"job.done"),
        ("content-type", b"application/vnd.msgpack"),
    ]
    for seq in range(records):
        headers = [*fixed, ("ce_id", uuid.uuid4().hex.encode())]
        while True:
            try:
                producer.produce(topic, value, str(seq % 64).encode(), headers=headers)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    assert producer.flush(60) == 0, "records not delivered"


def samples(out: Path) -> list[list[tuple[float, int]]]:
    """Per worker process that handled events: its (time, count) samples."""
    found = []
    for path in out.iterdir():
        lines = [line.split() for line in path.read_text().splitlines() if line]
        series = [(float(t), int(c)) for t, c in lines if int(c)]
        if series:
            found.append(series)
    return found


def at(series: list[tuple[float, int]], moment: float) -> float:
    """A worker's count at ``moment``, interpolated between its samples."""
    before = (series[0][0] - SAMPLE, 0)
    for t, c in series:
        if t >= moment:
            share = (moment - before[0]) / (t - before[0]) if t > before[0] else 1.0
            return before[1] + share * (c - before[1])
        before = (t, c)
    return float(series[-1][1])


def window_rate(series: list[list[tuple[float, int]]]) -> float:
    """Events/s of all the workers together while every one of them was handling: from
    the last of their first samples to the first of their last ones (start-up, and the
    tail of a worker that finished early, left out)."""
    start = max(s[0][0] for s in series)
    end = min(next(t for t, c in s if c == s[-1][1]) for s in series)
    events = sum(at(s, end) - at(s, start) for s in series)
    return events / (end - start)


def run_daemon(work: Path, workers: int, records: int, loops: int) -> float:
    """Events/s of a daemon with ``workers`` processes handling ``records`` events."""
    topic = f"bench-workers-{uuid.uuid4().hex[:8]}"
    with KafkaTransport({"bootstrap.servers": bootstrap()}) as transport:
        transport.ensure_topics([topic], PARTITIONS)
    out = work / f"out-{topic}"
    out.mkdir()
    config = work / f"{topic}.toml"
    config.write_text(
        CONFIG.format(service=f"bench-{uuid.uuid4().hex[:8]}", bootstrap=bootstrap(), topic=topic)
    )
    env = {**os.environ, "HANDLER_LOOPS": str(loops), "BENCH_OUT": str(out)}
    env["BENCH_SAMPLE"] = str(SAMPLE)
    env["PYTHONPATH"] = os.pathsep.join([str(work), str(ROOT), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "bridge", "run", "-c", str(config)]
    command += ["--workers", str(workers), "--log-level", "INFO"]
    fill(topic, records)  # before: the producer takes no core from the workers
    daemon = subprocess.Popen(
        command, cwd=work, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    try:
        assert daemon.stderr is not None
        ready = "bridge.workers: ready:" if workers > 1 else "bridge.daemon: ready:"
        for line in daemon.stderr:
            if ready in line:
                break
        else:
            raise SystemExit(f"the daemon exited ({daemon.wait()}) before it was ready")
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if sum(x[-1][1] for x in samples(out)) >= records:
                break
            time.sleep(0.1)
        time.sleep(0.3)  # a duplicate would show now
        series = samples(out)
        total = sum(x[-1][1] for x in series)
        assert total == records, f"{workers} worker(s): handled {total} of {records}"
        assert len(series) == workers, f"{workers} worker(s), {len(series)} handled events"
        return window_rate(series)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
        admin = AdminClient({"bootstrap.servers": bootstrap()})  # alive until deleted
        for future in admin.delete_topics([topic]).values():
            future.result(30)


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def bench_workers(records: int, handler_us: float, rounds: int) -> dict[str, Any]:
    loops = calibrate(handler_us)
    handler_s = per_call(loops)
    load_before = load()
    rates: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "bench_handler.py").write_text(HANDLER)
        for _ in range(rounds):
            for workers in (1, 2):
                rates[workers].append(run_daemon(work, workers, records, loops))
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    return {
        "bench": "workers",
        "records": records,
        "partitions": PARTITIONS,
        "handler_us": handler_s * 1e6,
        "handler_only_per_s": 1 / handler_s,
        "workers_1_per_s": one,
        "workers_2_per_s": two,
        "ratio": two / one,
        "target": 1.6,
        "rounds_1": [round(r) for r in rates[1]],
        "rounds_2": [round(r) for r in rates[2]],
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "load_after": load(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--handler-us", type=float, default=50.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    report([bench_workers(args.records, args.handler_us, args.rounds)], args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
