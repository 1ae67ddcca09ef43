"""Routes: which signals go to, or come from, which topic."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from eventbus import EventBus, InvalidNameError, check_name, compile_pattern

from ._errors import ConfigError

Direction = Literal["in", "out", "both"]
_TOPIC = re.compile(r"[A-Za-z0-9._\-]{1,249}")
RETRY_TOPIC = "{topic}.retry.{delay}"
"""The default name of a route's delayed retry topics."""
MAX_RETRIES = 20
MAX_RETRY_DELAY = 7 * 86_400.0


def check_topic(topic: object) -> str:
    """Return ``topic`` if it is a legal Kafka topic name; ConfigError if not."""
    if not isinstance(topic, str) or not _TOPIC.fullmatch(topic) or topic in (".", ".."):
        raise ConfigError(
            f"invalid topic name {topic!r}: 1-249 characters of letters, digits, '.', '_', '-'"
        )
    return topic


@dataclass(frozen=True, slots=True)
class Route:
    """Ties signal names or patterns to a topic, in a direction.

    * ``out``: events emitted on the bus are produced to ``topic``; ``key`` names the
      payload field whose value (as UTF-8 text) becomes the record key, so one entity's
      events stay in one partition, in order. A missing key field is an error at emit.
    * ``in``: records on ``topic`` whose type matches ``signals`` are emitted on the bus.
      Records that keep failing go to ``dlq`` (default ``<topic>.dlq``). With
      ``retry_delays`` (seconds), a record whose handlers still fail after the in-place
      attempts goes to a delayed retry topic per delay (``retry_topic``, a template with
      ``{topic}`` and ``{delay}``: ``orders.retry.10s``), and is handled again once due,
      its failed handlers only; after the last delay, the dead-letter topic. A retried
      record leaves its key's order (later records of the key do not wait for it).
    * ``both``: the two at once, without echo (the bridge never re-publishes what it
      received, and skips its own records when they come back).
    """

    signals: tuple[str, ...]
    topic: str
    direction: Direction = "out"
    key: str | None = None
    dlq: str | None = None
    retry_delays: tuple[float, ...] = ()
    retry_topic: str = RETRY_TOPIC

    def __post_init__(self) -> None:
        signals = (self.signals,) if isinstance(self.signals, str) else tuple(self.signals)
        if not signals:
            raise ConfigError("a route needs at least one signal name or pattern")
        for signal in signals:
            try:
                if isinstance(signal, str) and "*" in signal:
                    compile_pattern(signal)
                else:
                    check_name(signal)
            except (InvalidNameError, TypeError) as exc:
                raise ConfigError(f"route to {self.topic!r}: {exc}") from None
        object.__setattr__(self, "signals", signals)
        check_topic(self.topic)
        if self.direction not in ("in", "out", "both"):
            raise ConfigError(
                f"route to {self.topic!r}: direction must be 'in', 'out' or 'both', "
                f"not {self.direction!r}"
            )
        if self.key is not None and (not isinstance(self.key, str) or not self.key):
            raise ConfigError(f"route to {self.topic!r}: key must be a payload field name")
        if self.dlq is not None:
            check_topic(self.dlq)
            if self.dlq == self.topic:
                raise ConfigError(f"route to {self.topic!r}: the dead-letter topic must differ")
        self._check_retries()

    def _check_retries(self) -> None:
        where = f"route to {self.topic!r}"
        delays = self.retry_delays
        if isinstance(delays, str | bytes) or not isinstance(delays, Sequence):
            raise ConfigError(f"{where}: retry_delays must be a list of durations")
        checked = []
        for delay in delays:
            if isinstance(delay, bool) or not isinstance(delay, int | float):
                raise ConfigError(f"{where}: retry delay {delay!r} is not a number of seconds")
            if not 0.001 <= delay <= MAX_RETRY_DELAY:
                raise ConfigError(
                    f"{where}: retry delay {delay!r} must be from 1 ms to {MAX_RETRY_DELAY:g} s"
                )
            checked.append(float(delay))
        if len(checked) > MAX_RETRIES:
            raise ConfigError(f"{where}: at most {MAX_RETRIES} retry delays")
        object.__setattr__(self, "retry_delays", tuple(checked))
        if checked and not self.is_inbound:
            raise ConfigError(f"{where}: retry_delays is for inbound routes")
        template = self.retry_topic
        if not isinstance(template, str) or "{delay}" not in template:
            raise ConfigError(f"{where}: retry_topic must be a template with {{delay}}")
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
            if not fields <= {"topic", "delay"}:
                raise ValueError(fields)
            names = self.retry_topics
        except (KeyError, IndexError, ValueError):
            raise ConfigError(
                f"{where}: retry_topic {template!r}: only {{topic}} and {{delay}} may be used"
            ) from None
        for name in names:
            check_topic(name)
            if name in (self.topic, self.dead_letter_topic):
                raise ConfigError(f"{where}: retry topic {name!r} must differ from the others")

    @classmethod
    def outbound(cls, signals: str | Sequence[str], *, topic: str, key: str | None = None) -> Route:
        """Route local events matching ``signals`` out to ``topic``."""
        return cls(_tuple(signals), topic, "out", key=key)

    @classmethod
    def inbound(
        cls,
        signals: str | Sequence[str],
        *,
        topic: str,
        dlq: str | None = None,
        retry_delays: Sequence[float] = (),
        retry_topic: str = RETRY_TOPIC,
    ) -> Route:
        """Route records of the types ``signals`` on ``topic`` in to the local bus."""
        return cls(
            _tuple(signals),
            topic,
            "in",
            dlq=dlq,
            retry_delays=tuple(retry_delays),
            retry_topic=retry_topic,
        )

    @classmethod
    def both(
        cls,
        signals: str | Sequence[str],
        *,
        topic: str,
        key: str | None = None,
        dlq: str | None = None,
        retry_delays: Sequence[float] = (),
        retry_topic: str = RETRY_TOPIC,
    ) -> Route:
        """Route ``signals`` out to ``topic`` and in from it."""
        return cls(
            _tuple(signals),
            topic,
            "both",
            key=key,
            dlq=dlq,
            retry_delays=tuple(retry_delays),
            retry_topic=retry_topic,
        )

    @property
    def is_outbound(self) -> bool:
        return self.direction in ("out", "both")

    @property
    def is_inbound(self) -> bool:
        return self.direction in ("in", "both")

    @property
    def dead_letter_topic(self) -> str:
        """Where records of this route that cannot be handled go."""
        return self.dlq or f"{self.topic}.dlq"

    @property
    def retry_topics(self) -> tuple[str, ...]:
        """The retry topic of each of ``retry_delays``, in order (a delay that repeats
        names the same topic)."""
        return tuple(
            self.retry_topic.format(topic=self.topic, delay=format_delay(d))
            for d in self.retry_delays
        )

    def matches(self, name: str) -> bool:
        """True if the signal ``name`` is covered by this route."""
        return any(compile_pattern(s)(name) if "*" in s else s == name for s in self.signals)


def unhandled_signals(route: Route, bus: EventBus) -> list[str]:
    """The signals (names or patterns) of ``route`` that no handler of ``bus`` covers.

    A pattern counts as covered when some handler's name or pattern can match a name it
    matches; where two patterns are hard to compare it counts as covered (this check
    refuses only what clearly has no handler).
    """
    subscribed = bus.subscriptions()
    return [s for s in route.signals if not any(overlaps(s, h) for h in subscribed)]


def overlaps(a: str, b: str) -> bool:
    """True if some signal name can match both ``a`` and ``b`` (names or patterns)."""
    if "*" not in a or "*" not in b:
        if "*" not in a and "*" not in b:
            return a == b
        pattern, name = (a, b) if "*" in a else (b, a)
        return compile_pattern(pattern)(name)
    if "**" in a.split(".") or "**" in b.split("."):
        return compile_pattern(a)(_example(b)) or compile_pattern(b)(_example(a))
    first, second = a.split("."), b.split(".")
    return len(first) == len(second) and all(map(_segments_overlap, first, second))


def _example(pattern: str) -> str:
    return ".".join("x" if seg == "**" else seg.replace("*", "x") for seg in pattern.split("."))


def _segments_overlap(a: str, b: str) -> bool:
    # Two glob segments share a name if their fixed starts and ends agree.
    start_a, start_b = a.split("*", 1)[0], b.split("*", 1)[0]
    end_a, end_b = a.rsplit("*", 1)[-1], b.rsplit("*", 1)[-1]
    if "*" not in a:
        start_a = end_a = a
    if "*" not in b:
        start_b = end_b = b
    return (start_a.startswith(start_b) or start_b.startswith(start_a)) and (
        end_a.endswith(end_b) or end_b.endswith(end_a)
    )


def format_delay(seconds: float) -> str:
    """A delay as a short name for topics: ``10s``, ``1m``, ``90s``, ``2h``, ``1d``, ``250ms``."""
    ms = round(seconds * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _tuple(signals: str | Sequence[str]) -> tuple[str, ...]:
    return (signals,) if isinstance(signals, str) else tuple(signals)
