"""The daemon's configuration: a TOML file, then environment variables, then ``--set``.

``load_config()`` reads, merges and checks everything and returns a ``Config``; every
mistake is a ``ConfigError`` whose message names the key (and where it came from), the
type that was expected, and the closest valid key when a name is misspelt.

Sources, lowest precedence first (docs/configuration.md is the reference):

* the file: ``[bridge]``, ``[kafka]`` (librdkafka properties, passed through) and
  ``[[route]]`` tables;
* the environment: ``EVENTBUS_BRIDGE_<KEY>`` sets ``[bridge] <key>`` (lower-cased),
  ``EVENTBUS_KAFKA_<KEY>`` sets the librdkafka property ``<key>`` lower-cased with every
  ``_`` turned into ``.`` (``EVENTBUS_KAFKA_BOOTSTRAP_SERVERS`` is ``bootstrap.servers``);
* ``--set section.key=value`` (``bridge.max_attempts=5``, ``kafka.bootstrap.servers=...``).

Values from the environment and ``--set`` are text, converted to the key's type.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from ._errors import ConfigError
from ._routes import Route
from ._topic_config import DEAD_LETTER_TOPIC_CONFIG, normalize_topic_config, topic_config_problem

if TYPE_CHECKING:
    from eventbus import EventBus

    from ._bridge import Bridge
    from ._transport import Transport

BRIDGE_ENV_PREFIX = "EVENTBUS_BRIDGE_"
KAFKA_ENV_PREFIX = "EVENTBUS_KAFKA_"
MASK = "********"
SECRET_KEYS = frozenset(
    {
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.config",  # may embed a client secret
        "ssl.key.pem",  # a private key
    }
)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
KafkaValue = str | int | float | bool


def is_secret(key: str) -> bool:
    """True for settings whose values must never be logged or printed."""
    lowered = key.lower()
    return lowered in SECRET_KEYS or "password" in lowered or "secret" in lowered


def masked(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``settings`` with the values of secret keys replaced by a mask."""
    return {k: MASK if is_secret(k) else v for k, v in settings.items()}


# -- the [bridge] table ---------------------------------------------------------------


@dataclass(frozen=True)
class _Option:
    """One ``[bridge]`` key: its type (by name, for messages), default and converter."""

    type_name: str
    default: Any
    parse_text: Callable[[str], Any]  # text from the environment or --set -> value
    check: Callable[[Any], bool]  # is a file (TOML) value of the right type?
    rule: Callable[[Any], str | None] = lambda _v: None  # extra constraint: error or None
    bridge: bool = False  # a keyword argument of ``Bridge`` too (same name, same default)
    convert: Callable[[Any], Any] = lambda v: v  # a checked value -> the value used

    def for_bridge(self) -> _Option:
        return replace(self, bridge=True)


def _text_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _text_list(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("["):
        value = json.loads(text)
        if not isinstance(value, list):
            raise ValueError(text)
        return value
    return [part.strip() for part in text.split(",") if part.strip()]


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds from a number or a text such as ``"10s"``, ``"1m"``, ``"1.5h"``, ``"500ms"``
    or ``"30"`` (seconds); ValueError for anything else, or a negative duration."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        unit = next((u for u in ("ms", "s", "m", "h", "d") if text.endswith(u)), "")
        number = text[: len(text) - len(unit)].strip()
        try:
            seconds = float(number) * _UNITS.get(unit, 1.0)
        except ValueError:
            raise ValueError(
                f"not a duration: {value!r} (a number of seconds, or e.g. '10s', '1m', '2h')"
            ) from None
    else:
        raise ValueError(f"not a duration: {value!r}")
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"not a duration: {value!r} (must be finite and not negative)")
    return seconds


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _at_least(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= low else f"must be at least {low:g}"


def _choice(*allowed: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in allowed else "must be one of " + ", ".join(map(repr, allowed))


def _non_empty(v: Any) -> str | None:
    return None if v.strip() else "must not be empty"


def _names(v: Any) -> str | None:
    return None if all(m.strip() for m in v) else "must not contain empty names"


def _port(v: Any) -> str | None:
    return None if 0 <= v <= 65535 else "must be a TCP port, 0-65535 (0: any free port)"


def _level(v: Any) -> str | None:
    return None if v.upper() in LOG_LEVELS else "must be one of " + ", ".join(LOG_LEVELS)


def _text_table(text: str) -> dict[str, Any]:
    """``{"retention.ms": 86400000}`` (JSON) or ``retention.ms=86400000,cleanup.policy=delete``."""
    text = text.strip()
    if text.startswith("{"):
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError(text)
        return value
    table: dict[str, Any] = {}
    # a comma before the next "name=" separates settings; others are in a value
    for part in filter(None, (p.strip() for p in re.split(r",(?=\s*[\w.]+\s*=)", text))):
        name, sep, item = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(text)
        table[name.strip()] = item.strip()
    return table


def _replication(v: Any) -> str | None:
    return None if v is None or v >= 1 else "must be at least 1 (or unset: the broker's default)"


def _topic_config(default: Mapping[str, str]) -> _Option:
    return _Option(
        "a table of Kafka topic configs",
        MappingProxyType(dict(default)),
        _text_table,
        lambda v: isinstance(v, Mapping),
        topic_config_problem,
        convert=lambda v: MappingProxyType(normalize_topic_config(v)),
    ).for_bridge()


def _str(default: str | None, rule: Callable[[Any], str | None] = lambda _v: None) -> _Option:
    return _Option("a string", default, str, lambda v: isinstance(v, str), rule)


def _int(default: int | None, rule: Callable[[Any], str | None]) -> _Option:
    return _Option("an integer", default, int, _is_int, rule)


def _float(default: float, rule: Callable[[Any], str | None]) -> _Option:
    return _Option("a number", default, float, _is_number, rule)


BRIDGE_OPTIONS: dict[str, _Option] = {
    "service": _str(None, _non_empty),
    "modules": _Option("a list of strings", (), _text_list, _is_str_list, _names),
    "group": _str(None, _non_empty).for_bridge(),
    "max_attempts": _int(3, _at_least(1)).for_bridge(),
    "backoff": _float(0.1, _at_least(0)).for_bridge(),
    "max_backoff": _float(5.0, _at_least(0)).for_bridge(),
    "dedup_window": _float(300.0, _at_least(0)).for_bridge(),
    "dedup_size": _int(100_000, _at_least(0)).for_bridge(),
    "unrouted": _str("skip", _choice("skip", "dlq")).for_bridge(),
    "create_topics": _Option(
        "a boolean", True, _text_bool, lambda v: isinstance(v, bool), bridge=True
    ),
    "partitions": _int(1, _at_least(1)).for_bridge(),
    "replication_factor": _int(None, _replication).for_bridge(),
    "topic_config": _topic_config({}),
    "dead_letter_topic_config": _topic_config(DEAD_LETTER_TOPIC_CONFIG),
    "ready_timeout": _float(30.0, _at_least(0)).for_bridge(),
    "drain_timeout": _float(30.0, _at_least(0)).for_bridge(),
    "batch_size": _int(100, _at_least(1)).for_bridge(),
    "concurrency": _int(1, _at_least(1)).for_bridge(),
    "outbox": _str(None, _non_empty).for_bridge(),
    "outbox_max_events": _int(1_000_000, _at_least(1)).for_bridge(),
    "dedup_path": _str(None, _non_empty).for_bridge(),
    "log_level": _str("INFO", _level),
    "metrics_port": _int(None, _port),
    "metrics_host": _str("127.0.0.1", _non_empty),
}
"""Every ``[bridge]`` key: the one table of the options. ``Config``'s defaults come from
it, and the keys marked ``for_bridge`` are ``Bridge``'s keyword arguments of the same name
and default (a test holds ``Bridge``'s signature to it); docs/configuration.md documents
each (a test checks that too)."""

BRIDGE_CONSTRUCTOR_KEYS = tuple(key for key, option in BRIDGE_OPTIONS.items() if option.bridge)


def _default(key: str) -> Any:
    return BRIDGE_OPTIONS[key].default


ROUTE_KEYS = (
    "signals",
    "topic",
    "direction",
    "key",
    "dlq",
    "retry_delays",
    "retry_topic",
    "require_handlers",
    "format",
    "content_type",
    "types",
    "type_field",
    "id_field",
)
SECTIONS = ("bridge", "kafka", "route")


@dataclass(frozen=True)
class Config:
    """A checked configuration: the ``[bridge]`` options, librdkafka settings, routes.

    Immutable. ``kafka`` holds the librdkafka properties as given (secrets included:
    print ``masked(config.kafka)``, never ``config.kafka``).
    """

    service: str
    modules: tuple[str, ...] = _default("modules")
    group: str | None = _default("group")
    max_attempts: int = _default("max_attempts")
    backoff: float = _default("backoff")
    max_backoff: float = _default("max_backoff")
    dedup_window: float = _default("dedup_window")
    dedup_size: int = _default("dedup_size")
    unrouted: Literal["skip", "dlq"] = _default("unrouted")
    create_topics: bool = _default("create_topics")
    partitions: int = _default("partitions")
    replication_factor: int | None = _default("replication_factor")
    topic_config: Mapping[str, str] = field(default_factory=lambda: _default("topic_config"))
    dead_letter_topic_config: Mapping[str, str] = field(
        default_factory=lambda: _default("dead_letter_topic_config")
    )
    ready_timeout: float = _default("ready_timeout")
    drain_timeout: float = _default("drain_timeout")
    batch_size: int = _default("batch_size")
    concurrency: int = _default("concurrency")
    outbox: str | None = _default("outbox")
    outbox_max_events: int = _default("outbox_max_events")
    dedup_path: str | None = _default("dedup_path")
    log_level: str = _default("log_level")
    metrics_port: int | None = _default("metrics_port")
    metrics_host: str = _default("metrics_host")
    kafka: Mapping[str, KafkaValue] = field(default_factory=dict)
    routes: tuple[Route, ...] = ()
    optional_handlers: frozenset[Route] = frozenset()
    """Inbound routes whose signals may have no handler (``require_handlers = false``)."""
    source: str = "<defaults>"
    """Where the file came from (its path), for messages."""

    @property
    def bootstrap(self) -> str:
        """The ``bootstrap.servers`` setting, or "" when none is configured."""
        return str(self.kafka.get("bootstrap.servers", ""))

    def bridge_options(self) -> dict[str, Any]:
        """The keyword arguments for ``Bridge`` (everything but bus, transport, routes)."""
        options = {key: getattr(self, key) for key in BRIDGE_CONSTRUCTOR_KEYS}
        options["service"] = self.service
        return options

    def make_transport(self) -> Transport:
        """A ``KafkaTransport`` for the ``[kafka]`` settings; ConfigError without a broker."""
        if not self.bootstrap:
            raise ConfigError(
                f'{self.source}: no broker configured: set [kafka] "bootstrap.servers", '
                f"{KAFKA_ENV_PREFIX}BOOTSTRAP_SERVERS or --set kafka.bootstrap.servers=HOST:PORT"
            )
        from ._kafka import KafkaTransport

        return KafkaTransport(dict(self.kafka))

    def build_bridge(self, bus: EventBus, transport: Transport | None = None) -> Bridge:
        """A (not yet started) ``Bridge`` for ``bus`` with this configuration's routes.

        ``transport`` defaults to ``make_transport()``; pass a ``MemoryTransport`` in tests.
        """
        from ._bridge import Bridge

        return Bridge(
            bus,
            transport=transport if transport is not None else self.make_transport(),
            routes=self.routes,
            **self.bridge_options(),
        )

    def check_handlers(self, bus: EventBus) -> None:
        """ConfigError when an inbound route's signals have no handler on ``bus`` (the
        events would be received, counted as handled and committed with nobody running),
        unless the route says ``require_handlers = false``."""
        from ._routes import unhandled_signals

        for route in self.routes:
            if not route.is_inbound or route in self.optional_handlers:
                continue
            missing = unhandled_signals(route, bus)
            if missing:
                modules = ", ".join(self.modules) or "none"
                raise ConfigError(
                    f"{self.source}: {describe_route(route)}: no handler for "
                    f"{', '.join(missing)} on {_bus_name(bus)} after importing the "
                    f"[bridge] modules ({modules}): events would be committed unhandled. "
                    "Handler modules register on eventbus.default_bus (not an EventBus() "
                    "of their own); if no handler is intended, set require_handlers = false "
                    "on the route"
                )

    def check_files(self) -> None:
        """ConfigError when the outbox or the dedup store could not be created: their
        directory must exist and be writable (nothing is created here)."""
        for key in ("outbox", "dedup_path"):
            path = getattr(self, key)
            if path is None:
                continue
            where = Path(path).expanduser()
            folder = where.parent if not where.is_dir() else where
            if where.is_dir():
                problem = "is a directory, not a file"
            elif not folder.is_dir():
                problem = f"its directory {folder} does not exist"
            elif not os.access(where if where.exists() else folder, os.W_OK):
                problem = "not writable by this user"
            else:
                continue
            raise ConfigError(f"{self.source}: [bridge] {key} = {path!r}: {problem}")

    def describe(self) -> list[str]:
        """Human-readable lines summing up the configuration, secrets masked."""
        lines = [f"service {self.service!r} (group {self.group or self.service!r})"]
        lines.append("modules: " + (", ".join(self.modules) or "(none)"))
        for key, value in sorted(masked(self.kafka).items()):
            lines.append(f"kafka {key} = {value}")
        for route in self.routes:
            lines.append(describe_route(route))
        return lines


def _bus_name(bus: EventBus) -> str:
    from eventbus import default_bus

    return "eventbus.default_bus" if bus is default_bus else f"the bus {bus!r}"


def describe_route(route: Route) -> str:
    """One line for a route: ``in  user.* <- users (dlq users.dlq)``."""
    arrow = {"out": "->", "in": "<-", "both": "<->"}[route.direction]
    text = f"route {route.direction:<4} {', '.join(route.signals)} {arrow} {route.topic}"
    if route.key:
        text += f" (key {route.key})"
    if route.format != "cloudevents" or route.content_type:
        text += f" (format {route.format}"
        text += f", {route.content_type})" if route.content_type else ")"
    if route.is_inbound:
        text += f" (dead letters to {route.dead_letter_topic})"
    if route.retry_topics:
        text += f" (retries via {', '.join(dict.fromkeys(route.retry_topics))})"
    return text


# -- loading --------------------------------------------------------------------------


def load_config(
    path: str | os.PathLike[str] | None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Sequence[str] = (),
    require_service: bool = True,
) -> Config:
    """Read the TOML file at ``path`` (None: no file), apply ``env`` and ``overrides``.

    ``env`` defaults to ``os.environ``; ``overrides`` are ``section.key=value`` strings
    (the CLI's ``--set``). Raises ``ConfigError`` naming the offending key for a file
    that cannot be read or parsed, an unknown section or key, a value of the wrong
    type, a bad route, or a missing ``service`` (unless ``require_service`` is false:
    the CLI's ``tail`` and ``emit`` need only the ``[kafka]`` settings).
    """
    source = "<no file>"
    data: dict[str, Any] = {}
    if path is not None:
        source = os.fspath(path)
        try:
            with Path(path).open("rb") as file:
                data = tomllib.load(file)
        except FileNotFoundError:
            raise ConfigError(f"{source}: no such file") from None
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read it: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    return parse_config(
        data,
        source=source,
        env=os.environ if env is None else env,
        overrides=overrides,
        require_service=require_service,
    )


def parse_config(
    data: Mapping[str, Any],
    *,
    source: str = "<config>",
    env: Mapping[str, str] | None = None,
    overrides: Sequence[str] = (),
    require_service: bool = True,
) -> Config:
    """Like ``load_config`` for an already parsed TOML document (a dict)."""
    for section in data:
        if section not in SECTIONS:
            raise ConfigError(
                f"{source}: unknown section [{section}]{_did_you_mean(section, SECTIONS)}"
            )
    bridge_table = _table(data, "bridge", source)
    kafka_table = _table(data, "kafka", source)
    routes_data = data.get("route", [])
    if isinstance(routes_data, dict):
        raise ConfigError(f"{source}: routes are an array of tables: write [[route]], not [route]")
    if not isinstance(routes_data, list):
        raise ConfigError(f"{source}: route must be an array of tables ([[route]])")

    # Each value remembers where it came from, for error messages.
    bridge: dict[str, tuple[Any, str]] = {}
    for key, value in bridge_table.items():
        where = f"{source}: [bridge] {key}"
        _check_bridge_key(key, where)
        bridge[key] = (value, where)
    kafka: dict[str, tuple[Any, str]] = {
        key: (value, f"{source}: [kafka] {key!r}") for key, value in _flatten(kafka_table, "")
    }

    for name, text in sorted((env if env is not None else {}).items()):
        if name.startswith(BRIDGE_ENV_PREFIX):
            key = name[len(BRIDGE_ENV_PREFIX) :].lower()
            where = f"environment variable {name}"
            if key not in BRIDGE_OPTIONS:
                names = [BRIDGE_ENV_PREFIX + k.upper() for k in BRIDGE_OPTIONS]
                raise ConfigError(f"{where}: no such [bridge] key{_did_you_mean(name, names)}")
            bridge[key] = (_from_text(key, text, where), where)
        elif name.startswith(KAFKA_ENV_PREFIX):
            key = name[len(KAFKA_ENV_PREFIX) :].lower().replace("_", ".")
            if not key:
                raise ConfigError(f"environment variable {name}: names no librdkafka property")
            kafka[key] = (text, f"environment variable {name}")

    for override in overrides:
        section, key, text = _split_override(override)
        where = f"--set {override.split('=', 1)[0]}"
        if section == "bridge":
            _check_bridge_key(key, where)
            bridge[key] = (_from_text(key, text, where), where)
        else:
            kafka[key] = (text, where)

    options: dict[str, Any] = {}
    for key, (value, where) in bridge.items():
        options[key] = _checked_option(key, value, where)
    if "service" not in options:
        if require_service:
            raise ConfigError(
                f"{source}: [bridge] service is required: the name of this service "
                f"(CloudEvents source and consumer group); or set {BRIDGE_ENV_PREFIX}SERVICE"
            )
        options["service"] = "eventbus-bridge-cli"
    if "modules" in options:
        options["modules"] = tuple(options["modules"])
    if "log_level" in options:
        options["log_level"] = options["log_level"].upper()

    settings: dict[str, KafkaValue] = {}
    for key, (value, where) in kafka.items():
        if not isinstance(value, str | int | float | bool):
            raise ConfigError(
                f"{where}: expected a string, number or boolean, got {_type_name(value)}"
                + (
                    " (librdkafka lists are comma-separated strings)"
                    if isinstance(value, list)
                    else ""
                )
            )
        settings[key] = value

    routes = tuple(_route(i, r, source) for i, r in enumerate(routes_data, 1))
    optional = frozenset(
        route
        for route, data in zip(routes, routes_data, strict=True)
        if data.get("require_handlers") is False
    )
    return Config(
        **options, kafka=settings, routes=routes, optional_handlers=optional, source=source
    )


def _table(data: Mapping[str, Any], name: str, source: str) -> dict[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: {name} must be a table ([{name}]), not {_type_name(table)}")
    return table


def _flatten(table: Mapping[str, Any], prefix: str) -> Iterable[tuple[str, Any]]:
    # TOML reads `bootstrap.servers = "..."` (unquoted) as nested tables; librdkafka
    # wants the dotted name, so both spellings mean the same property.
    for key, value in table.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _check_bridge_key(key: str, where: str) -> None:
    if key not in BRIDGE_OPTIONS:
        raise ConfigError(
            f"{where}: unknown [bridge] key {key!r}{_did_you_mean(key, BRIDGE_OPTIONS)}"
        )


def _split_override(override: str) -> tuple[str, str, str]:
    name, sep, text = override.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not key:
        raise ConfigError(
            f"--set {override!r}: expected section.key=value, e.g. bridge.max_attempts=5 "
            "or kafka.bootstrap.servers=127.0.0.1:9092"
        )
    if section == "route":
        raise ConfigError(f"--set {override!r}: routes can only be set in the file ([[route]])")
    if section not in ("bridge", "kafka"):
        raise ConfigError(
            f"--set {override!r}: unknown section {section!r}"
            + _did_you_mean(section, ("bridge", "kafka"))
        )
    return section, key, text


def _from_text(key: str, text: str, where: str) -> Any:
    option = BRIDGE_OPTIONS[key]
    try:
        return option.parse_text(text)
    except ValueError:
        raise ConfigError(f"{where}: {key} expects {option.type_name}, got {text!r}") from None


def _checked_option(key: str, value: Any, where: str) -> Any:
    option = BRIDGE_OPTIONS[key]
    if not option.check(value):
        raise ConfigError(
            f"{where}: expected {option.type_name}, got {_type_name(value)} ({value!r})"
        )
    if option.type_name == "a number":
        value = float(value)
    value = option.convert(value)
    problem = option.rule(value)
    if problem:
        raise ConfigError(f"{where}: {problem}, got {value!r}")
    return value


def _route(number: int, data: Any, source: str) -> Route:
    where = f"{source}: route #{number}"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a table, not {_type_name(data)}")
    if isinstance(data.get("topic"), str):
        where += f" (topic {data['topic']!r})"
    for key in data:
        if key not in ROUTE_KEYS:
            raise ConfigError(f"{where}: unknown key {key!r}{_did_you_mean(key, ROUTE_KEYS)}")
    for required in ("signals", "topic", "direction"):
        if required not in data:
            hint = {
                "signals": 'the signal names or patterns, e.g. signals = ["user.*"]',
                "topic": "the Kafka topic",
                "direction": "'in', 'out' or 'both'",
            }[required]
            raise ConfigError(f"{where}: {required} is required: {hint}")
    signals = data["signals"]
    if not (isinstance(signals, str) or _is_str_list(signals)):
        raise ConfigError(
            f"{where}: signals expects a string or a list of strings, got {_type_name(signals)}"
        )
    for key in (
        "topic",
        "direction",
        "key",
        "dlq",
        "retry_topic",
        "format",
        "content_type",
        "type_field",
        "id_field",
    ):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(
                f"{where}: {key} expects a string, got {_type_name(data[key])} ({data[key]!r})"
            )
    if not isinstance(data.get("require_handlers", True), bool):
        value = data["require_handlers"]
        raise ConfigError(
            f"{where}: require_handlers expects a boolean, got {_type_name(value)} ({value!r})"
        )
    delays = data.get("retry_delays", [])
    if not isinstance(delays, list):
        raise ConfigError(
            f'{where}: retry_delays expects a list of durations, e.g. ["10s", "1m", "10m"], '
            f"got {_type_name(delays)}"
        )
    try:
        seconds = tuple(parse_duration(d) for d in delays)
    except ValueError as exc:
        raise ConfigError(f"{where}: retry_delays: {exc}") from None
    extra = {"retry_topic": data["retry_topic"]} if "retry_topic" in data else {}
    types = data.get("types")
    if types is not None and not (
        isinstance(types, dict) and all(isinstance(v, str) for v in types.values())
    ):
        raise ConfigError(
            f"{where}: types expects a table of foreign type = signal name, got {_type_name(types)}"
        )
    try:
        return Route(
            (signals,) if isinstance(signals, str) else tuple(signals),
            data["topic"],
            data["direction"],
            key=data.get("key"),
            dlq=data.get("dlq"),
            retry_delays=seconds,
            **extra,
            format=data.get("format", "cloudevents"),
            content_type=data.get("content_type"),
            types=types,
            type_field=data.get("type_field"),
            id_field=data.get("id_field"),
        )
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _did_you_mean(name: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(value: Any) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }
    return names.get(type(value), type(value).__name__)
