"""Fixtures of the fault suite: sizes scaled by RELIABILITY_SCALE, a private broker, figures.

``RELIABILITY_SCALE`` (default 0.05) multiplies the full sizes of docs/reliability.md
(100k events for the crash test, 10k hostile records, a 10 s outage, ...), so that
``make test`` runs the whole suite in about a minute on 2 cores; ``RELIABILITY_SCALE=1``
runs the full sizes. Every test prints its figures; with ``RELIABILITY_REPORT=FILE`` they
are also appended to FILE as JSON lines.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.broker import PrivateBroker

SCALE = float(os.environ.get("RELIABILITY_SCALE", "0.05"))


def scaled(full: float, minimum: float) -> Any:
    """``full`` times RELIABILITY_SCALE, at least ``minimum`` (an int if both are ints)."""
    value = max(full * SCALE, minimum)
    return int(value) if isinstance(full, int) and isinstance(minimum, int) else value


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Callable[..., None]]:
    """``figures(name=value, ...)``: print the figures and append them to the report."""
    found: dict[str, Any] = {"test": request.node.name, "scale": SCALE}

    def record(**values: Any) -> None:
        found.update(values)

    yield record
    print(f"\nFIGURES {json.dumps(found)}")
    report = os.environ.get("RELIABILITY_REPORT")
    if report:
        with Path(report).open("a") as fh:
            fh.write(json.dumps(found) + "\n")


@pytest.fixture(scope="session")
def private_broker(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrivateBroker]:
    """A broker of the fault suite's own, which a test may freeze and must thaw
    (``kafka_bootstrap`` only makes it a broker test: it needs the same jars and fails the
    same way without). One per session: starting one takes ~30 s on 2 cores."""
    broker = PrivateBroker(tmp_path_factory.mktemp("private-broker"))
    broker.start()
    yield broker
    broker.stop()
