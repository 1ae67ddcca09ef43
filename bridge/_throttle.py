"""Log lines for conditions that repeat: the first one in full, then a count.

A broker outage or a missing topic fails every record the same way; one log line per
record hides everything else. ``LogThrottle`` logs a condition (a key) the first time,
counts its repeats for ``interval`` seconds, then logs the next one with how many were
left out; ``flush()`` logs the counts still pending (at stop).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["LogThrottle"]


class LogThrottle:
    """Logs each condition once per ``interval`` seconds, with the count of its repeats.

    Thread safe. ``clock`` is for tests.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        # key -> [when its line was last logged, repeats left out since, level, msg, args]
        self._seen: dict[Hashable, list[Any]] = {}

    def log(self, level: int, key: Hashable, msg: str, *args: Any) -> None:
        """Log ``msg % args`` at ``level`` unless ``key`` was logged less than
        ``interval`` seconds ago (then it is counted, and said with the next line)."""
        now = self._clock()
        with self._lock:
            entry = self._seen.get(key)
            if entry is not None and now - entry[0] < self.interval:
                entry[1] += 1
                entry[2:] = [level, msg, args]
                return
            left_out = entry[1] if entry is not None else 0
            if len(self._seen) > 1000:  # many distinct conditions: forget the old ones
                self._seen.clear()
            self._seen[key] = [now, 0, level, msg, args]
        if left_out:
            self.logger.log(
                level,
                msg + " (and %d more like it in the last %.0f s)",
                *args,
                left_out,
                self.interval,
            )
        else:
            self.logger.log(level, msg, *args)

    def flush(self) -> None:
        """Log the repeats counted and not yet said (one line per condition)."""
        with self._lock:
            pending = [e for e in self._seen.values() if e[1]]
            self._seen.clear()
        for _at, left_out, level, msg, args in pending:
            self.logger.log(level, msg + " (%d more like it since the first)", *args, left_out)
