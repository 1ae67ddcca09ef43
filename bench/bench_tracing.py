"""What tracing costs, on a real Kafka broker (KAFKA_BOOTSTRAP).

    python bench/bench_tracing.py absent [--base REF]   # the otel extra absent: A/B vs REF
    python bench/bench_tracing.py sdk                   # the SDK with a no-op exporter
    python bench/bench_tracing.py all --json results.json

``absent``: emit -> delivered and Kafka -> handler, each round in a fresh process that
cannot import ``opentelemetry`` (as without the extra), alternating the code of REF (by
default the commit where this branch left main) and of this tree; the raw producer and
consumer loops of bench_bridge.py run in the same rounds. Prints each side's events/s
over the raw loop's, and this tree's over REF's (target >= 0.97).

``sdk``: the same two paths in this process with the OpenTelemetry SDK, a batch span
processor and an exporter that drops everything, against the same bridge without a
provider, in alternating rounds. Prints the cost per event in microseconds. The consume
side reads records that carry a trace context (produced with tracing on) either way.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import bench_bridge as bb
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from bridge import Bridge, KafkaTransport, Route
from eventbus import EventBus

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import sys
if sys.argv[6] == "absent":
    sys.modules["opentelemetry"] = None  # the otel extra is not installed
sys.path[:0] = [sys.argv[1], sys.argv[2]]  # the code to measure, then bench/
import bench_bridge as bb
import bridge
assert bridge.__file__.startswith(sys.argv[1]), bridge.__file__
which, n, topic = sys.argv[3], int(sys.argv[4]), sys.argv[5]
print(bb.bridge_produce(n, topic) if which == "produce" else bb.bridge_consume(n, topic))
"""


def _tree(ref: str, into: Path) -> Path:
    """The ``bridge`` and ``eventbus`` packages of commit ``ref``, extracted under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "bridge", "eventbus"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def _child(tree: Path, which: str, n: int, topic: str, otel: str = "absent") -> float:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tree), str(ROOT / "bench"), which, str(n), topic, otel],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if done.returncode != 0:
        sys.exit(f"benchmark child failed:\n{done.stderr}")
    return float(done.stdout.strip().splitlines()[-1])


def bench_absent(n: int, rounds: int, base: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        before, after = _tree(base, Path(folder)), ROOT
        produce_topic, consume_topic = bb.topic_name("otel-produce"), bb.topic_name("otel-consume")
        KafkaTransport({"bootstrap.servers": bb.bootstrap()}).ensure_topics(
            [produce_topic, consume_topic], 1
        )
        bb.raw_produce(min(n, 5000), produce_topic)  # warm up
        bb.fill(consume_topic, n)
        results: dict[str, dict[str, list[float]]] = {
            which: {"raw": [], "before": [], "after": [], "api": []}
            for which in ("produce", "consume")
        }
        for i in range(rounds):
            # Alternate which side goes first, so a drifting machine favours neither.
            order = [("before", before), ("after", after)]
            if i % 2:
                order.reverse()
            for which in ("produce", "consume"):
                got = results[which]
                if which == "produce":
                    got["raw"].append(bb.raw_produce(n, produce_topic))
                else:
                    got["raw"].append(bb.raw_consume(n, consume_topic, dispatch=True))
                topic = produce_topic if which == "produce" else consume_topic
                for side, tree in order:
                    got[side].append(_child(tree, which, n, topic))
                # this tree again, the API installed but no provider configured
                got["api"].append(_child(after, which, n, topic, otel="api"))
    out: dict[str, Any] = {"bench": "otel-absent", "events": n, "rounds": rounds, "base": base}
    for which, got in results.items():
        raw = statistics.median(got["raw"])
        b, a = statistics.median(got["before"]), statistics.median(got["after"])
        api = statistics.median(got["api"])
        # Each round's after/before: slow drift of a shared machine cancels within a round.
        paired = [x / y for x, y in zip(got["after"], got["before"], strict=True)]
        out[which] = {
            "paired_after_over_before": statistics.median(paired),
            "rounds_after_over_before": paired,
            "api_no_provider_eps": api,
            "api_over_before": api / b,
            "raw_eps": raw,
            "before_eps": b,
            "after_eps": a,
            "before_ratio": b / raw,
            "after_ratio": a / raw,
            "after_over_before": a / b,
            "target": 0.97,
        }
    return out


class DropExporter(SpanExporter):
    """An exporter that drops every span: what is left is the cost of making them."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _provider() -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(DropExporter()))
    return provider


def bench_sdk(n: int, rounds: int) -> dict[str, Any]:
    produce_topic, consume_topic = bb.topic_name("sdk-produce"), bb.topic_name("sdk-consume")
    KafkaTransport({"bootstrap.servers": bb.bootstrap()}).ensure_topics(
        [produce_topic, consume_topic], 1
    )
    bb.raw_produce(min(n, 5000), produce_topic)  # warm up
    provider = _provider()
    _fill_traced(consume_topic, n, provider)
    off: dict[str, list[float]] = {"produce": [], "consume": []}
    on: dict[str, list[float]] = {"produce": [], "consume": []}
    for _ in range(rounds):
        off["produce"].append(bb.bridge_produce(n, produce_topic))
        on["produce"].append(bb.bridge_produce(n, produce_topic, tracer_provider=provider))
        off["consume"].append(bb.bridge_consume(n, consume_topic))
        on["consume"].append(bb.bridge_consume(n, consume_topic, tracer_provider=provider))
    provider.shutdown()
    out: dict[str, Any] = {"bench": "otel-sdk", "events": n, "rounds": rounds}
    out.update(span_costs(20_000, rounds))
    for which in ("produce", "consume"):
        plain, traced = statistics.median(off[which]), statistics.median(on[which])
        out[which] = {
            "untraced_eps": plain,
            "traced_eps": traced,
            "ratio": traced / plain,
            "cost_us_per_event": (1 / traced - 1 / plain) * 1e6,
        }
    return out


def span_costs(n: int, rounds: int) -> dict[str, float]:
    """Microseconds per ``send`` and per ``process`` span, without Kafka: the traced call
    against the same call untraced, in alternating rounds (medians)."""
    from bridge._envelope import HeaderBuilder
    from bridge._tracing import tracing_for
    from bridge._transport import Record

    provider = _provider()
    tracing = tracing_for(provider, bridge_id="bench", group="bench")
    assert tracing is not None
    headers = HeaderBuilder("bench", "origin").build("user.registered")
    value = b"x" * 40

    def handle(record: Record) -> int:
        return 0

    traced_handle = tracing.processing(handle)
    sent = _fill_headers(tracing, headers, value)
    record = Record("topic", 0, 1, b"42", value, sent, None)
    plain: dict[str, list[float]] = {"send": [], "process": []}
    traced: dict[str, list[float]] = {"send": [], "process": []}
    bare: list[float] = []  # the SDK alone: a span with the same attributes, started, ended
    tracer = provider.get_tracer("bench")
    attributes = {"messaging.system": "kafka", "messaging.operation.name": "send"}
    attributes.update({f"attribute.{i}": "value" for i in range(8)})
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            tracer.start_span("send topic", attributes=attributes).end()
        bare.append(time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(n):
            list(headers)
        plain["send"].append(time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(n):
            with tracing.sending("topic", b"42", value, headers) as written:
                list(written)
        traced["send"].append(time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(n):
            handle(record)
        plain["process"].append(time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(n):
            traced_handle(record)
        traced["process"].append(time.perf_counter() - start)
    provider.shutdown()
    costs = {
        f"{kind}_span_us": (statistics.median(traced[kind]) - statistics.median(plain[kind]))
        / n
        * 1e6
        for kind in ("send", "process")
    }
    costs["bare_sdk_span_us"] = statistics.median(bare) / n * 1e6
    return costs


def _fill_headers(tracing: Any, headers: Any, value: bytes) -> Any:
    with tracing.sending("topic", b"42", value, headers) as written:
        return written


def _fill_traced(topic: str, n: int, provider: TracerProvider) -> None:
    """``n`` records on ``topic`` with ``n`` = 0 .. n-1, each with a trace context."""
    bus = EventBus()
    transport = KafkaTransport({"bootstrap.servers": bb.bootstrap()})
    bridge = Bridge(
        bus,
        transport=transport,
        service="filler",
        routes=[Route.outbound("user.*", topic=topic, key="user_id")],
        tracer_provider=provider,
    )
    with bridge:
        for i in range(n):
            bus.emit("user.registered", **{**bb.PAYLOAD, "n": i})
        while bridge.stats.produced < n:
            time.sleep(0.01)
    transport.close()


def report(result: dict[str, Any]) -> None:
    if result["bench"] == "otel-absent":
        print(
            f"otel extra absent, A/B vs {result['base'][:12]} "
            f"({result['events']} events x {result['rounds']})"
        )
        for which in ("produce", "consume"):
            r = result[which]
            print(
                f"  {which:8} raw {r['raw_eps']:9.0f}/s  before {r['before_eps']:9.0f}/s "
                f"({r['before_ratio']:.2f} of raw)  after {r['after_eps']:9.0f}/s "
                f"({r['after_ratio']:.2f} of raw)  after/before {r['after_over_before']:.3f}, "
                f"median of the rounds' {r['paired_after_over_before']:.3f} "
                f"(target >= {r['target']}); API without a provider "
                f"{r['api_no_provider_eps']:9.0f}/s ({r['api_over_before']:.3f} of before)"
            )
    else:
        print(
            "OpenTelemetry SDK, batch processor, no-op exporter "
            f"({result['events']} events x {result['rounds']})"
        )
        for which in ("produce", "consume"):
            r = result[which]
            print(
                f"  {which:8} untraced {r['untraced_eps']:9.0f}/s  traced {r['traced_eps']:9.0f}/s "
                f"({r['ratio']:.2f})  cost {r['cost_us_per_event']:.1f} us/event"
            )
        print(
            f"  without Kafka: {result['send_span_us']:.1f} us per send span, "
            f"{result['process_span_us']:.1f} us per process span; the SDK alone "
            f"{result['bare_sdk_span_us']:.1f} us per span with 10 attributes"
        )


def _merge_base() -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), "merge-base", "HEAD", "main"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("which", choices=["absent", "sdk", "all"])
    parser.add_argument("-n", type=int, default=50_000, help="events per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--base", help="the commit to compare with (default: merge-base with main)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    results = []
    if args.which in ("absent", "all"):
        results.append(bench_absent(args.n, args.rounds, args.base or _merge_base()))
        report(results[-1])
    if args.which in ("sdk", "all"):
        results.append(bench_sdk(args.n, args.rounds))
        report(results[-1])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
