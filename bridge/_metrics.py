"""Prometheus metrics and a health check for the daemon (``/metrics``, ``/healthz``).

A custom collector reads ``Bridge.stats`` when Prometheus scrapes, so the hot path pays
nothing. prometheus-client is optional (the ``[metrics]`` extra); it is
imported only when a metrics port is configured.

Consumer lag is the sum over the assigned partitions of (end offset - position), from the
end offsets the consumer already knows (no broker round trip), refreshed every second.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ._bridge import Bridge
from ._errors import ConfigError, TransportError

log = logging.getLogger("bridge.metrics")
INSTALL_HINT = "pip install prometheus-client (the [metrics] extra: pip install '.[metrics]')"

# (metric name without _total, Stats field, help)
COUNTERS = (
    ("eventbus_bridge_events_out", "delivered", "Events published and acknowledged by Kafka."),
    (
        "eventbus_bridge_events_out_failed",
        "delivery_failed",
        "Events that could not be delivered to Kafka.",
    ),
    (
        "eventbus_bridge_events_out_refused",
        "refused",
        "Of those, events the broker refused for good (too large, invalid topic).",
    ),
    ("eventbus_bridge_events_in", "received", "Records received from inbound topics."),
    ("eventbus_bridge_events_handled", "handled", "Inbound events whose handlers all finished."),
    ("eventbus_bridge_retries", "retried", "Retries of failed handlers of inbound events."),
    (
        "eventbus_bridge_dead_lettered",
        "dead_lettered",
        "Records sent to a dead-letter topic (failed handlers, undecodable, unrouted).",
    ),
    (
        "eventbus_bridge_replays_handled",
        "replays_handled",
        "Replayed dead letters whose failed handlers all succeeded this time.",
    ),
    ("eventbus_bridge_duplicates", "duplicates", "Inbound events dropped as duplicates."),
    ("eventbus_bridge_echoes", "echoes", "Inbound records skipped as this bridge's own."),
    ("eventbus_bridge_unrouted", "unrouted", "Inbound records of a type no route names."),
)
# Per inbound route with retry_delays (label route: its topic), from Stats.retries_by_route.
ROUTE_COUNTERS = (
    (
        "eventbus_bridge_retries_scheduled",
        "retries_scheduled",
        "Records sent to a delayed retry topic of the route.",
    ),
    (
        "eventbus_bridge_retries_due",
        "retries_due",
        "Delayed retries of the route that came due and ran.",
    ),
    (
        "eventbus_bridge_retries_handled",
        "retries_handled",
        "Delayed retries of the route whose handlers all succeeded.",
    ),
)


def require_prometheus() -> Any:
    """Return the prometheus_client module; ConfigError saying what to install if missing."""
    try:
        import prometheus_client
        import prometheus_client.core
    except ImportError:
        raise ConfigError(f"metrics need prometheus-client: {INSTALL_HINT}") from None
    return prometheus_client


DEPTH_TIMEOUT = 2.0
"""Seconds a scrape waits for the dead-letter topics' offsets before it leaves them out."""


class BridgeCollector:
    """Exposes one bridge's ``Stats`` as Prometheus metrics, read at scrape time.

    ``bridge`` may be None (the daemon is still starting) and set later: until then only
    ``eventbus_bridge_healthy`` (0) is exposed.
    """

    def __init__(self, bridge: Bridge | None, service: str | None = None) -> None:
        self.bridge = bridge
        self.service = service if service is not None else (bridge.service if bridge else "")
        self._core = require_prometheus().core

    def collect(self) -> Iterator[Any]:
        core = self._core
        bridge = self.bridge
        labels = ["service"]
        service = bridge.service if bridge is not None else self.service
        if bridge is not None:
            stats = bridge.stats
            for name, field, text in COUNTERS:
                family = core.CounterMetricFamily(name, text, labels=labels)
                family.add_metric([service], getattr(stats, field))
                yield family
            by_route = list(stats.retries_by_route.items())  # one per route from the start
            if by_route:
                for name, field, text in ROUTE_COUNTERS:
                    family = core.CounterMetricFamily(name, text, labels=[*labels, "route"])
                    for route, counters in by_route:
                        family.add_metric([service, route], getattr(counters, field))
                    yield family
            in_flight = core.GaugeMetricFamily(
                "eventbus_bridge_in_flight",
                "Records produced and not yet delivered or failed.",
                labels=labels,
            )
            in_flight.add_metric([service], stats.in_flight)
            yield in_flight
            if stats.consumer_lag is not None:
                lag = core.GaugeMetricFamily(
                    "eventbus_bridge_consumer_lag",
                    "Records behind the end of the assigned partitions.",
                    labels=labels,
                )
                lag.add_metric([service], stats.consumer_lag)
                yield lag
            depth = self._dead_letter_depth(core, labels, bridge)
            if depth is not None:
                yield depth
        healthy = core.GaugeMetricFamily(
            "eventbus_bridge_healthy", "1 while the bridge runs and is healthy.", labels=labels
        )
        healthy.add_metric([service], 1.0 if bridge is not None and bridge.healthy else 0.0)
        yield healthy

    def _dead_letter_depth(self, core: Any, labels: list[str], bridge: Bridge) -> Any:
        """Records in each dead-letter topic (end minus first offset), from the broker;
        None when it does not answer in ``DEPTH_TIMEOUT`` (the scrape goes on)."""
        topics = list(dict.fromkeys(r.dead_letter_topic for r in bridge.routes if r.is_inbound))
        if not topics:
            return None
        family = core.GaugeMetricFamily(
            "eventbus_bridge_dead_letter_records",
            "Records in a dead-letter topic (its end offsets minus its first ones).",
            labels=[*labels, "topic"],
        )
        for topic in topics:
            try:
                marks = bridge.transport.watermarks(topic, DEPTH_TIMEOUT)
            except TransportError as exc:
                log.debug("no offsets of %s for /metrics: %s", topic, exc)
                continue
            family.add_metric(
                [bridge.service, topic], sum(high - low for low, high in marks.values())
            )
        return family


class MetricsServer:
    """An HTTP server on its own thread: ``/metrics`` and ``/healthz``.

    ``/healthz`` answers 200 while ``bridge.healthy`` (started, ready, not failed) and 503
    otherwise (starting, draining, failed). ``bridge`` may be None while the daemon
    starts (503) and set later. ``close()`` stops it; idempotent.
    """

    def __init__(
        self, bridge: Bridge | None, host: str, port: int, service: str | None = None
    ) -> None:
        prometheus = require_prometheus()
        registry = prometheus.CollectorRegistry()
        collector = BridgeCollector(bridge, service)
        registry.register(collector)
        self._collector = collector
        self.local_only = False
        """True for a daemon without routes (no bridge): healthy once it serves."""
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(
                        200, prometheus.generate_latest(registry), prometheus.CONTENT_TYPE_LATEST
                    )
                elif path == "/healthz":
                    current = collector.bridge
                    ok = server.local_only or (current is not None and current.healthy)
                    self._reply(200 if ok else 503, b"ok\n" if ok else b"unhealthy\n")
                else:
                    self._reply(404, b"not found: try /metrics or /healthz\n")

            def _reply(self, status: int, body: bytes, kind: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every few seconds would drown the log

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="bridge-metrics", daemon=True
        )
        self._thread.start()
        self._closed = False

    @property
    def bridge(self) -> Bridge | None:
        """The bridge served (None while the daemon starts)."""
        return self._collector.bridge

    @bridge.setter
    def bridge(self, bridge: Bridge | None) -> None:
        self._collector.bridge = bridge

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._server.shutdown()
            self._server.server_close()


def serve_metrics(
    bridge: Bridge | None, host: str, port: int, service: str | None = None
) -> MetricsServer:
    """Serve ``bridge``'s metrics on ``host:port`` (0: a free port, see ``.port``).

    ``bridge`` None: not yet built (``/healthz`` 503); set ``.bridge`` once it is.
    ConfigError when prometheus-client is missing or the port cannot be bound.
    """
    try:
        return MetricsServer(bridge, host, port, service)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
