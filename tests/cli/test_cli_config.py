"""The daemon's configuration: file, environment, --set; every error names its key."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import pytest

from bridge import ConfigError, MemoryTransport, Route
from bridge._config import (
    BRIDGE_OPTIONS,
    MASK,
    ROUTE_KEYS,
    Config,
    describe_route,
    is_secret,
    load_config,
    masked,
)
from eventbus import EventBus

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """
[bridge]
service = "message-service"

[kafka]
"bootstrap.servers" = "127.0.0.1:9092"

[[route]]
signals = "user.registered"
topic = "users"
direction = "in"
"""


@pytest.fixture
def write(tmp_path: Path):
    def write(text: str) -> Path:
        path = tmp_path / "service.toml"
        path.write_text(text)
        return path

    return write


def load(text: str, write, env=None, overrides=()) -> Config:
    return load_config(write(text), env=env or {}, overrides=overrides)


def error_of(text: str, write, env=None, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load(text, write, env, overrides)
    return str(info.value)


def test_a_minimal_file_loads_with_the_documented_defaults(write) -> None:
    config = load(MINIMAL, write)
    assert config.service == "message-service"
    assert config.kafka == {"bootstrap.servers": "127.0.0.1:9092"}
    assert config.routes == (Route(("user.registered",), "users", "in"),)
    assert config.max_attempts == 3 and config.backoff == 0.1 and config.create_topics is True
    assert config.modules == () and config.group is None and config.metrics_port is None
    assert config.source.endswith("service.toml")


def test_every_key_of_a_full_file(write) -> None:
    config = load(
        """
[bridge]
service = "svc"
modules = ["a.b", "c"]
group = "grp"
max_attempts = 5
backoff = 1
max_backoff = 2.5
dedup_window = 60
dedup_size = 10
unrouted = "dlq"
create_topics = false
partitions = 3
ready_timeout = 5
drain_timeout = 7
batch_size = 50
outbox = "out.db"
outbox_max_events = 10
dedup_path = "dedup.db"
log_level = "debug"
metrics_port = 9100
metrics_host = "0.0.0.0"

[kafka]
bootstrap.servers = "h:1"        # unquoted dotted keys mean the same property
"sasl.password" = "hunter2"
"queue.buffering.max.ms" = 5

[[route]]
signals = ["user.*", "account.closed"]
topic = "users"
direction = "both"
key = "user_id"
dlq = "users-dead"
""",
        write,
    )
    assert config.modules == ("a.b", "c")
    assert config.backoff == 1.0 and isinstance(config.backoff, float)
    assert config.log_level == "DEBUG"
    assert config.kafka == {
        "bootstrap.servers": "h:1",
        "sasl.password": "hunter2",
        "queue.buffering.max.ms": 5,
    }
    assert config.routes[0] == Route(
        ("user.*", "account.closed"), "users", "both", key="user_id", dlq="users-dead"
    )
    options = config.bridge_options()
    assert options["group"] == "grp" and options["unrouted"] == "dlq"
    assert options["partitions"] == 3 and options["create_topics"] is False
    assert options["batch_size"] == 50 and options["outbox_max_events"] == 10
    assert options["outbox"] == "out.db" and options["dedup_path"] == "dedup.db"


def test_build_bridge_passes_every_option(write) -> None:
    config = load(MINIMAL + "\n", write, overrides=["bridge.max_attempts=4", "bridge.group=g"])
    bridge = config.build_bridge(EventBus(), MemoryTransport())
    assert bridge.service == "message-service" and bridge.group == "g"
    assert bridge.max_attempts == 4 and bridge.routes == config.routes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[brige]\nservice='x'", r"unknown section \[brige\] \(did you mean 'bridge'\?\)"),
        (
            "[bridge]\nservice='x'\nmax_attempt=3",
            r"\[bridge\] max_attempt: unknown \[bridge\] key 'max_attempt' \(did you mean 'max_attempts'\?\)",
        ),
        (
            "[bridge]\nservice='x'\nmax_attempts='three'",
            r"\[bridge\] max_attempts: expected an integer, got a string \('three'\)",
        ),
        (
            "[bridge]\nservice='x'\nmax_attempts=true",
            r"max_attempts: expected an integer, got a boolean",
        ),
        ("[bridge]\nservice='x'\nmax_attempts=0", r"max_attempts: must be at least 1, got 0"),
        ("[bridge]\nservice='x'\nbackoff='fast'", r"backoff: expected a number, got a string"),
        (
            "[bridge]\nservice='x'\ncreate_topics='yes'",
            r"create_topics: expected a boolean, got a string",
        ),
        (
            "[bridge]\nservice='x'\nmodules='a.b'",
            r"modules: expected a list of strings, got a string",
        ),
        (
            "[bridge]\nservice='x'\nunrouted='drop'",
            r"unrouted: must be one of 'skip', 'dlq', got 'drop'",
        ),
        ("[bridge]\nservice='x'\nlog_level='loud'", r"log_level: must be one of DEBUG, INFO"),
        ("[bridge]\nservice='x'\nmetrics_port=70000", r"metrics_port: must be a TCP port"),
        ("[bridge]\nservice=''", r"service: must not be empty"),
        ("[bridge]\nmodules=[]", r"\[bridge\] service is required"),
        ("bridge = 3", r"bridge must be a table"),
        (
            "[bridge]\nservice='x'\n[kafka]\n'bootstrap.servers'=['a','b']",
            r"\[kafka\] 'bootstrap.servers': expected a string, number or boolean, got a list \(librdkafka lists are comma-separated strings\)",
        ),
        ("[bridge]\nservice='x'\n[route]\ntopic='t'", r"write \[\[route\]\], not \[route\]"),
        (
            "[bridge]\nservice='x'\n[[route]]\nsignal='a'\ntopic='t'\ndirection='in'",
            r"route #1 \(topic 't'\): unknown key 'signal' \(did you mean 'signals'\?\)",
        ),
        (
            "[bridge]\nservice='x'\n[[route]]\nsignals='a'\ntopic='t'",
            r"route #1 \(topic 't'\): direction is required: 'in', 'out' or 'both'",
        ),
        (
            "[bridge]\nservice='x'\n[[route]]\nsignals='a'\ndirection='in'",
            r"route #1: topic is required",
        ),
        (
            "[bridge]\nservice='x'\n[[route]]\nsignals='a'\ntopic='t'\ndirection='sideways'",
            r"route #1 \(topic 't'\): .*direction must be 'in', 'out' or 'both'",
        ),
        (
            "[bridge]\nservice='x'\n[[route]]\nsignals=3\ntopic='t'\ndirection='in'",
            r"signals expects a string or a list of strings, got an integer",
        ),
        (
            "[bridge]\nservice='x'\n[[route]]\nsignals='a'\ntopic='no spaces'\ndirection='in'",
            r"route #1 \(topic 'no spaces'\): invalid topic name",
        ),
        (
            "[bridge]\nservice='x'\n[[route]]\nsignals='bad name!'\ntopic='t'\ndirection='out'",
            r"route #1 \(topic 't'\): ",
        ),
        (
            "[bridge]\nservice='x'\n[[route]]\nsignals='a'\ntopic='t'\ndirection='in'\nkey=1",
            r"key expects a string, got an integer",
        ),
        (
            "[bridge]\nservice='x'\n[[route]]\nsignals='a'\ntopic='t'\ndirection='in'\n[[route]]\nsignals='b'\ntopic='t'\ndirection='in'\ndlq='t'",
            r"route #2 \(topic 't'\): .*dead-letter topic must differ",
        ),
        ("[bridge\nservice='x'", r"service.toml: not valid TOML"),
        (
            "[bridge]\nservice='x'\n[[route]]\nsignals='a'\ntopic='t'\ndirection='in'\nformat='xml'",
            r"route #1 \(topic 't'\): .*format must be one of cloudevents, cloudevents-structured, json, go-micro",
        ),
        (
            "[bridge]\nservice='x'\n[[route]]\nsignals='a'\ntopic='t'\ndirection='in'\ntypes=['x']",
            r"types expects a table of foreign type = signal name, got a list",
        ),
        (
            "[bridge]\nservice='x'\n[[route]]\nsignals='a'\ntopic='t'\ndirection='in'\nretry_delays='10s'",
            r"route #1 \(topic 't'\): retry_delays expects a list of durations",
        ),
        (
            "[bridge]\nservice='x'\n[[route]]\nsignals='a'\ntopic='t'\ndirection='in'\nretry_delays=['10 parsecs']",
            r"route #1 \(topic 't'\): retry_delays: not a duration: '10 parsecs'",
        ),
        (
            "[bridge]\nservice='x'\n[[route]]\nsignals='a'\ntopic='t'\ndirection='in'\nretry_delays=['-1s']",
            r"retry_delays: not a duration: '-1s' \(must be finite and not negative\)",
        ),
        (
            "[bridge]\nservice='x'\n[[route]]\nsignals='a'\ntopic='t'\ndirection='out'\nretry_delays=[1]",
            r"retry_delays is for inbound routes",
        ),
        (
            "[bridge]\nservice='x'\n[[route]]\nsignals='a'\ntopic='t'\ndirection='in'\nretry_delays=[1]\nretry_topic='r'",
            r"retry_topic must be a template with \{delay\}",
        ),
    ],
)
def test_every_mistake_in_the_file_is_named(write, text: str, expected: str) -> None:
    message = error_of(text, write)
    assert re.search(expected, message), message
    if "TOML" not in expected and "section" not in expected and "table" not in expected:
        assert "service.toml" in message


def test_retry_delays_take_durations_and_numbers(write) -> None:
    config = load_config(
        write(
            "[bridge]\nservice='x'\n[[route]]\nsignals='a.*'\ntopic='orders'\ndirection='in'\n"
            "retry_delays=['10s', '1m', 600, '1.5h', '250ms']\nretry_topic='{topic}-retry-{delay}'"
        ),
        env={},
    )
    [route] = config.routes
    assert route.retry_delays == (10.0, 60.0, 600.0, 5400.0, 0.25)
    assert route.retry_topics[:2] == ("orders-retry-10s", "orders-retry-1m")
    assert "(retries via orders-retry-10s, orders-retry-1m" in describe_route(route)


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope.toml: no such file"):
        load_config(tmp_path / "nope.toml", env={})


def test_environment_overrides_the_file(write) -> None:
    env = {
        "EVENTBUS_BRIDGE_MAX_ATTEMPTS": "7",
        "EVENTBUS_BRIDGE_CREATE_TOPICS": "no",
        "EVENTBUS_BRIDGE_MODULES": "a.b, c.d",
        "EVENTBUS_BRIDGE_BACKOFF": "0.5",
        "EVENTBUS_KAFKA_BOOTSTRAP_SERVERS": "10.0.0.1:9092",
        "EVENTBUS_KAFKA_SASL_PASSWORD": "s3cret",
        "EVENTBUS_OTHER": "ignored",
        "PATH": "/bin",
    }
    config = load(MINIMAL, write, env=env)
    assert config.max_attempts == 7 and config.create_topics is False
    assert config.modules == ("a.b", "c.d") and config.backoff == 0.5
    assert config.kafka == {"bootstrap.servers": "10.0.0.1:9092", "sasl.password": "s3cret"}
    assert load(MINIMAL, write, env={"EVENTBUS_BRIDGE_MODULES": '["x", "y"]'}).modules == (
        "x",
        "y",
    )


def test_environment_alone_can_configure_a_service(tmp_path: Path) -> None:
    config = load_config(
        None,
        env={"EVENTBUS_BRIDGE_SERVICE": "svc", "EVENTBUS_KAFKA_BOOTSTRAP_SERVERS": "h:1"},
    )
    assert config.service == "svc" and config.bootstrap == "h:1" and config.routes == ()


def test_environment_errors_name_the_variable(write) -> None:
    message = error_of(MINIMAL, write, env={"EVENTBUS_BRIDGE_MAX_ATTEMPTS": "many"})
    assert message == (
        "environment variable EVENTBUS_BRIDGE_MAX_ATTEMPTS: max_attempts expects an integer, "
        "got 'many'"
    )
    message = error_of(MINIMAL, write, env={"EVENTBUS_BRIDGE_MAX_ATEMPTS": "3"})
    assert "EVENTBUS_BRIDGE_MAX_ATEMPTS: no such [bridge] key" in message
    assert "did you mean 'EVENTBUS_BRIDGE_MAX_ATTEMPTS'?" in message
    message = error_of(MINIMAL, write, env={"EVENTBUS_BRIDGE_PARTITIONS": "0"})
    assert message == "environment variable EVENTBUS_BRIDGE_PARTITIONS: must be at least 1, got 0"


def test_set_overrides_everything(write) -> None:
    config = load(
        MINIMAL,
        write,
        env={"EVENTBUS_BRIDGE_MAX_ATTEMPTS": "7", "EVENTBUS_KAFKA_BOOTSTRAP_SERVERS": "env:1"},
        overrides=[
            "bridge.max_attempts=9",
            "kafka.bootstrap.servers=set:1",
            "kafka.client.id=a=b",
            "bridge.log_level=warning",
        ],
    )
    assert config.max_attempts == 9
    assert config.kafka == {"bootstrap.servers": "set:1", "client.id": "a=b"}
    assert config.log_level == "WARNING"


def test_precedence_is_file_then_environment_then_set(write) -> None:
    text = MINIMAL.replace('service = "message-service"', 'service = "m"\npartitions = 2')
    assert load(text, write).partitions == 2
    env = {"EVENTBUS_BRIDGE_PARTITIONS": "3"}
    assert load(text, write, env=env).partitions == 3
    assert load(text, write, env=env, overrides=["bridge.partitions=4"]).partitions == 4


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("max_attempts=3", r"expected section.key=value"),
        ("bridge.max_attempts", r"expected section.key=value"),
        ("brigde.max_attempts=3", r"unknown section 'brigde' \(did you mean 'bridge'\?\)"),
        ("route.topic=x", r"routes can only be set in the file"),
        ("bridge.retries=3", r"--set bridge.retries: unknown \[bridge\] key 'retries'"),
        (
            "bridge.max_attempts=x",
            r"--set bridge.max_attempts: max_attempts expects an integer, got 'x'",
        ),
        ("bridge.create_topics=maybe", r"create_topics expects a boolean, got 'maybe'"),
    ],
)
def test_set_errors_name_the_key(write, override: str, expected: str) -> None:
    assert re.search(expected, error_of(MINIMAL, write, overrides=[override]))


def test_secrets_are_masked() -> None:
    for key in (
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "sasl.oauthbearer.client.secret",
        "my.Secret.thing",
        "ssl.key.pem",
    ):
        assert is_secret(key), key
    assert not is_secret("bootstrap.servers") and not is_secret("sasl.username")
    settings = {"sasl.password": "hunter2", "bootstrap.servers": "h:1"}
    assert masked(settings) == {"sasl.password": MASK, "bootstrap.servers": "h:1"}
    config = Config(service="s", kafka=settings)
    assert "hunter2" not in "\n".join(config.describe())
    assert "kafka sasl.password = ********" in config.describe()


def test_no_broker_configured_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="no broker configured: set \\[kafka\\]"):
        Config(service="s").make_transport()


def test_the_reference_documents_every_key() -> None:
    reference = (ROOT / "docs" / "configuration.md").read_text()
    for key in BRIDGE_OPTIONS:
        assert f"`{key}`" in reference, key
        assert f"EVENTBUS_BRIDGE_{key.upper()}" in reference, key
    for key in ROUTE_KEYS:
        assert f"`{key}`" in reference, key


def test_format_options_of_a_route(write) -> None:
    config = load(
        """
[bridge]
service = "s"
[[route]]
signals = "user.registered"
topic = "users"
direction = "in"
types = { "com.example/user:registered" = "user.registered" }
[[route]]
signals = "order.*"
topic = "orders"
direction = "both"
format = "json"
type_field = "kind"
id_field = "event_id"
[[route]]
signals = "order.*"
topic = "orders-ce"
direction = "out"
content_type = "application/json"
""",
        write,
    )
    users, orders, orders_ce = config.routes
    assert users == Route.inbound(
        "user.registered", topic="users", types={"com.example/user:registered": "user.registered"}
    )
    assert users.types == {"com.example/user:registered": "user.registered"}
    assert orders == Route.both(
        "order.*", topic="orders", format="json", type_field="kind", id_field="event_id"
    )
    assert orders_ce.content_type == "application/json"
    assert "format json" in "\n".join(config.describe())


def test_an_inbound_route_without_handlers_is_refused_naming_route_signals_and_bus(
    write,
) -> None:
    config = load(MINIMAL, write)
    bus = EventBus()
    with pytest.raises(ConfigError) as info:
        config.check_handlers(bus)
    message = str(info.value)
    assert "route in   user.registered <- users" in message
    assert "no handler for user.registered on the bus" in message
    assert "require_handlers = false" in message

    bus.on("user.*")(lambda sender, **_: None)
    config.check_handlers(bus)  # a pattern covers it

    optional = load(MINIMAL + "require_handlers = false\n", write)
    optional.check_handlers(EventBus())  # said to be intended
    assert "expects a boolean" in error_of(MINIMAL + 'require_handlers = "no"\n', write)


def test_outbound_routes_need_no_handlers(write) -> None:
    config = load(MINIMAL.replace('"in"', '"out"'), write)
    config.check_handlers(EventBus())


@pytest.mark.parametrize(
    ("route", "handler", "covered"),
    [
        ("user.registered", "user.registered", True),
        ("user.registered", "user.*", True),
        ("user.*", "user.registered", True),
        ("user.*", "user.**", True),
        ("user.reg*", "user.*ed", True),
        ("user.**.done", "user.*.done", True),
        ("**", "order.placed", True),
        ("user.registered", "user.deleted", False),
        ("user.*", "order.*", False),
        ("user.*", "user.email.changed", False),
        ("order.**", "user.*", False),
    ],
)
def test_route_signals_against_handler_patterns(route: str, handler: str, covered: bool) -> None:
    from bridge._routes import overlaps, unhandled_signals

    assert overlaps(route, handler) is covered
    assert overlaps(handler, route) is covered
    bus = EventBus()
    bus.on(handler)(lambda sender, **_: None)
    assert unhandled_signals(Route.inbound(route, topic="t"), bus) == ([] if covered else [route])


def test_one_table_of_options_agrees_with_config_bridge_and_the_reference() -> None:
    """BRIDGE_OPTIONS is the one table: Config's defaults, Bridge's keyword arguments (same
    names, same defaults) and the documented defaults all agree with it, and a Bridge
    option missing from the table fails here."""
    import dataclasses
    import inspect

    from bridge import Bridge
    from bridge._config import BRIDGE_CONSTRUCTOR_KEYS

    missing = dataclasses.MISSING
    fields = {
        f.name: f.default_factory() if f.default_factory is not missing else f.default
        for f in dataclasses.fields(Config)
    }
    for key, option in BRIDGE_OPTIONS.items():
        if key != "service":
            assert fields[key] == option.default, key

    signature = inspect.signature(Bridge.__init__).parameters
    not_configurable = {"self", "bus", "transport", "routes", "service", "codec"}
    # callables and OpenTelemetry objects: Python only, not TOML
    not_configurable |= {"on_delivery_failure", "tracer_provider"}
    keywords = {name for name in signature if name not in not_configurable}
    assert keywords == set(BRIDGE_CONSTRUCTOR_KEYS), "a Bridge option is not in BRIDGE_OPTIONS"
    for key in BRIDGE_CONSTRUCTOR_KEYS:
        assert signature[key].default == BRIDGE_OPTIONS[key].default, key

    reference = (ROOT / "docs" / "configuration.md").read_text()
    for key, option in BRIDGE_OPTIONS.items():
        [row] = [line for line in reference.splitlines() if line.startswith(f"| `{key}` |")]
        documented = row.split("|")[3].strip()
        default = option.default
        if default is None or key == "modules":
            continue  # "required", "none", "the service", "[]": words, not values
        if isinstance(default, Mapping):  # a TOML inline table, then words
            table = ", ".join(f'"{k}" = "{v}"' for k, v in default.items())
            assert documented.startswith(f"`{{ {table} }}`" if table else "`{}`"), key
            continue
        literal = (
            "true"
            if default is True
            else "false"
            if default is False
            else f'"{default}"'
            if isinstance(default, str)
            else f"{default}"
        )
        assert documented == f"`{literal}`", (key, documented, literal)
