"""Handlers for the crash test, hosted by the real daemon (``eventbus-bridge run``).

The daemon imports this module (``[bridge] modules``); it registers on
``eventbus.default_bus``. The handler appends ``<ce_id> <n>`` to the file named by
``CRASH_TEST_OUT`` and flushes, so the file records each run of the handler even if the
process is killed right after.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from eventbus import default_bus

_handled = open(os.environ["CRASH_TEST_OUT"], "a", buffering=1)  # noqa: SIM115 - for the process's life


_lock = threading.Lock()  # handlers run on several threads with [bridge] concurrency


@default_bus.on("load.*")
def handle(sender: Any, *, n: int, **_: Any) -> None:
    with _lock:
        _handled.write(f"{sender.id} {n}\n")
        _handled.flush()
