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
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from types import FrameType

from eventbus import EventBus, default_bus

from ._bridge import Bridge
from ._config import Config, masked
from ._errors import ConfigError, TransportError
from ._metrics import require_prometheus, serve_metrics
from ._transport import Transport

log = logging.getLogger("bridge.daemon")

EXIT_OK = 0
EXIT_FAILED = 1  # the bridge failed while running
EXIT_CONFIG = 2  # bad command line, configuration, or handler module
EXIT_UNAVAILABLE = 3  # the broker could not be reached, or the bridge not made ready

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
HEALTH_CHECK_INTERVAL = 1.0


class DaemonError(Exception):
    """A failure that ends the daemon with ``status`` and a one-line ``message``."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def configure_logging(level: str) -> None:
    """Log to stderr, one line per record, at ``level`` (a logging level name)."""
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr, force=True)


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


def connect(config: Config, transport: Transport | None = None) -> Transport:
    """Return a transport that reached the broker within ``config.ready_timeout``.

    Raises DaemonError (EXIT_CONFIG for bad Kafka settings, EXIT_UNAVAILABLE when the
    broker does not answer in time).
    """
    try:
        transport = transport if transport is not None else config.make_transport()
    except ConfigError as exc:
        raise DaemonError(str(exc), EXIT_CONFIG) from exc
    except Exception as exc:  # librdkafka rejects a property: KafkaException, ValueError
        raise DaemonError(f"bad [kafka] settings: {_one_line(exc)}", EXIT_CONFIG) from exc
    try:
        transport.list_topics(timeout=max(config.ready_timeout, 0.1))
    except TransportError as exc:
        transport.close()
        raise DaemonError(
            f"cannot reach the Kafka broker at {config.bootstrap or '?'} within "
            f"{config.ready_timeout:g} s: {exc}",
            EXIT_UNAVAILABLE,
        ) from exc
    return transport


@contextlib.contextmanager
def hosted(
    config: Config, bus: EventBus = default_bus, transport: Transport | None = None
) -> Iterator[Bridge | None]:
    """Import the configured modules and bridge ``bus`` for the duration of the block.

    Without routes there is nothing to bridge: no broker is contacted and the block gets
    None (a monolith). Otherwise it gets the started bridge, which is stopped (drained)
    at the end. Raises DaemonError when the modules, the broker or the bridge fail.
    """
    try:
        import_modules(config.modules)
    except ConfigError as exc:
        raise DaemonError(str(exc), EXIT_CONFIG) from exc
    if not config.routes:
        log.info("service %s: no routes, local signals only", config.service)
        yield None
        return
    transport = connect(config, transport)
    try:
        bridge = config.build_bridge(bus, transport)
        _start(bridge)
        try:
            yield bridge
        finally:
            bridge.stop()
    finally:
        transport.close()


def run(config: Config, transport: Transport | None = None, bus: EventBus = default_bus) -> int:
    """Serve ``config`` until SIGTERM or SIGINT; return the process exit status.

    0 after a clean drain; 1 if the bridge failed while running; 2 for a bad handler
    module or bad Kafka settings; 3 if the broker could not be reached or the bridge
    not made ready within ``ready_timeout``. A second signal exits at once (128+signal).
    """
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if received:
            sys.stderr.write(f"{signal.Signals(signum).name} again: exiting without draining\n")
            os._exit(128 + signum)
        received.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _serve(config, transport, bus, stop, received)
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
) -> int:
    log.info(
        "service %s starting (pid %d): %d route(s), kafka %s",
        config.service,
        os.getpid(),
        len(config.routes),
        ", ".join(f"{k}={v}" for k, v in sorted(masked(config.kafka).items())) or "-",
    )
    try:
        if config.metrics_port is not None:
            require_prometheus()  # fail before connecting, not after
        import_modules(config.modules)
    except ConfigError as exc:
        raise DaemonError(str(exc), EXIT_CONFIG) from exc
    transport = connect(config, transport)
    metrics = None
    try:
        bridge = config.build_bridge(bus, transport)
        if config.metrics_port is not None:
            try:
                metrics = serve_metrics(bridge, config.metrics_host, config.metrics_port)
            except ConfigError as exc:
                raise DaemonError(str(exc), EXIT_CONFIG) from exc
            log.info("metrics and health on http://%s:%d/", config.metrics_host, metrics.port)
        started = time.monotonic()
        _start(bridge)
        log.info(
            "ready: service %s, group %s, %d route(s), in %.1f s",
            config.service,
            bridge.group,
            len(config.routes),
            time.monotonic() - started,
        )
        status = EXIT_OK
        while not stop.wait(HEALTH_CHECK_INTERVAL):
            if not bridge.healthy:
                log.error("the bridge failed (see above): stopping")
                status = EXIT_FAILED
                break
        if received:
            log.info(
                "%s received: draining (a second signal exits at once)",
                signal.Signals(received[0]).name,
            )
        bridge.stop()
        s = bridge.stats
        log.info(
            "stopped: %d in, %d handled, %d retried, %d dead-lettered; %d out, %d delivered, "
            "%d failed",
            s.received,
            s.handled,
            s.retried,
            s.dead_lettered,
            s.produced,
            s.delivered,
            s.delivery_failed,
        )
        return status
    finally:
        if metrics is not None:
            metrics.close()
        transport.close()


def _start(bridge: Bridge) -> None:
    try:
        bridge.start()
    except TransportError as exc:  # NotReadyError included
        raise DaemonError(f"the bridge did not start: {exc}", EXIT_UNAVAILABLE) from exc
    except ConfigError as exc:
        raise DaemonError(str(exc), EXIT_CONFIG) from exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _where(exc: BaseException) -> str:
    # The innermost frame of the failing module's own code says where to look.
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if "importlib" not in f.filename and f.filename != __file__
    ]
    if isinstance(exc, SyntaxError) or not frames:
        return ""
    return f" (at {frames[-1].filename}:{frames[-1].lineno})"
