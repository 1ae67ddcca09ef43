"""The settings of the topics the bridge creates (``create_topics``): Kafka topic configs.

``topic_config`` applies to every topic the bridge creates (route and retry topics);
dead-letter topics get ``topic_config`` overlaid with ``dead_letter_topic_config``, which
by default keeps dead letters four weeks (``DEAD_LETTER_TOPIC_CONFIG``): they wait for a
person, and the broker's default (``log.retention.hours``, 7 days) is short for that.
Topics that exist already are left as they are (``kafka-configs --alter`` changes them).

``topic_config_problem`` checks names and values without a broker, so that ``check``
refuses what the broker would refuse at ``run``: a name not among Kafka's topic configs
(with the closest one), a number that is not one, a boolean or an enumeration out of range.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

__all__ = [
    "DEAD_LETTER_TOPIC_CONFIG",
    "TOPIC_CONFIGS",
    "normalize_topic_config",
    "topic_config_problem",
]

DEAD_LETTER_TOPIC_CONFIG: Mapping[str, str] = MappingProxyType(
    {"retention.ms": str(28 * 24 * 3600 * 1000)}
)
"""Dead-letter topics keep their records 28 days unless configured otherwise."""

_INTEGER = re.compile(r"-?\d+\Z")
_BOOLEAN = ("true", "false")
TOPIC_CONFIGS: Mapping[str, tuple[str, ...] | str] = MappingProxyType(
    {
        # name: "int", "ratio", "text", or the allowed values
        "cleanup.policy": "policy",
        "compression.type": ("uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"),
        "delete.retention.ms": "int",
        "file.delete.delay.ms": "int",
        "flush.messages": "int",
        "flush.ms": "int",
        "follower.replication.throttled.replicas": "text",
        "index.interval.bytes": "int",
        "leader.replication.throttled.replicas": "text",
        "local.retention.bytes": "int",
        "local.retention.ms": "int",
        "max.compaction.lag.ms": "int",
        "max.message.bytes": "int",
        "message.downconversion.enable": _BOOLEAN,
        "message.format.version": "text",
        "message.timestamp.after.max.ms": "int",
        "message.timestamp.before.max.ms": "int",
        "message.timestamp.difference.max.ms": "int",
        "message.timestamp.type": ("CreateTime", "LogAppendTime"),
        "min.cleanable.dirty.ratio": "ratio",
        "min.compaction.lag.ms": "int",
        "min.insync.replicas": "int",
        "preallocate": _BOOLEAN,
        "remote.storage.enable": _BOOLEAN,
        "retention.bytes": "int",
        "retention.ms": "int",
        "segment.bytes": "int",
        "segment.index.bytes": "int",
        "segment.jitter.ms": "int",
        "segment.ms": "int",
        "unclean.leader.election.enable": _BOOLEAN,
    }
)
"""Kafka's topic-level configs (Apache Kafka 3.x/4.0) and the values each takes."""


def normalize_topic_config(value: Mapping[str, Any]) -> dict[str, str]:
    """Kafka's form of a TOML table: dotted names (an unquoted ``retention.ms`` is a
    nested table in TOML), values as text (``true``/``false`` for booleans)."""
    flat: dict[str, str] = {}

    def walk(table: Mapping[str, Any], prefix: str) -> None:
        for key, item in table.items():
            if isinstance(item, Mapping):
                walk(item, f"{prefix}{key}.")
            elif isinstance(item, bool):
                flat[f"{prefix}{key}"] = "true" if item else "false"
            else:
                flat[f"{prefix}{key}"] = str(item)

    walk(value, "")
    return flat


def topic_config_problem(config: Mapping[str, str]) -> str | None:
    """What Kafka would refuse in ``config`` (normalized), or None."""
    for name, value in config.items():
        kind = TOPIC_CONFIGS.get(name)
        if kind is None:
            close = difflib.get_close_matches(name, list(TOPIC_CONFIGS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return f"{name!r} is not a Kafka topic config{hint}"
        if kind == "int" and not _INTEGER.match(value):
            return f"{name} must be an integer, not {value!r}"
        if kind == "ratio":
            try:
                ok = 0.0 <= float(value) <= 1.0
            except ValueError:
                ok = False
            if not ok:
                return f"{name} must be a number from 0 to 1, not {value!r}"
        if kind == "policy" and (
            not value or not set(value.replace(" ", "").split(",")) <= {"delete", "compact"}
        ):
            return f"{name} must be delete, compact or 'compact,delete', not {value!r}"
        if isinstance(kind, tuple) and value not in kind and value.lower() not in kind:
            return f"{name} must be one of {', '.join(kind)}, not {value!r}"
    return None
