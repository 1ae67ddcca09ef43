"""Reruns: a record sent again for one service's handlers that failed, and no others.

A replay from a dead-letter topic (``eventbus-bridge dlq replay``) and a delayed retry
(``_retry_topics``) produce the original record again with three headers at its end:

* ``eventbus-rerun-service``: the service whose handlers failed; the bridges of other
  services skip the record (they handled the original already);
* ``eventbus-rerun-handlers``: a JSON list of the ``handler_name()`` of the handlers to
  run; absent when every handler of the type is to run (a record that failed before any
  handler ran, e.g. an invalid payload);
* ``eventbus-rerun-id``: what makes this copy unique (where it was replayed from, or
  which retry it is). The event is deduplicated as ``<ce_id>#<rerun id>``, so a rerun is
  handled even though its first delivery's id was seen, and a rerun delivered twice is
  handled once. It is always the record's last header: a bridge looks at the last
  header only, so ordinary records pay nothing for this.

Nothing here executes anything from the record: the handler names are matched against
the handlers registered on the bus, never imported or looked up by name.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import NamedTuple

RERUN_PREFIX = "eventbus-rerun-"
RERUN_SERVICE = RERUN_PREFIX + "service"
RERUN_HANDLERS = RERUN_PREFIX + "handlers"
RERUN_ID = RERUN_PREFIX + "id"
MAX_HANDLERS = 1000
"""A rerun naming more handlers than this is refused (hostile headers)."""


class Rerun(NamedTuple):
    """The rerun headers of a record, checked."""

    service: str
    handlers: frozenset[str] | None
    """The handlers to run, or None for all of them."""
    id: str


class RerunError(ValueError):
    """The rerun headers of a record are malformed (the record is dead-lettered)."""


def rerun_headers(
    service: str, handlers: Sequence[str] | None, rerun_id: str
) -> list[tuple[str, bytes]]:
    """The headers that make a record a rerun; they go at the end of its headers."""
    headers = [(RERUN_SERVICE, service.encode())]
    if handlers is not None:
        headers.append((RERUN_HANDLERS, json.dumps(list(handlers)).encode()))
    headers.append((RERUN_ID, rerun_id.encode()))
    return headers


def is_rerun(headers: Sequence[tuple[str, bytes]]) -> bool:
    """True if the record's last header is ``eventbus-rerun-id`` (cheap: one comparison)."""
    return bool(headers) and headers[-1][0] == RERUN_ID


def read_rerun(headers: Sequence[tuple[str, bytes]]) -> Rerun:
    """The rerun headers of a record; ``RerunError`` saying what is wrong with them."""
    found = dict(headers)
    service = _text(found.get(RERUN_SERVICE), RERUN_SERVICE)
    rerun_id = _text(found.get(RERUN_ID), RERUN_ID)
    raw = found.get(RERUN_HANDLERS)
    handlers: frozenset[str] | None = None
    if raw is not None:
        try:
            names = json.loads(raw) if isinstance(raw, bytes) else None
        except ValueError:
            names = None
        if (
            not isinstance(names, list)
            or not names
            or len(names) > MAX_HANDLERS
            or not all(isinstance(n, str) and n for n in names)
        ):
            raise RerunError(
                f"header {RERUN_HANDLERS} is not a JSON list of 1-{MAX_HANDLERS} handler names"
            )
        handlers = frozenset(names)
    return Rerun(service, handlers, rerun_id)


def without_rerun(headers: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """``headers`` without any ``eventbus-rerun-*`` header."""
    return [h for h in headers if not h[0].startswith(RERUN_PREFIX)]


def _text(raw: bytes | None, name: str) -> str:
    if not isinstance(raw, bytes) or not raw or len(raw) > 1024:
        raise RerunError(f"header {name} is missing, empty or too long")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise RerunError(f"header {name} is not UTF-8") from None
