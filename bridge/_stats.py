"""The counters of one bridge."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Stats:
    """Counters of one bridge, read by any thread (``Bridge.stats``).

    ``produced`` counts records whose delivery finished, ``delivered`` those that
    succeeded, ``delivery_failed`` those that failed (each one reported). The inbound
    counters are updated by the bridge's inbound threads.
    """

    produced: int = 0
    delivered: int = 0
    delivery_failed: int = 0
    received: int = 0
    handled: int = 0
    retried: int = 0
    dead_lettered: int = 0
    retries_scheduled: int = 0
    """Records sent to a delayed retry topic (confirmed or not)."""
    retries_due: int = 0
    """Records of retry topics that came due and were run again."""
    retries_handled: int = 0
    """Of those, the ones whose handlers all succeeded."""
    duplicates: int = 0
    echoes: int = 0
    unrouted: int = 0
    in_flight: int = 0
    """Records produced and not yet delivered or failed."""
    consumer_lag: int | None = None
    """Records the consumer is behind the end of its partitions (updated every second)."""
