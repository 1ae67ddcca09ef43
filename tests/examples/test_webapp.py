"""examples/webapp.py for real: two FastAPI apps under uvicorn on 127.0.0.1, a real broker.

A request to the user service emits; the mail service's async handler receives the event
on its own event loop and uses its loop-bound ``httpx.AsyncClient`` to call back.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from examples.webapp import mail_app, users_app

pytestmark = pytest.mark.kafka
# httpx's default is 5 s: both servers and their bridges share this process (and a
# loaded machine), so a request may wait for the GIL and the event loops for a while.
TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(app: Any) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:  # set once the lifespan (the bridge's start) completed
        assert thread.is_alive(), "the server failed to start"
        assert time.monotonic() < deadline, "the server did not start in 60 s"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)
        assert not thread.is_alive(), "the server did not stop"


@pytest.fixture
def topic() -> str:
    return f"webapp-{uuid.uuid4().hex[:10]}"


def test_a_request_in_one_app_reaches_an_async_handler_of_another(
    kafka_bootstrap: str, topic: str
) -> None:
    users = serve(users_app(kafka_bootstrap, topic))
    users_url = next(users)
    mail = serve(mail_app(kafka_bootstrap, users_url, topic))
    mail_url = next(mail)
    try:
        for name in ("Ann", "Bob", "Cy"):
            reply = httpx.post(f"{users_url}/users", params={"name": name}, timeout=TIMEOUT)
            assert reply.status_code == 200
        deadline = time.monotonic() + 30
        sent: list[dict[str, Any]] = []
        while len(sent) < 3:
            assert time.monotonic() < deadline, f"mails sent: {sent}"
            time.sleep(0.05)
            sent = httpx.get(f"{mail_url}/sent", timeout=TIMEOUT).json()
        assert sorted(m["to"] for m in sent) == ["Ann", "Bob", "Cy"]
        assert {m["from_service"] for m in sent} == {"users"}
    finally:
        for server in (mail, users):
            next(server, None)
