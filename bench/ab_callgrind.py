"""Instructions per record of the bridge's CPU-only paths, for an A/B under callgrind.

Runs one path of the source tree given (default: this one) without Kafka and without
threads: ``inbound`` feeds prebuilt records (CloudEvents binary mode, msgpack, as another
bridge writes them) through ``Inbound._handle_batch`` to one trivial handler, with a
consumer whose ``store`` does nothing; ``outbound`` emits events on the bus through the
outbound route to a producer that drops them. Each is run twice, with ``--n`` records
and with none, so that the difference divided by ``--n`` is the cost per record::

    for tree in /path/to/old /path/to/new; do
      for n in 0 20000; do
        valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$n \\
          python bench/ab_callgrind.py inbound --tree $tree --n $n
      done
    done   # (total at 20000 - total at 0) / 20000 per tree: the A/B ratio

``python bench/ab_callgrind.py ab OLD_TREE`` does the above for both paths and prints
the instructions per record of each tree and the ratios (old / new: 1.0 is as fast).
Every bridge since the formats (issue 13) and the one before them run it unchanged.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _import(tree: str) -> Any:
    sys.path.insert(0, tree)
    import bridge
    import eventbus

    assert bridge.__file__.startswith(tree), bridge.__file__
    return bridge, eventbus


class _NullConsumer:
    def store(self, record: Any) -> None:
        pass


class _NullProducer:
    produced = 0

    def produce(self, *args: Any, **kwargs: Any) -> None:
        self.produced += 1

    def in_flight(self) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0

    def poll(self, timeout: float = 0.0) -> int:
        return 0

    def close(self, timeout: float = 0.0) -> None:
        pass


def _stopped_bridge(bridge: Any, eventbus: Any, data: str) -> tuple[Any, Any, Any, list[int]]:
    """A bridge started on the memory transport and stopped again: its Inbound and
    Outbound stay built, with no thread running."""
    bus = eventbus.EventBus()
    seen = [0]

    @bus.on_event("user.created")
    def on_user(event: Any) -> None:
        seen[0] += 1

    json_data = {"content_type": "application/json"} if data == "json" else {}
    routes = [
        bridge.Route.inbound("user.created", topic="users"),
        bridge.Route.outbound("order.placed", topic="orders", **json_data),
    ]
    b = bridge.Bridge(bus, transport=bridge.MemoryTransport(), service="ab", routes=routes)
    b.start()
    b.stop()
    inbound, outbound = b._inbound, b._outbound
    inbound.stopping.clear()  # stop() set it: _handle_batch would stop at once
    inbound.consumer = _NullConsumer()
    outbound.producer = _NullProducer()
    outbound._closing = False  # stop() set it (where it exists): emits would be refused
    outbound.attach()  # stop() detached the bus handlers
    return bus, inbound, outbound, seen


def _records(bridge: Any, n: int, data: str) -> list[Any]:
    from bridge._transport import Record

    if data == "json":
        from bridge._json import JsonCodec

        codec = JsonCodec()
    else:
        codec = bridge.MsgpackCodec()
    content_type = b"application/json" if data == "json" else b"application/vnd.msgpack"
    records = []
    for i in range(n):
        headers = [
            ("ce_specversion", b"1.0"),
            ("ce_id", b"%032x" % i),
            ("ce_source", b"users-service"),
            ("ce_type", b"user.created"),
            ("ce_time", b"2026-12-02T00:00:00.%06dZ" % (i % 1_000_000)),
            ("content-type", content_type),
            ("eventbus-origin", b"0b9f3c3e-0000-4000-8000-000000000001"),
        ]
        value = codec.encode({"user_id": i, "name": "Ada Lovelace", "email": "ada@example.org"})
        records.append(Record("users", 0, i, None, value, headers, 1_700_000_000_000 + i))
    return records


def run(path: str, tree: str, n: int, data: str, no_extra: bool) -> None:
    if no_extra:  # the json extra absent: the stdlib json module only
        sys.modules["orjson"] = sys.modules["msgspec"] = None  # type: ignore[assignment]
    bridge, eventbus = _import(tree)
    bus, inbound, outbound, seen = _stopped_bridge(bridge, eventbus, data)
    if path == "inbound":
        records = _records(bridge, n, data)
        batch = 100
        for start in range(0, n, batch):
            inbound._handle_batch(records[start : start + batch])
        assert seen[0] == n, (seen[0], n)
    else:
        emit = bus.emit
        for i in range(n):
            emit("order.placed", order_id=i, sku="A-1234", amount=12.5)
        assert outbound.producer.produced == n, (outbound.producer.produced, n)


def _total(out: str) -> int:
    with open(out) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {out}")


def _count(path: str, tree: str, n: int, *flags: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        cmd += [sys.executable, os.path.abspath(__file__), path, "--tree", tree, "--n", str(n)]
        cmd += flags
        subprocess.run(cmd, check=True, capture_output=True)
        return _total(out)


def ab(old: str, new: str, n: int) -> None:
    for path in ("inbound", "outbound"):
        per = {}
        for name, tree in (("old", old), ("new", new)):
            started = time.monotonic()
            per[name] = (_count(path, tree, n) - _count(path, tree, 0)) / n
            took = time.monotonic() - started
            print(f"{path} {name} ({tree}): {per[name] / 1000:.1f}k instructions/record", end="")
            print(f" [{took:.0f} s]", flush=True)
        print(f"{path}: new is {per['old'] / per['new']:.3f}x of old (>= 0.95 wanted)", flush=True)


def extra(tree: str, n: int) -> None:
    """JSON data (``content_type="application/json"``) with the json extra and without."""
    for path in ("inbound", "outbound"):
        per = {}
        for name, without in (("stdlib", ("--no-extra",)), ("extra", ())):
            flags = ("--data", "json", *without)
            per[name] = (_count(path, tree, n, *flags) - _count(path, tree, 0, *flags)) / n
            print(f"{path} json, {name}: {per[name] / 1000:.1f}k instructions/record", flush=True)
        print(f"{path} json: {per['stdlib'] / per['extra']:.3f}x with the extra", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", choices=("inbound", "outbound", "ab", "extra"))
    parser.add_argument("old", nargs="?", help="ab: the old tree")
    parser.add_argument("--tree", default=HERE)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--data", choices=("msgpack", "json"), default="msgpack")
    parser.add_argument("--no-extra", action="store_true", help="block orjson and msgspec")
    args = parser.parse_args()
    if args.path == "extra":
        extra(os.path.abspath(args.tree), args.n)
    elif args.path == "ab":
        if not args.old:
            parser.error("ab needs the old tree")
        ab(os.path.abspath(args.old), os.path.abspath(args.tree), args.n)
    else:
        run(args.path, os.path.abspath(args.tree), args.n, args.data, args.no_extra)


if __name__ == "__main__":
    main()
