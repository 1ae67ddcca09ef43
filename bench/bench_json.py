"""The JSON codec with the ``json`` extra (orjson encodes, msgspec decodes) against the
standard library alone, per call, in the same run.

    python bench/bench_json.py [--number 20000] [--rounds 7]

Three payloads: a flat one of four fields (``bench_bridge``'s), a nested one (a user
with an address and ten order lines), and a typed one (UUID, datetime, Decimal, date,
bytes: the values ``_default`` turns into strings). Rounds alternate between the two
codecs; the best round of each is kept. Prints µs per call and the ratio stdlib / extra
(higher: the extra is faster). Also the raw libraries' calls alone, for reference.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import timeit
import uuid
from decimal import Decimal
from typing import Any

from bridge._json import ACCELERATED, JsonCodec

PAYLOADS: dict[str, dict[str, Any]] = {
    "flat": {"user_id": 42, "email": "someone@example.com", "plan": "pro", "n": 0},
    "nested": {
        "user": {
            "id": 7,
            "name": "Ada Lovelace",
            "tags": ["a", "b", "c"],
            "address": {"street": "1 Main St", "city": "London", "zip": "N1"},
        },
        "items": [{"sku": f"S{i}", "qty": i, "price": 9.99} for i in range(10)],
    },
    "typed": {
        "user_id": uuid.UUID("0b9f3c3e-0000-4000-8000-000000000001"),
        "at": dt.datetime(2026, 12, 1, 9, 30, 0, 250_000, tzinfo=dt.UTC),
        "credit": Decimal("10.50"),
        "born": dt.date(1990, 2, 3),
        "avatar": b"\x00\x01\x02\xff",
        "name": "Ada",
    },
}


def best(call: Any, number: int, rounds: int) -> float:
    return min(timeit.repeat(call, number=number, repeat=rounds)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if not ACCELERATED:
        raise SystemExit("install the json extra (pip install -e '.[json]')")

    for name, payload in PAYLOADS.items():
        measure(name, payload, args.number, args.rounds)


def measure(name: str, payload: dict[str, Any], number: int, rounds: int) -> None:
    import msgspec
    import orjson

    fast, stdlib = JsonCodec(), JsonCodec(accelerate=False)
    data = stdlib.encode(payload)
    assert fast.encode(payload) == data and fast.decode(data) == stdlib.decode(data)
    times: dict[str, list[float]] = {}
    for _ in range(rounds):  # alternating, one round of each at a time
        for label, call in (
            ("encode stdlib", lambda: stdlib.encode(payload)),
            ("encode extra", lambda: fast.encode(payload)),
            ("decode stdlib", lambda: stdlib.decode(data)),
            ("decode extra", lambda: fast.decode(data)),
        ):
            times.setdefault(label, []).append(best(call, number, 1))
    t = {label: min(values) for label, values in times.items()}
    print(f"{name} ({len(data)} bytes):")
    for way in ("encode", "decode"):
        ratio = t[f"{way} stdlib"] / t[f"{way} extra"]
        print(
            f"  {way}: stdlib {t[f'{way} stdlib']:.2f} µs, extra {t[f'{way} extra']:.2f} µs,"
            f" {ratio:.2f}x"
        )
    raw = {
        "json.dumps": lambda: json.dumps(payload, default=str),
        "orjson.dumps": lambda: orjson.dumps(payload, default=str),
        "json.loads": lambda: json.loads(data),
        "msgspec decode": lambda: msgspec.json.decode(data),
    }
    line = ", ".join(f"{k} {best(v, number, rounds):.2f}" for k, v in raw.items())
    print(f"  raw calls (µs): {line}")


if __name__ == "__main__":
    main()
