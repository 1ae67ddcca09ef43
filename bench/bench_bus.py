"""EventBus.emit against a raw blinker Signal.send, in the same process.

Prints, for 1 and 10 handlers, the time per emit of each and the ratio bus/raw
(lower is better; the target is <= 0.8 with 1 handler and <= 0.6 with 10).
Rounds alternate between the two so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import blinker

from eventbus import EventBus


def _handler(sender: object, **payload: object) -> None:
    pass


def _time(fn: object, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()  # type: ignore[operator]
    return (time.perf_counter() - start) / n


def measure(handlers: int, n: int, rounds: int) -> dict[str, float]:
    raw = blinker.Signal()
    # Distinct function objects, as real handlers are; held strongly by the list.
    fns = [lambda s, **kw: None for _ in range(handlers)]
    for fn in fns:
        raw.connect(fn)
    bus = EventBus()
    for fn in fns:
        bus.on("user.registered")(fn)

    def emit_raw() -> None:
        raw.send(None, user_id=42, email="a@example.com")

    def emit_bus() -> None:
        bus.emit("user.registered", user_id=42, email="a@example.com")

    raw_times, bus_times = [], []
    for _ in range(rounds):
        raw_times.append(_time(emit_raw, n))
        bus_times.append(_time(emit_bus, n))
    raw_t, bus_t = statistics.median(raw_times), statistics.median(bus_times)
    return {
        "handlers": handlers,
        "raw_us": raw_t * 1e6,
        "bus_us": bus_t * 1e6,
        "ratio": bus_t / raw_t,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=20000, help="emits per round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    targets = {1: 0.8, 10: 0.6}
    results = [measure(h, args.n, args.rounds) for h in (1, 10)]
    ok = True
    for r in results:
        target = targets[int(r["handlers"])]
        ok &= r["ratio"] <= target
        if not args.json:
            print(
                f"handlers={r['handlers']:<3} raw blinker {r['raw_us']:.2f} us  "
                f"EventBus {r['bus_us']:.2f} us  ratio {r['ratio']:.2f} (target <= {target})"
            )
    if args.json:
        print(json.dumps(results))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
