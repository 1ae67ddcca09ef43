"""Several processes of one service under one daemon: ``[bridge] workers = N``.

A Python process handles events on one core at a time (the GIL); a service whose
handlers are CPU-bound uses more cores with more processes. ``supervise`` is the
parent: it does not consume. It starts N worker processes, each running the daemon's
ordinary run path (``_daemon.run``) with the same configuration, so each is a full member
of the same consumer group and the group spreads the partitions across them. The parent:

* reaches the broker and checks the configuration first (the same verdict as one
  process: status 2 or 3 before any worker starts);
* restarts a worker that exits on its own (a crash, ``kill -9``, a fatal consumer error:
  status 1 or 3, or a signal) after a backoff that doubles from ``RESTART_BACKOFF`` to
  ``MAX_RESTART_BACKOFF`` and starts again once a worker ran ``STABLE_AFTER`` seconds;
* stops the daemon with status 2 when a worker exits with it (a configuration error:
  restarting would only repeat it);
* on SIGTERM or SIGINT asks every worker to drain, through a shared event rather than a
  signal (a worker may have had the signal already, from the terminal or the service
  manager, and a second signal exits without draining), waits for them, and exits 0 (1
  if one did not drain cleanly within ``drain_timeout`` + ``STOP_GRACE`` seconds);
* serves the one ``/metrics`` and ``/healthz`` of the daemon: each worker reports its
  health and counters over a pipe every ``REPORT_INTERVAL`` seconds.

Workers are started with the ``spawn`` method (a fresh interpreter), never ``fork``:
librdkafka runs threads of its own, and a forked child would inherit locks held by
threads that do not exist in it (docs/decisions.md).
"""

from __future__ import annotations

import copy
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as EventType
from typing import Any

from ._bridge import Bridge
from ._config import Config
from ._daemon import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    DaemonError,
    check_topics,
    configure_logging,
    connect,
    preflight,
    request_stop,
    run,
    start_metrics,
    summary,
)
from ._errors import ConfigError
from ._metrics import require_prometheus
from ._routes import Route
from ._stats import RouteRetries, Stats
from ._transport import Transport

log = logging.getLogger("bridge.workers")

REPORT_INTERVAL = 0.5  # seconds between two reports of a worker to the parent
REPORT_STALE = 5.0  # a worker not heard of for this long is unhealthy
RESTART_BACKOFF = 0.5  # seconds before the first restart of a worker that exited
MAX_RESTART_BACKOFF = 30.0
STABLE_AFTER = 30.0  # a worker that ran this long restarts after RESTART_BACKOFF again
STOP_GRACE = 10.0  # seconds beyond drain_timeout that a stopping worker gets
INSTANCE_SUFFIX = "-w{index}"  # appended to group.instance.id per worker


def worker_config(config: Config, index: int) -> Config:
    """The configuration worker ``index`` (0-based) runs: ``config`` as one process,
    without the metrics port (the parent serves it), and with a ``group.instance.id`` of
    its own when static membership is configured (``<id>-w<index>``: two members with one
    id fence each other)."""
    kafka = dict(config.kafka)
    if "group.instance.id" in kafka:
        kafka["group.instance.id"] = f"{kafka['group.instance.id']}" + INSTANCE_SUFFIX.format(
            index=index
        )
    return replace(config, workers=1, metrics_port=None, kafka=kafka)


# -- in the worker ----------------------------------------------------------------------


def _worker_main(
    config: Config, index: int, reports: Connection, stop: EventType, parent: int
) -> None:
    """A worker process: the daemon's run path, reporting to the parent."""
    configure_logging(config.log_level, f"[w{index}]")
    reporter = _Reporter(reports, stop, parent)
    status = run(config, on_start=reporter.start, on_bridge=reporter.attach)
    reporter.close()
    sys.exit(status)


class _Reporter:
    """A worker's thread that sends its health and counters to the parent every
    ``REPORT_INTERVAL`` seconds, and stops the worker (a drain) when the parent asks or
    is gone."""

    def __init__(self, reports: Connection, stop: EventType, parent: int) -> None:
        self._reports = reports
        self._parent_stop = stop
        self._parent = parent
        self._bridge: Bridge | None = None
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bridge-worker-report", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def attach(self, bridge: Bridge) -> None:
        self._bridge = bridge

    def close(self) -> None:
        """Stop reporting, after a last report (the counters after the drain)."""
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join(REPORT_INTERVAL + 1)
        self._send()
        self._reports.close()

    def _loop(self) -> None:
        asked = False
        while not self._closed.wait(REPORT_INTERVAL):
            if not asked and (self._parent_stop.is_set() or os.getppid() != self._parent):
                asked = True
                if self._parent_stop.is_set():
                    log.info("the daemon is stopping: draining this worker")
                else:
                    log.warning("the daemon's parent process is gone: stopping")
                request_stop()
            if not self._send():
                request_stop()
                return

    def _send(self) -> bool:
        bridge = self._bridge
        report = (bridge.healthy, copy.deepcopy(bridge.stats)) if bridge else (False, None)
        try:
            self._reports.send(report)
        except (OSError, ValueError):  # the parent is gone (or this end closed)
            return False
        return True


# -- in the parent ----------------------------------------------------------------------


@dataclass
class _Worker:
    """The parent's record of one worker slot: its process while one runs."""

    index: int
    process: BaseProcess | None = None
    reports: Connection | None = None
    started: float = 0.0
    backoff: float = RESTART_BACKOFF
    restart_at: float | None = None  # when a restart is due
    restarts: int = 0
    status: int | None = None  # the last exit status


@dataclass
class _Report:
    at: float
    healthy: bool
    stats: Stats | None


class WorkerReports:
    """The workers' last reports together: what the daemon's ``/metrics`` and
    ``/healthz`` read (a ``MetricsSource``). Thread safe: written by the supervisor,
    read by the metrics server's threads.

    ``healthy``: every worker runs, reported within ``REPORT_STALE`` seconds, and said it
    was healthy; and the daemon is not stopping. ``stats``: the sums of the workers'
    counters, those of exited workers included (so that they never go down), and of the
    gauges of the running ones. ``transport``: the parent's own connection to the broker
    (the dead-letter depth gauge), set once the broker answered.
    """

    def __init__(self, service: str, routes: tuple[Route, ...], count: int) -> None:
        self.service = service
        self.routes = routes
        self.count = count
        self.stopping = False
        self.restarts: dict[int, int] = {}
        self._transport: Transport | None = None
        self._live: dict[int, _Report] = {}
        self._retired = Stats()
        self._lock = threading.Lock()

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            raise RuntimeError("the daemon has not reached the broker yet")
        return self._transport

    @transport.setter
    def transport(self, transport: Transport) -> None:
        self._transport = transport

    def update(self, index: int, healthy: bool, stats: Stats | None) -> None:
        with self._lock:
            self._live[index] = _Report(time.monotonic(), healthy, stats)

    def retire(self, index: int) -> None:
        """Worker ``index`` exited: its counters stay in the sums, its gauges leave."""
        with self._lock:
            report = self._live.pop(index, None)
            if report is not None and report.stats is not None:
                _add(self._retired, report.stats, gauges=False)

    def worker_healthy(self, index: int) -> bool:
        with self._lock:
            report = self._live.get(index)
        return report is not None and report.healthy and time.monotonic() - report.at < REPORT_STALE

    @property
    def healthy(self) -> bool:
        return not self.stopping and all(self.worker_healthy(i) for i in range(self.count))

    @property
    def stats(self) -> Stats:
        with self._lock:
            total = copy.deepcopy(self._retired)
            for report in self._live.values():
                if report.stats is not None:
                    _add(total, report.stats, gauges=True)
        return total


_GAUGES = frozenset({"in_flight", "consumer_lag"})


def _add(total: Stats, stats: Stats, *, gauges: bool) -> None:
    """Add the counters of ``stats`` to ``total`` (and its gauges, if ``gauges``)."""
    for f in fields(Stats):
        name = f.name
        value = getattr(stats, name)
        if name == "retries_by_route":
            for route, counters in value.items():
                into = total.retries_by_route.setdefault(route, RouteRetries())
                for g in fields(RouteRetries):
                    setattr(into, g.name, getattr(into, g.name) + getattr(counters, g.name))
        elif name in _GAUGES:
            if gauges and value is not None:
                setattr(total, name, (getattr(total, name) or 0) + value)
        else:
            setattr(total, name, getattr(total, name) + value)


class WorkerCollector:
    """Prometheus metrics of the workers: healthy (per worker) and restarts."""

    def __init__(self, reports: WorkerReports) -> None:
        self._reports = reports
        self._core = require_prometheus().core

    def collect(self) -> Iterator[Any]:
        core, reports = self._core, self._reports
        labels = ["service", "worker"]
        healthy = core.GaugeMetricFamily(
            "eventbus_bridge_worker_healthy",
            "1 while the worker process runs and its bridge is healthy.",
            labels=labels,
        )
        restarts = core.CounterMetricFamily(
            "eventbus_bridge_worker_restarts",
            "Times the daemon restarted the worker after it exited on its own.",
            labels=labels,
        )
        for index in range(reports.count):
            worker = [reports.service, str(index)]
            healthy.add_metric(worker, 1.0 if reports.worker_healthy(index) else 0.0)
            restarts.add_metric(worker, reports.restarts.get(index, 0))
        yield healthy
        yield restarts


def supervise(config: Config, stop: threading.Event, received: list[int]) -> int:
    """Run ``config.workers`` worker processes until ``stop`` is set (by a signal, see
    ``_daemon.run``); return the daemon's exit status. Raises DaemonError for what
    stops it before the workers start (a bad configuration, an unreachable broker)."""
    started = time.monotonic()
    log.info(
        "service %s starting (pid %d): %d worker processes, %d route(s)",
        config.service,
        os.getpid(),
        config.workers,
        len(config.routes),
    )
    reports = WorkerReports(config.service, config.routes, config.workers)
    metrics = start_metrics(config, extra=[WorkerCollector(reports)])  # /healthz: 503
    try:
        try:
            preflight(config)  # what each worker would refuse, refused once
        except ConfigError as exc:
            raise DaemonError(str(exc), EXIT_CONFIG) from exc
        transport = connect(config)  # the broker answers: the workers may start
        try:
            check_topics(config, transport)
            reports.transport = transport
            if metrics is not None:
                metrics.bridge = reports
            return _Supervisor(config, reports, stop, received, started).serve()
        finally:
            transport.close()
    finally:
        if metrics is not None:
            metrics.close()


class _Supervisor:
    """Starts, watches, restarts and stops the worker processes of one daemon."""

    def __init__(
        self,
        config: Config,
        reports: WorkerReports,
        stop: threading.Event,
        received: list[int],
        started: float,
    ) -> None:
        self._config = config
        self._reports = reports
        self._stop = stop
        self._received = received
        self._started = started
        self._context = multiprocessing.get_context("spawn")
        self._drain = self._context.Event()  # set: every worker drains and exits
        self._workers = [_Worker(i) for i in range(config.workers)]

    def serve(self) -> int:
        for worker in self._workers:
            self._spawn(worker)
        ready = False
        status: int | None = None
        while status is None and not self._stop.is_set():
            self._step(0.2)
            now = time.monotonic()
            for worker in self._workers:
                if worker.restart_at is not None and now >= worker.restart_at:
                    self._spawn(worker)
                if worker.status == EXIT_CONFIG:
                    log.error(
                        "worker %d exited with status %d (a configuration error, see its "
                        "log above): stopping the daemon",
                        worker.index,
                        EXIT_CONFIG,
                    )
                    status = EXIT_CONFIG
            if not ready and self._reports.healthy:
                ready = True
                log.info(
                    "ready: service %s, group %s, %d workers, in %.1f s",
                    self._config.service,
                    self._config.group or self._config.service,
                    len(self._workers),
                    time.monotonic() - self._started,
                )
        if status is None and self._received:
            name = signal.Signals(self._received[0]).name
            log.info("%s received: draining %d workers", name, self._running())
        return self._stop_all(status)

    def _spawn(self, worker: _Worker) -> None:
        reader, writer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker_main,
            args=(worker_config(self._config, worker.index), worker.index, writer, self._drain),
            kwargs={"parent": os.getpid()},
            name=f"{self._config.service}-w{worker.index}",
        )
        process.start()
        writer.close()  # the worker holds the only writing end: EOF when it exits
        worker.process, worker.reports = process, reader
        worker.started, worker.restart_at, worker.status = time.monotonic(), None, None
        log.info("worker %d started (pid %s)", worker.index, process.pid)

    def _running(self) -> int:
        return sum(1 for w in self._workers if w.process is not None)

    def _step(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for reports or exits, and take them in."""
        waiting: list[Any] = []
        for worker in self._workers:
            if worker.process is not None and worker.reports is not None:
                waiting += [worker.reports, worker.process.sentinel]
        if not waiting:
            time.sleep(timeout)
            return
        wait(waiting, timeout)
        for worker in self._workers:
            self._take_reports(worker)
            if worker.process is not None and not worker.process.is_alive():
                self._exited(worker)

    def _take_reports(self, worker: _Worker) -> None:
        conn = worker.reports
        try:
            while conn is not None and conn.poll():
                healthy, stats = conn.recv()
                self._reports.update(worker.index, healthy, stats)
        except (EOFError, OSError):
            pass  # the worker exited: its sentinel says so

    def _exited(self, worker: _Worker) -> None:
        process = worker.process
        assert process is not None and worker.reports is not None
        process.join()
        self._take_reports(worker)
        worker.reports.close()
        self._reports.retire(worker.index)
        code = process.exitcode if process.exitcode is not None else EXIT_FAILED
        worker.process, worker.reports, worker.status = None, None, code
        if self._drain.is_set() or code == EXIT_CONFIG:
            return
        ran = time.monotonic() - worker.started
        if ran >= STABLE_AFTER:
            worker.backoff = RESTART_BACKOFF
        delay = worker.backoff
        worker.backoff = min(worker.backoff * 2, MAX_RESTART_BACKOFF)
        worker.restarts += 1
        self._reports.restarts[worker.index] = worker.restarts
        worker.restart_at = time.monotonic() + delay
        log.warning(
            "worker %d (pid %s) exited with %s after %.1f s: restarting it in %.1f s (restart %d)",
            worker.index,
            process.pid,
            _describe(code),
            ran,
            delay,
            worker.restarts,
        )

    def _stop_all(self, status: int | None) -> int:
        """Ask every worker to drain; wait for them (kill those that take too long)."""
        self._reports.stopping = True
        self._drain.set()
        for worker in self._workers:
            worker.restart_at = None
        deadline = time.monotonic() + self._config.drain_timeout + STOP_GRACE
        while self._running() and time.monotonic() < deadline:
            self._step(0.2)
        clean = True
        for worker in self._workers:
            if worker.process is not None:
                log.error(
                    "worker %d (pid %s) did not stop within %.0f s: killed",
                    worker.index,
                    worker.process.pid,
                    self._config.drain_timeout + STOP_GRACE,
                )
                worker.process.kill()
                self._exited(worker)
                clean = False
            elif worker.status not in (EXIT_OK, None):
                log.error("worker %d stopped with %s", worker.index, _describe(worker.status))
                clean = False
        log.info("stopped: %s", summary(self._reports.stats))
        if status is not None:
            return status
        return EXIT_OK if clean else EXIT_FAILED


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


__all__ = ["WorkerCollector", "WorkerReports", "supervise", "worker_config"]
