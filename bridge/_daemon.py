"""The bridge daemon: host a service's handler modules on ``eventbus.default_bus``.

``run(config)`` is ``eventbus-bridge run``: import the modules, reach the broker, start
the bridge, serve until SIGTERM or SIGINT, then drain (``Bridge.stop()``) and return the
exit status. Only the daemon installs signal handlers; the library never does.

``hosted(config)`` is the same without the waiting and the signals, for an application
that runs its own work inside (the demo's user service does).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import sys
import sysconfig
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import FrameType
from typing import Any

from eventbus import EventBus, default_bus

from ._bridge import Bridge
from ._config import Config, masked
from ._errors import ConfigError, TransportError
from ._metrics import MetricsServer, require_prometheus, serve_metrics
from ._stats import Stats
from ._transport import Transport

log = logging.getLogger("bridge.daemon")

EXIT_OK = 0
EXIT_FAILED = 1  # the bridge failed while running
EXIT_CONFIG = 2  # bad command line, configuration, or handler module
EXIT_UNAVAILABLE = 3  # the broker could not be reached, or the bridge not made ready

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
HEALTH_CHECK_INTERVAL = 1.0
CONNECT_STEP = 0.5  # seconds per attempt to reach the broker: signals wait no longer
WAIT_LOG_INTERVAL = 5.0  # seconds between two lines on what the daemon waits for


class DaemonError(Exception):
    """A failure that ends the daemon with ``status`` and a one-line ``message``."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def configure_logging(level: str, name_suffix: str = "") -> None:
    """Log to stderr, one line per record, at ``level`` (a logging level name);
    ``name_suffix`` follows each logger's name (a worker's ``[w1]``)."""
    fmt = LOG_FORMAT.replace("%(name)s", "%(name)s" + name_suffix.replace("%", "%%"))
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr, force=True)


def import_modules(modules: Sequence[str]) -> None:
    """Import the handler modules in order; ConfigError naming the one that fails.

    The working directory is put on the import path first (as ``python -m`` does), so a
    service's own packages import from where the daemon was started.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            log.debug("importing %s failed", name, exc_info=True)
            raise ConfigError(
                f"cannot import handler module {name!r}: {_one_line(exc)}" + _where(exc)
            ) from exc
        log.info("imported handler module %s", name)


def preflight(
    config: Config, bus: EventBus = default_bus, transport: Transport | None = None
) -> None:
    """Everything ``run`` checks before it contacts the broker, and ``check`` too (so
    the two agree): prometheus-client for a metrics port, the handler modules and their
    handlers, the files of the outbox and the dedup store, and the ``[kafka]`` settings
    built into each librdkafka client. Raises ConfigError."""
    if config.metrics_port is not None:
        require_prometheus()
    import_modules(config.modules)
    config.check_handlers(bus)
    config.check_files()
    if transport is not None:
        transport.validate()
    elif config.routes:
        made = config.make_transport()
        try:
            made.validate()
        finally:
            made.close()


def missing_topics(config: Config, topics: Mapping[str, int]) -> list[str]:
    """The topics of ``config`` (route and dead-letter topics) not among ``topics`` while
    ``create_topics`` is false: ``run`` refuses to start without them (exit 2)."""
    if config.create_topics:
        return []
    names = [r.topic for r in config.routes]
    names += [r.dead_letter_topic for r in config.routes if r.is_inbound]
    return [name for name in dict.fromkeys(names) if name not in topics]


def connect(config: Config, transport: Transport | None = None) -> Transport:
    """Return a transport that reached the broker within ``config.ready_timeout``.

    The broker is asked in steps of at most ``CONNECT_STEP`` seconds, so that a signal
    (Ctrl-C, SIGTERM) is served within about that long. Raises DaemonError (EXIT_CONFIG
    for bad Kafka settings, EXIT_UNAVAILABLE when the broker does not answer in time),
    or ``Interrupted`` when the daemon's ``stop`` event is set meanwhile.
    """
    try:
        transport = transport if transport is not None else config.make_transport()
    except ConfigError as exc:
        raise DaemonError(str(exc), EXIT_CONFIG) from exc
    except Exception as exc:  # librdkafka rejects a property: KafkaException, ValueError
        raise DaemonError(f"bad [kafka] settings: {_one_line(exc)}", EXIT_CONFIG) from exc
    deadline = time.monotonic() + max(config.ready_timeout, 0.1)
    log.debug("reaching the Kafka broker at %s", config.bootstrap or "?")
    while True:
        left = deadline - time.monotonic()
        try:
            transport.list_topics(timeout=max(0.05, min(CONNECT_STEP, left)))
            return transport
        except TransportError as exc:
            if _stop.is_set():
                transport.close()
                raise Interrupted from None
            if time.monotonic() < deadline:
                continue
            transport.close()
            raise DaemonError(
                f"cannot reach the Kafka broker at {config.bootstrap or '?'} within "
                f"{config.ready_timeout:g} s: {exc}",
                EXIT_UNAVAILABLE,
            ) from exc
        except BaseException:
            transport.close()
            if _stop.is_set():  # a KeyboardInterrupt inside librdkafka's C code may
                raise Interrupted from None  # come out as another error (a TypeError)
            raise


def interrupt_on_sigint() -> Any:
    """Install a SIGINT handler for the short-lived commands (check, emit, tail): it sets
    the stop event that ``connect`` checks and raises KeyboardInterrupt. Returns the
    previous handler."""

    def on_sigint(_signum: int, _frame: FrameType | None) -> None:
        _stop.set()
        raise KeyboardInterrupt

    _stop.clear()
    return signal.signal(signal.SIGINT, on_sigint)


def request_stop() -> None:
    """Ask the daemon running in this process to drain and stop, as its first signal
    would (a worker's parent asks this way: a signal could be the worker's second)."""
    _stop.set()


class Interrupted(Exception):
    """A signal asked the daemon to stop before it was ready: it stops at once."""


# Set by the daemon's signal handler; startup steps check it between their broker calls.
_stop = threading.Event()


@contextlib.contextmanager
def hosted(
    config: Config,
    bus: EventBus = default_bus,
    transport: Transport | None = None,
    *,
    wait: bool = True,
    on_bridge: Callable[[Bridge], object] | None = None,
) -> Iterator[Bridge | None]:
    """Import the configured modules and bridge ``bus`` for the duration of the block.

    Without routes there is nothing to bridge: no broker is contacted and the block gets
    None (a monolith). Otherwise it gets the started bridge, which is stopped (drained)
    at the end. Raises DaemonError when the modules, the broker, the topics or the bridge
    fail. ``wait=False`` enters the block before the group's assignment came (the daemon
    waits for it itself, see ``run``); ``on_bridge`` sees the bridge before it starts.
    """
    try:
        preflight(config, bus, transport)
    except ConfigError as exc:
        raise DaemonError(str(exc), EXIT_CONFIG) from exc
    if not config.routes:
        log.info("service %s: no routes, local signals only", config.service)
        yield None
        return
    if _stop.is_set():
        raise Interrupted
    transport = connect(config, transport)
    try:
        check_topics(config, transport)
        try:
            bridge = config.build_bridge(bus, transport)
        except ConfigError as exc:
            raise DaemonError(str(exc), EXIT_CONFIG) from exc
        if on_bridge is not None:
            on_bridge(bridge)
        _start(bridge, wait=wait)
        try:
            yield bridge
        finally:
            bridge.stop()
    finally:
        transport.close()


def check_topics(config: Config, transport: Transport) -> None:
    """DaemonError (status 2) naming the topics that are missing while
    ``create_topics`` is false."""
    if config.create_topics:
        return
    try:
        topics = transport.list_topics(timeout=max(config.ready_timeout, 0.1))
    except TransportError as exc:
        raise DaemonError(f"cannot list the topics: {exc}", EXIT_UNAVAILABLE) from exc
    missing = missing_topics(config, topics)
    if missing:
        raise DaemonError(
            f"{config.source}: topic(s) {', '.join(missing)} missing on "
            f"{config.bootstrap}, and create_topics = false: create them first",
            EXIT_CONFIG,
        )


def run(
    config: Config,
    transport: Transport | None = None,
    bus: EventBus = default_bus,
    *,
    on_start: Callable[[], object] | None = None,
    on_bridge: Callable[[Bridge], object] | None = None,
) -> int:
    """Serve ``config`` until SIGTERM or SIGINT; return the process exit status.

    0 after a clean drain, or when stopped by a signal before it was ready (within about
    a second: nothing was handled yet); 1 if the bridge failed while running; 2 for a
    bad handler module, bad Kafka settings or a missing topic it may not create; 3 if
    the broker could not be reached within ``ready_timeout``. Once the broker answers,
    the daemon waits for its group's assignment as long as the group needs (a crashed
    member's session must time out first), logging why every ``WAIT_LOG_INTERVAL``
    seconds. A second signal exits at once (128+signal).

    ``config.workers`` > 1: the daemon supervises that many worker processes, each
    serving ``config`` as above (``bridge._workers``). ``on_start`` is called once the
    signal handlers are installed, ``on_bridge`` with the bridge before it starts (a
    worker reports to its parent through them).
    """
    stop = _stop
    stop.clear()
    received: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if received:
            sys.stderr.write(f"{signal.Signals(signum).name} again: exiting without draining\n")
            os._exit(128 + signum)
        received.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if on_start is not None:
            on_start()
        if config.workers > 1:
            from ._workers import supervise

            return supervise(config, stop, received)
        return _serve(config, transport, bus, stop, received, on_bridge)
    except Interrupted:
        log.info("%s received while starting: stopped", _signal_name(received))
        return EXIT_OK
    except DaemonError as exc:
        log.error("%s", exc)
        return exc.status
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _serve(
    config: Config,
    transport: Transport | None,
    bus: EventBus,
    stop: threading.Event,
    received: list[int],
    on_bridge: Callable[[Bridge], object] | None = None,
) -> int:
    log.info(
        "service %s starting (pid %d): %d route(s), kafka %s",
        config.service,
        os.getpid(),
        len(config.routes),
        ", ".join(f"{k}={v}" for k, v in sorted(masked(config.kafka).items())) or "-",
    )
    metrics = start_metrics(config)  # first of all: /healthz answers (503) while starting

    def serve_metrics_of(bridge: Bridge) -> None:
        if metrics is not None:
            metrics.bridge = bridge
        if on_bridge is not None:
            on_bridge(bridge)

    started = time.monotonic()
    stats = None
    try:
        with hosted(config, bus, transport, wait=False, on_bridge=serve_metrics_of) as bridge:
            if bridge is None:
                return _serve_locally(config, stop, received, metrics)
            stats = bridge.stats
            if not _wait_ready(bridge, config, stop):
                log.info("%s received while starting: stopping", _signal_name(received))
                return EXIT_OK
            log.info(
                "ready: service %s, group %s, %d route(s), in %.1f s",
                config.service,
                bridge.group,
                len(config.routes),
                time.monotonic() - started,
            )
            status = EXIT_OK
            while not stop.wait(HEALTH_CHECK_INTERVAL):
                if bridge.failed:
                    log.error("the bridge failed (see above): stopping")
                    status = EXIT_FAILED
                    break
            if received:
                log.info(
                    "%s received: draining (a second signal exits at once)",
                    _signal_name(received),
                )
        log.info("stopped: %s", summary(stats))  # after the drain at the end of the block
        return status
    finally:
        if metrics is not None:
            metrics.close()


def start_metrics(config: Config, extra: Sequence[Any] = ()) -> MetricsServer | None:
    """Serve ``/metrics`` and ``/healthz`` (503 until a bridge is set on the server) when
    ``config`` has a metrics port, with ``extra`` collectors; else None."""
    if config.metrics_port is None:
        return None
    try:
        metrics = serve_metrics(
            None, config.metrics_host, config.metrics_port, config.service, extra
        )
    except ConfigError as exc:
        raise DaemonError(str(exc), EXIT_CONFIG) from exc
    log.info("metrics and health on http://%s:%d/", config.metrics_host, metrics.port)
    return metrics


def _serve_locally(
    config: Config, stop: threading.Event, received: list[int], metrics: MetricsServer | None
) -> int:
    """No routes: the modules' handlers serve local signals only (a monolith)."""
    if metrics is not None:
        metrics.local_only = True
    log.info("ready: service %s, no routes: local signals only, no broker", config.service)
    stop.wait()
    log.info("%s received: stopped", _signal_name(received))
    return EXIT_OK


def summary(s: Stats) -> str:
    """The counters in one line that accounts for every record: each one received was
    handled, dead-lettered, skipped (unrouted, duplicate, echo), or left unfinished at
    stop (it comes again); each one produced was delivered or failed."""
    settled = s.handled + s.dead_lettered + s.unrouted + s.duplicates + s.echoes
    return (
        f"{s.received} in: {s.handled} handled ({s.retried} retries), "
        f"{s.dead_lettered} dead-lettered, {s.unrouted} unrouted, {s.duplicates} duplicate(s), "
        f"{s.echoes} echo(es) skipped, {max(0, s.received - settled)} unfinished "
        f"(delivered again); {s.produced + s.in_flight} out: {s.delivered} delivered, "
        f"{s.delivery_failed} failed, {s.in_flight} in flight"
    )


def _wait_ready(bridge: Bridge, config: Config, stop: threading.Event) -> bool:
    """Wait until ``bridge`` has its partitions, as long as the group needs; False when
    stopped meanwhile. Logs what it waits for every ``WAIT_LOG_INTERVAL`` seconds."""
    started = time.monotonic()
    next_log = started + WAIT_LOG_INTERVAL
    while not bridge.ready:
        if bridge.failed:
            raise DaemonError("the bridge failed while starting (see above)", EXIT_FAILED)
        if stop.wait(0.1):
            return False
        now = time.monotonic()
        if now >= next_log:
            next_log = now + WAIT_LOG_INTERVAL
            topics = sorted({r.topic for r in bridge.routes if r.is_inbound})
            session = config.kafka.get("session.timeout.ms", f"{session_timeout_ms()} (default)")
            state = bridge.transport.describe_group(bridge.group, timeout=1.0)
            log.warning(
                "waiting %.0f s for an assignment of %s from group %r: the group is "
                "rebalancing, or a member that crashed (this service before a restart?) "
                "holds the partitions until its session times out (session.timeout.ms = %s)%s",
                now - started,
                ", ".join(topics),
                bridge.group,
                session,
                f"; {state}" if state else "",
            )
    return True


def session_timeout_ms() -> int:
    """The consumer's ``session.timeout.ms`` when the configuration does not set it."""
    from ._kafka import CONSUMER_DEFAULTS, LIBRDKAFKA_SESSION_TIMEOUT_MS

    return int(CONSUMER_DEFAULTS.get("session.timeout.ms", LIBRDKAFKA_SESSION_TIMEOUT_MS))


def _signal_name(received: Sequence[int]) -> str:
    return signal.Signals(received[0]).name if received else "a signal"


def _start(bridge: Bridge, *, wait: bool = True) -> None:
    try:
        bridge.start(wait=wait)
    except TransportError as exc:  # NotReadyError included
        raise DaemonError(f"the bridge did not start: {exc}", EXIT_UNAVAILABLE) from exc
    except ConfigError as exc:
        raise DaemonError(str(exc), EXIT_CONFIG) from exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _where(exc: BaseException) -> str:
    # The innermost frame of the user's own code says where to look: not the standard
    # library's (json.loads raising deep inside it), nor an installed library's, nor the
    # import machinery's; an installed service package counts when nothing else does.
    if isinstance(exc, SyntaxError):
        return ""  # its message names the file and the line already
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith("<")
        and "importlib" not in f.filename
        and f.filename != __file__
    ]
    own = [f for f in frames if not _under(f.filename, _LIBRARY_PATHS)]
    installed = [f for f in frames if not _under(f.filename, _STDLIB_PATHS)]
    chosen = own or installed or frames
    if not chosen:
        return ""
    return f" (at {chosen[-1].filename}:{chosen[-1].lineno})"


_STDLIB_PATHS = tuple(
    {os.path.realpath(sysconfig.get_paths()[k]) + os.sep for k in ("stdlib", "platstdlib")}
)
_LIBRARY_PATHS = _STDLIB_PATHS + tuple(
    {os.path.realpath(sysconfig.get_paths()[k]) + os.sep for k in ("purelib", "platlib")}
    | {
        os.path.dirname(os.path.realpath(module.__file__ or "")) + os.sep
        for module in (sys.modules["eventbus"], sys.modules[__package__ or "bridge"])
    }
)


def _under(filename: str, roots: tuple[str, ...]) -> bool:
    return os.path.realpath(filename).startswith(roots)
