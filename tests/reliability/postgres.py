"""A private PostgreSQL server for the fault tests: one a test may restart.

The shared server (``scripts/postgres``, POSTGRES_URL) serves every database test; the
restart test must not disturb them, so it runs its own with the script's ``Server`` (the
same binaries, settings and unprivileged user) in a temporary directory.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _script() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader(
        "postgres_script", str(ROOT / "scripts" / "postgres")
    )
    spec = importlib.util.spec_from_loader("postgres_script", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


class PrivatePostgres:
    """``start()`` gives the URL (psycopg driver); ``restart()``; ``stop()`` deletes it all."""

    def __init__(self) -> None:
        script = _script()
        # In /tmp: the server's unprivileged user must reach it.
        self.top = Path(tempfile.mkdtemp(prefix="eventbus-pg-test-"))
        os.chmod(self.top, 0o755)
        self.server: Any = script.Server(
            self.top / "data", script.free_port(), self.top / "postgres.log"
        )

    def start(self) -> str:
        self.server.init()
        self.server.start()
        return "postgresql+psycopg://" + self.server.url.removeprefix("postgresql://")

    def restart(self) -> None:
        """Fast shutdown (every session is cut), then start again on the same data."""
        self.server.restart()

    def stop(self) -> None:
        self.server.stop()
        shutil.rmtree(self.top, ignore_errors=True)
