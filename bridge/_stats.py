"""The counters of one bridge."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class RouteRetries:
    """The delayed-retry counters of one inbound route (``Stats.retries_by_route``)."""

    retries_scheduled: int = 0
    """Records of the route sent to one of its retry topics."""
    retries_due: int = 0
    """Records of its retry topics that came due and were run again."""
    retries_handled: int = 0
    """Of those, the ones whose handlers all succeeded."""


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
    refused: int = 0
    """Of ``delivery_failed``, records the broker refused for good (too large for the
    topic, an invalid or unauthorized topic); with an outbox they are in its dead-letter
    table, not resent."""
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
    retries_by_route: dict[str, RouteRetries] = field(default_factory=dict)
    """The three counters above per inbound route with ``retry_delays``, by its topic
    (one entry per such topic from the start; their sums are the totals)."""
    replays_handled: int = 0
    """Replayed records (``eventbus-bridge dlq replay`` to the topic) whose failed
    handlers all succeeded this time."""
    duplicates: int = 0
    echoes: int = 0
    unrouted: int = 0
    in_flight: int = 0
    """Records produced and not yet delivered or failed."""
    consumer_lag: int | None = None
    """Records the consumer is behind the end of its partitions (updated every second)."""
