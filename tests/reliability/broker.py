"""A private single-node Kafka broker for the fault tests: one this test can freeze.

``scripts/kafka`` runs one shared broker; the outage test must stop and restart a broker
without disturbing other tests, so it runs its own with the same jars, the same settings
and the same readiness probe (functions of ``scripts/kafka``), in a temporary directory.
An outage is ``SIGSTOP`` of the JVM, the end of it ``SIGCONT``: to clients a frozen broker
looks like a dead host (connections hang, requests time out), and it comes back with its
data, as a restarted broker would.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import os
import signal
import subprocess
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _script() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("kafka_script", str(ROOT / "scripts" / "kafka"))
    spec = importlib.util.spec_from_loader("kafka_script", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


class PrivateBroker:
    """Start with ``start()``, get ``bootstrap``; ``freeze()``/``thaw()``; ``stop()``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.bootstrap = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> str:
        kafka = _script()
        kafka.ensure_jars()  # checks the cache; fetches only if it is incomplete
        java = kafka.java_cmd()
        port, controller = kafka.free_port(), kafka.free_port()
        while controller == port:
            controller = kafka.free_port()
        data = self.workdir / "data"
        data.mkdir(parents=True)
        # The script's own config, written to our directory instead of the shared one.
        props = self.workdir / "server.properties"
        kafka.PROPS = props
        kafka.write_config(port, controller, data)
        fmt = [*java, "kafka.tools.StorageTool", "format", "--standalone"]
        fmt += ["-t", kafka.cluster_id(), "-c", str(props)]
        log = self.workdir / "kafka.log"
        with log.open("w") as out:
            subprocess.run(fmt, stdout=out, stderr=subprocess.STDOUT, check=True)
            self._proc = subprocess.Popen(
                [*java[:1], *kafka.HEAP, "-XX:+UseG1GC", *java[1:], "kafka.Kafka", str(props)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while why := kafka.probe(port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"private broker did not start ({why}); see {log}")
            time.sleep(0.2)
        self.bootstrap = f"{kafka.HOST}:{port}"
        return self.bootstrap

    def freeze(self) -> None:
        """The outage begins: the broker process stops (SIGSTOP)."""
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """The outage ends: the broker process continues (SIGCONT)."""
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._proc.pid, signal.SIGCONT)
            self._proc.terminate()
        try:
            self._proc.wait(20)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None
