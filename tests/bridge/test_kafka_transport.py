"""KafkaTransport behaviours beyond the shared contract: config defaults and key filtering,
an unreachable broker, the full local queue, error translation.

Most of these need no broker at all (they point at 127.0.0.1:1, where nothing listens).
"""

from __future__ import annotations

import logging
import time

import pytest
from confluent_kafka import KafkaError

from bridge._errors import ConfigError, QueueFullError, TransportError
from bridge._kafka import KafkaTransport, _on_error
from bridge._transport import Record

NOWHERE = "127.0.0.1:1"


def test_unreachable_broker_fails_list_topics_quickly_and_clearly():
    transport = KafkaTransport({"bootstrap.servers": NOWHERE})
    started = time.monotonic()
    with pytest.raises(TransportError, match=r"cannot reach Kafka at 127\.0\.0\.1:1"):
        transport.list_topics(timeout=1)
    assert time.monotonic() - started < 5


def test_unreachable_broker_fails_ensure_topics_quickly_and_clearly():
    transport = KafkaTransport({"bootstrap.servers": NOWHERE})
    started = time.monotonic()
    with pytest.raises(TransportError, match=r"cannot reach Kafka at 127\.0\.0\.1:1"):
        transport.ensure_topics(["t"], timeout=1)
    assert time.monotonic() - started < 5


def test_defaults_are_added_and_user_keys_win():
    transport = KafkaTransport(
        {
            "bootstrap.servers": NOWHERE,
            "linger.ms": 50,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "group.id": "ignored: the argument names the group",
        }
    )
    producer = transport.producer_config()
    assert producer["bootstrap.servers"] == NOWHERE
    assert producer["enable.idempotence"] is True
    assert producer["acks"] == "all"
    assert producer["linger.ms"] == 50
    assert "enable.auto.commit" not in producer
    assert "group.id" not in producer

    consumer = transport.consumer_config("svc")
    assert consumer["group.id"] == "svc"
    assert consumer["enable.auto.offset.store"] is False
    assert consumer["enable.auto.commit"] is False
    assert consumer["auto.offset.reset"] == "earliest"
    assert consumer["partition.assignment.strategy"] == "cooperative-sticky"
    assert "linger.ms" not in consumer
    assert "enable.idempotence" not in consumer
    assert transport.consumer_config("svc", from_beginning=True)["auto.offset.reset"] == "earliest"
    assert KafkaTransport({}).consumer_config("g")["auto.offset.reset"] == "latest"


def test_mixed_config_gives_no_wrong_client_type_warnings(caplog):
    config = {
        "bootstrap.servers": NOWHERE,
        "linger.ms": 5,
        "enable.idempotence": True,
        "session.timeout.ms": 10000,
        "enable.auto.commit": True,
    }
    transport = KafkaTransport(config)
    with caplog.at_level(logging.WARNING, logger="bridge.kafka"):
        producer = transport.producer()
        consumer = transport.consumer("g", ["t"])
        producer.poll(0.3)  # librdkafka's logs are served from poll
        consumer.poll(0.3)
        consumer.close()
        producer.close(0)
        # Control: the same config passed to a raw producer does warn, through our logger.
        import confluent_kafka

        raw = confluent_kafka.Producer({**config, "logger": logging.getLogger("bridge.kafka")})
        raw.poll(0.3)
    confwarn = [r.getMessage() for r in caplog.records if "CONFWARN" in r.getMessage()]
    assert confwarn, "the control produced no CONFWARN: this test cannot see warnings"
    assert all("producer-" in line for line in confwarn), confwarn  # none from our clients
    assert len(confwarn) == 2  # session.timeout.ms, enable.auto.commit: the raw one only


def test_bad_config_raises_config_error():
    transport = KafkaTransport({"bootstrap.servers": NOWHERE, "no.such.property": 1})
    with pytest.raises(ConfigError, match=r"no\.such\.property"):
        transport.producer()
    with pytest.raises(ConfigError, match=r"no\.such\.property"):
        transport.consumer("g", ["t"])


@pytest.mark.parametrize("key", ["delivery.report.only.error", "on_delivery"])
def test_delivery_report_keys_are_managed_by_the_transport(key):
    with pytest.raises(ConfigError, match=f"{key}: delivery reports are managed"):
        KafkaTransport({"bootstrap.servers": "127.0.0.1:1", key: True})


def test_full_local_queue_raises_queue_full_error():
    transport = KafkaTransport(
        {"bootstrap.servers": NOWHERE, "queue.buffering.max.messages": 1},
        queue_full_timeout=0.3,
    )
    producer = transport.producer()
    producer.produce("t", b"fits")
    started = time.monotonic()
    with pytest.raises(QueueFullError):
        producer.produce("t", b"does not fit")
    assert 0.25 < time.monotonic() - started < 3
    producer.close(0)


def test_close_reports_undelivered_records_as_failed():
    transport = KafkaTransport({"bootstrap.servers": NOWHERE})
    producer = transport.producer()
    reports: list[tuple[Exception | None, Record]] = []
    producer.produce("t", b"v", b"k", [("h", b"1")], lambda e, r: reports.append((e, r)))

    producer.close(timeout=0.2)

    [(error, record)] = reports
    assert isinstance(error, TransportError)
    assert (record.topic, record.offset, record.key, record.value) == ("t", -1, b"k", b"v")
    assert list(record.headers) == [("h", b"1")]


def test_error_callback_raises_only_on_fatal_errors(caplog, monkeypatch):
    import bridge._kafka
    from bridge._throttle import LogThrottle

    # A throttle of its own: earlier tests may have logged this error code already.
    monkeypatch.setattr(bridge._kafka, "_error_log", LogThrottle(bridge._kafka.log))
    with caplog.at_level(logging.WARNING, logger="bridge.kafka"):
        _on_error(KafkaError(KafkaError._TRANSPORT, "broker down"))
    assert "broker down" in caplog.text
    with pytest.raises(TransportError, match="fenced"):
        _on_error(KafkaError(KafkaError._FENCED, "fenced", fatal=True))


@pytest.mark.kafka
def test_produce_larger_than_message_max_bytes_raises_transport_error(kafka_bootstrap):
    transport = KafkaTransport({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 1000})
    producer = transport.producer()
    with pytest.raises(TransportError, match="too large"):
        producer.produce("t", b"x" * 2000)
    producer.close(0)
