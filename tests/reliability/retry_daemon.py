"""Handlers for the retry crash test, hosted by the real daemon (``eventbus-bridge run``).

``handle`` appends ``<ce_id> <n> ok`` (or ``fail``) to the file named by
``RETRY_TEST_OUT`` and flushes; it fails for every tenth event while the file named by
``RETRY_TEST_BROKEN`` exists. ``count`` never fails (it must run once per event).
"""

from __future__ import annotations

import os
from typing import Any

from eventbus import default_bus

_out = open(os.environ["RETRY_TEST_OUT"], "a", buffering=1)  # noqa: SIM115 - for the process's life
_broken = os.environ["RETRY_TEST_BROKEN"]


@default_bus.on("load.*")
def count(sender: Any, *, n: int, **_: Any) -> None:
    _out.write(f"{sender.id} {n} count\n")
    _out.flush()


@default_bus.on("load.*")
def handle(sender: Any, *, n: int, **_: Any) -> None:
    if n % 10 == 0 and os.path.exists(_broken):
        _out.write(f"{sender.id} {n} fail\n")
        _out.flush()
        raise ConnectionError(f"dependency down for {n}")
    _out.write(f"{sender.id} {n} ok\n")
    _out.flush()
