"""Unit tests of the daemon's workers (``bridge._workers``): what each worker runs, and
how the parent sums their reports into one /healthz and /metrics."""

from __future__ import annotations

import pickle
from types import MappingProxyType
from typing import Any

import pytest

from bridge._config import parse_config
from bridge._stats import RouteRetries, Stats
from bridge._workers import REPORT_STALE, WorkerReports, worker_config


def config(**kafka: Any) -> Any:
    return parse_config(
        {
            "bridge": {"service": "svc", "workers": 3, "metrics_port": 9464},
            "kafka": {"bootstrap.servers": "b:9092", **kafka},
            "route": [{"signals": "a.*", "topic": "t", "direction": "in"}],
        }
    )


def test_each_worker_is_one_process_without_the_metrics_port() -> None:
    one = worker_config(config(), 2)
    assert one.workers == 1 and one.metrics_port is None
    assert "group.instance.id" not in one.kafka
    assert one.routes == config().routes and one.service == "svc"


def test_a_configuration_travels_to_a_worker_unchanged() -> None:
    original = parse_config(
        {
            "bridge": {"service": "svc", "workers": 2, "topic_config": {"retention.ms": 1000}},
            "kafka": {"bootstrap.servers": "b:9092"},
            "route": [{"signals": "a.*", "topic": "t", "direction": "in", "retry_delays": [1]}],
        }
    )
    copy = pickle.loads(pickle.dumps(worker_config(original, 0)))
    assert copy == worker_config(original, 0)
    assert isinstance(copy.topic_config, MappingProxyType)  # still read-only
    assert dict(copy.topic_config) == {"retention.ms": "1000"}


def test_static_membership_gets_an_instance_id_per_worker() -> None:
    ids = [worker_config(config(**{"group.instance.id": "svc-0"}), i).kafka for i in range(3)]
    assert [k["group.instance.id"] for k in ids] == ["svc-0-w0", "svc-0-w1", "svc-0-w2"]


def stats(**values: Any) -> Stats:
    s = Stats()
    for name, value in values.items():
        setattr(s, name, value)
    return s


def reports(count: int = 2) -> WorkerReports:
    return WorkerReports("svc", (), count)


def test_healthy_only_when_every_worker_reported_healthy() -> None:
    r = reports()
    assert not r.healthy  # nobody reported yet
    r.update(0, True, stats())
    assert not r.healthy  # worker 1 missing
    r.update(1, False, None)
    assert not r.healthy  # worker 1 starting
    r.update(1, True, stats())
    assert r.healthy
    r.stopping = True
    assert not r.healthy


def test_a_worker_silent_too_long_is_unhealthy(monkeypatch: pytest.MonkeyPatch) -> None:
    import bridge._workers as workers

    r = reports(1)
    r.update(0, True, stats())
    now = workers.time.monotonic()
    monkeypatch.setattr(workers.time, "monotonic", lambda: now + REPORT_STALE + 1)
    assert not r.healthy and not r.worker_healthy(0)


def test_counters_sum_and_survive_an_exited_worker_gauges_do_not() -> None:
    r = reports()
    by_route = {"t": RouteRetries(retries_due=2)}
    r.update(0, True, stats(received=5, handled=4, in_flight=3, consumer_lag=7))
    r.update(1, True, stats(received=10, handled=10, retries_by_route=by_route, consumer_lag=1))
    total = r.stats
    assert (total.received, total.handled, total.in_flight, total.consumer_lag) == (15, 14, 3, 8)
    assert total.retries_by_route["t"].retries_due == 2
    r.retire(0)  # worker 0 exited: its counters stay, its gauges leave
    r.update(0, False, None)  # its successor starts
    r.update(1, True, stats(received=12, handled=12, retries_by_route=by_route))
    total = r.stats
    assert (total.received, total.handled, total.in_flight, total.consumer_lag) == (17, 16, 0, None)
    r.retire(1)
    r.retire(1)  # twice: counted once
    assert r.stats.received == 17
