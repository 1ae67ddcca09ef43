"""A minimal bridge daemon for the crash test: handles ``load.*`` events of one topic.

    python -m tests.reliability.daemon BOOTSTRAP TOPIC GROUP OUT [DEDUP_DB]

The handler appends ``<ce_id> <n>`` to OUT and flushes, so the file records each run of
the handler even if the process is killed right after. Prints ``ready`` once the bridge
is started; SIGTERM stops the bridge cleanly (exit 0).
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from bridge import Bridge, KafkaTransport, Route
from eventbus import EventBus


def main(bootstrap: str, topic: str, group: str, out: str, dedup: str | None = None) -> None:
    bus = EventBus()
    handled = open(out, "a", buffering=1)  # noqa: SIM115 - open for the life of the process

    @bus.on("load.*")
    def handle(sender: Any, *, n: int, **_: Any) -> None:
        handled.write(f"{sender.id} {n}\n")
        handled.flush()

    config = {
        "bootstrap.servers": bootstrap,
        "auto.offset.reset": "earliest",
        # Static membership: a restarted daemon takes its partitions back at once instead
        # of waiting for the killed member's session to time out.
        "group.instance.id": f"{group}-daemon",
        "session.timeout.ms": 6000,
    }
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Bridge(
        bus,
        transport=KafkaTransport(config),
        service="crash-test",
        group=group,
        routes=[Route.inbound("load.*", topic=topic)],
        dedup_path=dedup,
        create_topics=False,
    ):
        print("ready", flush=True)
        stop.wait()
    handled.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
