"""Signal names and subscription patterns.

A name is a non-empty dotted string: segments of letters, digits, ``_`` and ``-``
separated by dots (``user.registered``). A pattern is a name whose segments may hold
``*`` (any characters within one segment) or be ``**`` (one or more whole segments):
``user.*`` matches ``user.registered`` but not ``user.email.changed``; ``user.**``
matches both; ``**`` matches every name.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ._errors import InvalidNameError

_SEGMENT = r"[A-Za-z0-9_\-]+"
_NAME = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT})*")
_PATTERN_SEGMENT = re.compile(r"(?:[A-Za-z0-9_\-]|\*)+")


def check_name(name: object) -> str:
    """Return ``name`` if it is a valid signal name; raise a clear error if not."""
    if not isinstance(name, str):
        raise TypeError(f"signal name must be a str, not {type(name).__name__}")
    if not _NAME.fullmatch(name):
        raise InvalidNameError(
            f"invalid signal name {name!r}: use dotted segments of letters, digits, _ or -"
        )
    return name


def is_pattern(text: str) -> bool:
    """Return True if ``text`` contains a wildcard."""
    return "*" in text


def compile_pattern(pattern: object) -> Callable[[str], bool]:
    """Return a predicate telling whether a signal name matches ``pattern``."""
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a str, not {type(pattern).__name__}")
    segments = pattern.split(".")
    parts: list[str] = []
    for segment in segments:
        if segment == "**":
            parts.append(r"[^.]+(?:\.[^.]+)*")
        elif _PATTERN_SEGMENT.fullmatch(segment) and "**" not in segment:
            parts.append(r"[^.]*".join(re.escape(p) for p in segment.split("*")))
        else:
            raise InvalidNameError(
                f"invalid pattern {pattern!r}: segments are names, '*' wildcards or '**'"
            )
    regex = re.compile(r"\.".join(parts))

    def matches(name: str) -> bool:
        return regex.fullmatch(name) is not None

    return matches
