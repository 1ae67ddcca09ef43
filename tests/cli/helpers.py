"""Helpers for the CLI and daemon tests: child processes whose output can be waited on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]

RECORDER = '''
"""Handler module for the daemon tests: appends each event to $RECORD_FILE."""
import json, os, time
from eventbus import default_bus

@default_bus.on("test.*")
def record(sender, **payload):
    time.sleep(float(os.environ.get("HANDLER_DELAY", "0")))
    with open(os.environ["RECORD_FILE"], "a") as f:
        f.write(json.dumps({"pid": os.getpid(), **payload}) + "\\n")
'''


class Proc:
    """A child process (``python ARGS``); its stdout and stderr lines are collected."""

    def __init__(
        self, args: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.lines: list[str] = []
        self.stdout: list[str] = []
        self._cond = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, *args],
            cwd=cwd or ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdin=subprocess.DEVNULL,  # never a terminal: nothing may wait for input
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._threads = [
            threading.Thread(target=self._read, args=(self.process.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, False), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read(self, stream: IO[str] | None, is_stdout: bool) -> None:
        assert stream is not None
        with stream:
            for raw in stream:
                with self._cond:
                    self.lines.append(raw.rstrip("\n"))
                    if is_stdout:
                        self.stdout.append(raw.rstrip("\n"))
                    self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        """Return the first line containing ``text``; fail if the process exits or time ends."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                if self.process.poll() is not None and not any(t.is_alive() for t in self._threads):
                    raise AssertionError(
                        f"exited ({self.process.returncode}) before {text!r}:\n{self.output}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {text!r} within {timeout} s:\n{self.output}")
                self._cond.wait(min(left, 0.1))

    def finish(self, timeout: float = 30.0) -> int:
        """Wait for the exit status (kill and fail after ``timeout``)."""
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"did not exit within {timeout} s:\n{self.output}") from None
        for thread in self._threads:
            thread.join(5)
        return status

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def cli(*args: str, timeout: float = 60.0, **kwargs: Any) -> Proc:
    """Run ``python -m bridge ARGS`` to the end; return it (``.process.returncode`` set)."""
    proc = Proc(["-m", "bridge", *args], **kwargs)
    proc.finish(timeout)
    return proc


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def records(path: Path) -> list[dict[str, Any]]:
    """The events the recorder module wrote to ``path``."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
