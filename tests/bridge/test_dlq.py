"""Dead letters an operator can use: their headers, ``_dlq`` (ls/show/replay) and reruns.

Each test runs on MemoryTransport and on the real broker.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

from bridge import Bridge, MsgpackCodec, Route, Transport
from bridge._dlq import Replay, ReplayProgress, Selection, read_topic, summarize
from eventbus import EventBus, handler_name
from tests.bridge.helpers import read, wait_for


class Service:
    """A service whose ``flaky`` handler fails while ``broken`` is set; ``steady`` never."""

    def __init__(self, transport: Transport, topic: str, name: str = "shipping") -> None:
        self.bus = EventBus()
        self.broken = threading.Event()
        self.broken.set()
        self.steady_calls: list[int] = []
        self.flaky_calls: list[int] = []
        self.bad: set[int] = set()  # flaky fails for these n even when not broken
        self.topic = topic
        self.dlq = topic + ".dlq"

        @self.bus.on("order.*")
        def steady(sender: Any, n: int, **_: Any) -> None:
            self.steady_calls.append(n)

        @self.bus.on("order.*")
        def flaky(sender: Any, n: int, **_: Any) -> None:
            self.flaky_calls.append(n)
            if self.broken.is_set() or n in self.bad:
                raise ValueError(f"order {n} cannot be shipped")

        self.flaky_name = handler_name(flaky)
        self.bridge = Bridge(
            self.bus,
            transport=transport,
            service=name,
            routes=[Route.inbound("order.*", topic=topic)],
            max_attempts=2,
            backoff=0.001,
        )


def emit_orders(transport: Transport, topic: str, names: list[str]) -> None:
    bus = EventBus()
    with Bridge(
        bus, transport=transport, service="shop", routes=[Route.outbound("order.*", topic=topic)]
    ):
        for n, name in enumerate(names):
            bus.emit(name, n=n)


def topic_name() -> str:
    return f"orders-{uuid.uuid4().hex[:10]}"


def dead_letter_some(transport: Transport, names: list[str]) -> Service:
    """Every event of ``names`` (n = its index) is dead-lettered by ``flaky``."""
    svc = Service(transport, topic_name())
    with svc.bridge:
        emit_orders(transport, svc.topic, names)
        wait_for(lambda: svc.bridge.stats.dead_lettered == len(names), 30, "dead letters")
    assert sorted(svc.steady_calls) == list(range(len(names)))
    return svc


def test_dead_letter_names_every_failed_handler_with_a_bounded_traceback(
    transport: Transport,
) -> None:
    bus = EventBus()
    topic = topic_name()

    def deep(n: int) -> None:
        if n:
            deep(n - 1)
        raise KeyError("x" * 20_000)

    @bus.on("order.placed")
    def first(sender: Any, n: int) -> None:
        deep(50)

    @bus.on("order.placed")
    def second(sender: Any, n: int) -> None:
        raise RuntimeError("second is down")

    route = Route.inbound("order.*", topic=topic)
    with Bridge(bus, transport=transport, service="svc", routes=[route], max_attempts=1) as b:
        emit_orders(transport, topic, ["order.placed"])
        wait_for(lambda: b.stats.dead_lettered == 1, 30)
    [dead] = read(transport, topic + ".dlq", 1)
    headers = dict(dead.headers)
    assert json.loads(headers["eventbus-dlq-handlers"]) == [
        handler_name(first),
        handler_name(second),
    ]
    trace = headers["eventbus-dlq-traceback"]
    assert len(trace) <= 8192
    text = trace.decode()
    assert f"handler {handler_name(first)}:" in text and "KeyError" in text
    assert f"handler {handler_name(second)}:" in text and "second is down" in text
    assert "in deep" in text  # the innermost frames are kept


def test_ls_counts_by_type_reason_and_handler(transport: Transport) -> None:
    svc = dead_letter_some(transport, ["order.placed", "order.placed", "order.cancelled"])
    summary = summarize(transport, svc.dlq, MsgpackCodec())
    assert summary.count == 3
    assert summary.types == {"order.placed": 2, "order.cancelled": 1}
    assert summary.reasons == {"ValueError": 3}
    assert summary.handlers == {svc.flaky_name: 3}
    assert summary.services == {"shipping": 3}
    assert summary.oldest is not None and summary.newest is not None
    assert summary.oldest <= summary.newest
    only = summarize(transport, svc.dlq, MsgpackCodec(), Selection(types=("order.cancelled",)))
    assert only.count == 1


def test_show_decodes_payload_headers_and_traceback(transport: Transport) -> None:
    svc = dead_letter_some(transport, ["order.placed"])
    [info] = list(read_topic(transport, svc.dlq, MsgpackCodec()))
    assert info.problem is None and info.type == "order.placed" and info.payload == {"n": 0}
    assert info.topic == svc.topic and info.partition == 0 and info.offset == 0
    assert info.attempts == 2 and info.error == "ValueError" and info.service == "shipping"
    assert info.handlers == (svc.flaky_name,)
    assert info.traceback is not None and "order 0 cannot be shipped" in info.traceback
    data = info.as_json()
    assert data["payload"] == {"n": 0} and data["reason"].startswith("handler failed after 2")
    assert ["eventbus-dlq-service", "shipping"] in data["headers"]


def test_replay_to_the_topic_reruns_only_the_failed_handler_of_that_service(
    transport: Transport,
) -> None:
    svc = dead_letter_some(transport, ["order.placed", "order.placed"])
    svc.broken.clear()
    svc.steady_calls.clear()
    svc.flaky_calls.clear()
    billing_calls: list[int] = []
    billing_bus = EventBus()
    billing_bus.on("order.*")(lambda sender, n, **_: billing_calls.append(n))
    billing = Bridge(
        billing_bus,
        transport=transport,
        service="billing",
        routes=[Route.inbound("order.*", topic=svc.topic)],
    )
    shipping = Bridge(
        svc.bus,
        transport=transport,
        service="shipping",
        routes=[Route.inbound("order.*", topic=svc.topic)],
    )
    with shipping, billing:
        result = Replay(transport, svc.dlq).run()
        assert result.finished and result.matched == 2 and result.replayed == 2
        wait_for(lambda: sorted(svc.flaky_calls) == [0, 1], 30, "the reruns")
        # The handler's calls come before the counters (handled: once the batch is done).
        wait_for(
            lambda: shipping.stats.handled == 2 and shipping.stats.replays_handled == 2,
            30,
            "shipping counting the reruns",
        )
        # billing's bridge skips them: its handlers saw the originals
        wait_for(lambda: billing.stats.duplicates == 2, 30, "billing skipping the reruns")
        assert billing.stats.replays_handled == 0
    assert shipping.stats.handled == 2 and shipping.stats.replays_handled == 2  # no more
    assert svc.steady_calls == [] and billing_calls == []


def test_a_rerun_is_handled_despite_dedup_of_its_first_delivery_and_once_only(
    transport: Transport,
) -> None:
    svc = dead_letter_some(transport, ["order.placed"])
    svc.broken.clear()
    svc.flaky_calls.clear()
    # A bridge of the service handles the rerun...
    bridge = Bridge(
        svc.bus,
        transport=transport,
        service="shipping",
        routes=[Route.inbound("order.*", topic=svc.topic)],
    )
    # The event id counts as seen (a dedup store that recorded it, say from a delivery
    # of the same event that was handled): the rerun is handled all the same.
    [event_id] = read_topic_ids(transport, svc.dlq)
    bridge._dedup.add(event_id)
    with bridge:
        Replay(transport, svc.dlq).run()
        wait_for(lambda: svc.flaky_calls == [0], 30, "the rerun")
        # ...and the same rerun delivered again is a duplicate.
        [rerun] = read(transport, svc.topic, 2)[1:]
        producer = transport.producer()
        producer.produce(svc.topic, rerun.value or b"", rerun.key, rerun.headers)
        producer.flush(10)
        producer.close()
        wait_for(lambda: bridge.stats.duplicates == 1, 30, "the duplicate rerun")
    assert svc.flaky_calls == [0]


def read_topic_ids(transport: Transport, dlq: str) -> list[str]:
    return [
        info.envelope.id for info in read_topic(transport, dlq, MsgpackCodec()) if info.envelope
    ]


def test_replay_to_the_handlers_runs_only_the_failed_ones_and_dead_letters_again(
    transport: Transport,
) -> None:
    svc = dead_letter_some(transport, ["order.placed", "order.placed", "order.placed"])
    svc.flaky_calls.clear()
    svc.steady_calls.clear()
    svc.broken.clear()
    svc.bad = {1}  # still failing for this one
    late: list[int] = []
    svc.bus.on("order.placed")(lambda sender, n: late.append(n))  # did not fail: not rerun

    result = Replay(transport, svc.dlq, target="handlers", bus=svc.bus, service="shipping").run()
    assert result.finished and result.matched == 3
    assert result.replayed == 2 and result.failed == 1
    assert sorted(svc.flaky_calls) == [0, 1, 2] and svc.steady_calls == [] and late == []
    dead = read(transport, svc.dlq, 4)
    again = dict(dead[3].headers)
    assert b"handler failed on replay" in again["eventbus-dlq-reason"]
    assert b"order 1 cannot be shipped" in again["eventbus-dlq-reason"]
    assert again["eventbus-dlq-attempts"] == b"3"
    assert again["eventbus-dlq-topic"] == svc.topic.encode()
    assert again["eventbus-dlq-offset"] == str(dead_offset_of(dead[:3], 1)).encode()
    # the same command again resumes: it reads only the new dead letter
    svc.flaky_calls.clear()
    svc.bad = set()
    result = Replay(transport, svc.dlq, target="handlers", bus=svc.bus, service="shipping").run()
    assert result.read == 1 and result.replayed == 1 and svc.flaky_calls == [1]
    # dead letters of another service are not run by these handlers
    other = Replay(
        transport, svc.dlq, target="handlers", bus=svc.bus, service="billing", name="b"
    ).run()
    assert other.skipped == 4 and other.replayed == 0


def dead_offset_of(dead: list[Any], n: int) -> int:
    for record in dead:
        if MsgpackCodec().decode(record.value)["n"] == n:
            return int(dict(record.headers)["eventbus-dlq-offset"])
    raise AssertionError(n)


def test_each_filter_selects_its_dead_letters(transport: Transport) -> None:
    svc = dead_letter_some(transport, ["order.placed", "order.cancelled", "order.placed"])
    infos = list(read_topic(transport, svc.dlq, MsgpackCodec()))
    times = sorted(i.dead_lettered_at or 0 for i in infos)

    def count(selection: Selection) -> int:
        progress = Replay(
            transport, svc.dlq, selection=selection, dry_run=True, name=uuid.uuid4().hex
        )
        return progress.run().matched

    assert count(Selection()) == 3
    assert count(Selection(types=("order.placed",))) == 2
    assert count(Selection(types=("order.*",))) == 3
    assert count(Selection(reasons=("ValueError",))) == 3
    assert count(Selection(reasons=("order 1 cannot",))) == 1
    assert count(Selection(reasons=("KeyError",))) == 0
    assert count(Selection(handlers=(svc.flaky_name,))) == 3
    assert count(Selection(handlers=(svc.flaky_name.rsplit(".", 1)[1],))) == 3
    assert count(Selection(handlers=("steady",))) == 0
    assert count(Selection(since=times[-1] + 1)) == 0
    assert count(Selection(until=times[0])) == 0
    assert count(Selection(since=times[0], until=times[-1] + 0.001)) == 3
    assert count(Selection(from_offset=1)) == 2
    assert count(Selection(from_offset=1, to_offset=1)) == 1
    assert count(Selection(partition=1)) == 0


def test_dry_run_sends_nothing_and_moves_no_position(transport: Transport) -> None:
    svc = dead_letter_some(transport, ["order.placed", "order.placed"])
    first = Replay(transport, svc.dlq, dry_run=True, name="same").run()
    assert first.replayed == 2 and first.finished
    again = Replay(transport, svc.dlq, dry_run=True, name="same").run()
    assert again.read == 2  # nothing was committed
    assert transport.list_topics()[svc.topic]  # (exists)
    assert len(read(transport, svc.topic, 2)) == 2  # only the originals


def test_an_interrupted_replay_resumes_with_nothing_replayed_twice(transport: Transport) -> None:
    names = ["order.placed"] * 7
    svc = dead_letter_some(transport, names)
    target = topic_name()
    transport.ensure_topics([target])
    stop = threading.Event()

    def stop_after_three(state: ReplayProgress) -> None:
        if state.replayed >= 3:
            stop.set()

    first = Replay(
        transport, svc.dlq, to_topic=target, batch_size=1, stop=stop, progress=stop_after_three
    ).run()
    assert not first.finished and first.replayed == 3
    second = Replay(transport, svc.dlq, to_topic=target, batch_size=1).run()
    assert second.finished and second.read == 4 and second.replayed == 4
    replayed = read(transport, target, 7)
    ns = sorted(MsgpackCodec().decode(r.value or b"")["n"] for r in replayed)
    assert ns == list(range(7))
    third = Replay(transport, svc.dlq, to_topic=target, batch_size=1).run()
    assert third.read == 0 and third.finished
    assert len(read_all(transport, target)) == 7


def read_all(transport: Transport, topic: str) -> list[Any]:
    return list(read_topic_records(transport, topic))


def read_topic_records(transport: Transport, topic: str) -> list[Any]:
    from bridge._dlq import TopicReader

    with TopicReader(transport, topic, f"all-{uuid.uuid4().hex}") as reader:
        return list(reader)


def test_hostile_rerun_headers_are_dead_lettered(transport: Transport) -> None:
    svc = Service(transport, topic_name())
    svc.broken.clear()
    producer = transport.producer()
    good = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"id-1"),
        ("ce_source", b"shop"),
        ("ce_type", b"order.placed"),
    ]
    value = MsgpackCodec().encode({"n": 5})
    bad = [
        [
            ("eventbus-rerun-service", b"shipping"),
            ("eventbus-rerun-handlers", b"{not json"),
            ("eventbus-rerun-id", b"x"),
        ],
        [
            ("eventbus-rerun-service", b"shipping"),
            ("eventbus-rerun-handlers", b"[]"),
            ("eventbus-rerun-id", b"x"),
        ],
        [("eventbus-rerun-handlers", b'["a"]'), ("eventbus-rerun-id", b"x")],
        [("eventbus-rerun-service", b"shipping"), ("eventbus-rerun-id", b"\xff")],
        [
            ("eventbus-rerun-service", b"shipping"),
            ("eventbus-rerun-handlers", b'["os.system"]'),
            ("eventbus-rerun-id", b"x"),
        ],
    ]
    with svc.bridge:
        for headers in bad:
            producer.produce(svc.topic, value, None, good + headers)
        producer.produce(svc.topic, value, None, [*good[:1], ("ce_id", b"id-2"), *good[2:]])
        producer.flush(10)
        wait_for(lambda: svc.bridge.stats.dead_lettered == 5 and svc.bridge.stats.handled == 1, 30)
    producer.close()
    reasons = [dict(r.headers)["eventbus-dlq-reason"] for r in read(transport, svc.dlq, 5)]
    assert all(b"rerun" in r for r in reasons), reasons
    assert svc.flaky_calls == [5] and svc.steady_calls == [5]  # only the plain record ran


def test_purge_deletes_from_the_start_up_to_a_time_or_an_offset(transport: Transport) -> None:
    from bridge._dlq import plan_purge, purge

    svc = dead_letter_some(transport, ["order.placed"] * 4)
    codec = MsgpackCodec()
    infos = list(read_topic(transport, svc.dlq, codec))
    times = [i.dead_lettered_at or 0 for i in infos]
    assert plan_purge(transport, svc.dlq, codec, until=times[0]).count == 0
    assert plan_purge(transport, svc.dlq, codec, until=max(times) + 0.001).count == 4
    plan = plan_purge(transport, svc.dlq, codec, to_offset=1)
    assert plan.partitions == {0: (0, 2)} and plan.count == 2
    purge(transport, plan)
    left = list(read_topic(transport, svc.dlq, codec))
    assert [i.record.offset for i in left] == [2, 3]
    assert plan_purge(transport, svc.dlq, codec, partition=1).count == 0
    everything = plan_purge(transport, svc.dlq, codec)
    assert everything.partitions == {0: (2, 4)}
    purge(transport, everything)
    assert list(read_topic(transport, svc.dlq, codec)) == []
    assert summarize(transport, svc.dlq, codec).count == 0
