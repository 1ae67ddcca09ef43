"""The topics the bridge creates get the configured partitions, replication factor and
topic configs (dead-letter topics their own retention); bad values are refused early."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource

from bridge import Bridge, ConfigError, KafkaTransport, Route, TransportError
from bridge._config import parse_config
from bridge._topic_config import DEAD_LETTER_TOPIC_CONFIG
from eventbus import EventBus
from tests.bridge.helpers import unique


def describe(bootstrap: str, topic: str) -> tuple[int, int, dict[str, Any]]:
    """Partitions, replicas of partition 0, and the configs set on the topic itself."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    meta = admin.list_topics(topic, timeout=10).topics[topic]
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entries = admin.describe_configs([resource])[resource].result(timeout=10)
    own = {
        name: entry.value
        for name, entry in entries.items()
        if entry.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    }
    return len(meta.partitions), len(meta.partitions[0].replicas), own


@pytest.mark.kafka
def test_created_topics_have_the_configured_partitions_replicas_and_configs(
    kafka_bootstrap: str,
) -> None:
    topic = unique("topicconf")
    route = Route.inbound("acct.*", topic=topic, retry_delays=[1.0])
    bus = EventBus()
    bus.on("acct.moved")(lambda sender, **kw: None)
    with Bridge(
        bus,
        transport=KafkaTransport({"bootstrap.servers": kafka_bootstrap}),
        service="ledger",
        routes=[route],
        partitions=3,
        replication_factor=1,
        topic_config={"retention.ms": 3_600_000, "cleanup.policy": "delete"},
    ):
        pass
    hour = {"retention.ms": "3600000", "cleanup.policy": "delete"}
    assert describe(kafka_bootstrap, topic) == (3, 1, hour)
    [retry] = route.retry_topics
    assert describe(kafka_bootstrap, retry) == (3, 1, hour)
    letters = {**hour, "retention.ms": DEAD_LETTER_TOPIC_CONFIG["retention.ms"]}
    assert describe(kafka_bootstrap, route.dead_letter_topic) == (3, 1, letters)


@pytest.mark.kafka
def test_a_setting_the_broker_refuses_fails_the_start_with_its_reason(
    kafka_bootstrap: str,
) -> None:
    bridge = Bridge(
        EventBus(),
        transport=KafkaTransport({"bootstrap.servers": kafka_bootstrap}),
        service="s",
        routes=[Route.outbound("a.*", topic=unique("topicconf-refused"))],
        replication_factor=7,  # one broker
        ready_timeout=10,
    )
    with pytest.raises(TransportError, match=r"(?i)cannot create topic.*replication"):
        bridge.start()


def test_the_dead_letter_retention_default_is_four_weeks() -> None:
    assert {"retention.ms": str(28 * 86_400_000)} == DEAD_LETTER_TOPIC_CONFIG
    config = parse_config({"bridge": {"service": "s"}})
    assert config.topic_config == {}
    assert config.dead_letter_topic_config == DEAD_LETTER_TOPIC_CONFIG


def test_topic_configs_from_toml_the_environment_and_set() -> None:
    config = parse_config(
        {
            "bridge": {
                "service": "s",
                "replication_factor": 3,
                # an unquoted dotted key is a nested table in TOML: the same setting
                "topic_config": {"retention": {"ms": 86_400_000}, "preallocate": True},
            }
        },
        env={"EVENTBUS_BRIDGE_DEAD_LETTER_TOPIC_CONFIG": '{"retention.ms": -1}'},
    )
    assert config.replication_factor == 3
    assert config.topic_config == {"retention.ms": "86400000", "preallocate": "true"}
    assert config.dead_letter_topic_config == {"retention.ms": "-1"}
    # --set replaces the table; a comma not followed by "name=" belongs to the value
    config = parse_config(
        {"bridge": {"service": "s", "topic_config": {"segment.ms": 1}}},
        overrides=["bridge.topic_config=retention.ms=1000, cleanup.policy=compact,delete"],
    )
    assert config.topic_config == {"retention.ms": "1000", "cleanup.policy": "compact,delete"}
    config = parse_config(
        {"bridge": {"service": "s", "topic_config": {"retention.ms": 86_400_000}}},
    )
    assert config.topic_config == {"retention.ms": "86400000"}
    options = config.bridge_options()
    assert options["topic_config"] == {"retention.ms": "86400000"}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"retention.msec": 1}, "did you mean 'retention.ms'"),
        ({"retention.ms": "a week"}, "retention.ms must be an integer"),
        ({"cleanup.policy": "forever"}, "cleanup.policy must be"),
        ({"preallocate": "maybe"}, "preallocate must be one of true, false"),
        ({"min.cleanable.dirty.ratio": 2}, "from 0 to 1"),
        ({"compression.type": "brotli"}, "compression.type must be one of"),
    ],
)
def test_check_refuses_bad_topic_configs(table: dict[str, Any], message: str) -> None:
    for key in ("topic_config", "dead_letter_topic_config"):
        with pytest.raises(ConfigError, match=message) as info:
            parse_config({"bridge": {"service": "s", key: table}}, source="svc.toml")
        assert f"[bridge] {key}" in str(info.value)
        with pytest.raises(ConfigError, match=message):
            Bridge(EventBus(), transport=KafkaTransport({}), service="s", routes=[], **{key: table})


def test_check_refuses_a_replication_factor_below_one() -> None:
    with pytest.raises(ConfigError, match=r"replication_factor.*at least 1"):
        parse_config({"bridge": {"service": "s", "replication_factor": 0}})
    with pytest.raises(ConfigError, match="replication_factor"):
        Bridge(
            EventBus(), transport=KafkaTransport({}), service="s", routes=[], replication_factor=0
        )
