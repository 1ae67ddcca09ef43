"""Two FastAPI services that talk through Kafka, each with a bridge on its own event loop.

* ``users``: ``POST /users`` registers a user and emits ``user.registered`` (a plain,
  synchronous ``bus.emit`` inside the async endpoint: it only queues the record).
* ``mail``: an async handler of ``user.registered`` runs on the app's event loop, so it
  can use the app's loop-bound resources: here an ``httpx.AsyncClient`` made in the
  lifespan, which asks the user service for the user's name. ``GET /sent`` lists mails.

Run (needs ``pip install fastapi uvicorn httpx`` and a broker)::

    KAFKA_BOOTSTRAP=127.0.0.1:9092 python -m examples.webapp users --port 8001
    KAFKA_BOOTSTRAP=127.0.0.1:9092 USERS_URL=http://127.0.0.1:8001 \\
        python -m examples.webapp mail --port 8002
    curl -X POST 'http://127.0.0.1:8001/users?name=Ann'
    curl http://127.0.0.1:8002/sent
"""

from __future__ import annotations

import argparse
import itertools
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from bridge import Bridge, KafkaTransport, Route
from eventbus import EventBus

TOPIC = "webapp.users"


def users_app(bootstrap: str, topic: str = TOPIC) -> FastAPI:
    """The user service: registers users, announces them on ``topic``."""
    bus = EventBus()
    names: dict[int, str] = {}
    ids = itertools.count(1)
    bridge = Bridge(
        bus,
        transport=KafkaTransport({"bootstrap.servers": bootstrap}),
        service="users",
        routes=[Route.outbound("user.*", topic=topic, key="user_id")],
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with bridge:
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/users")
    async def register(name: str) -> dict[str, Any]:
        user_id = next(ids)
        names[user_id] = name
        bus.emit("user.registered", user_id=user_id)
        return {"user_id": user_id}

    @app.get("/users/{user_id}")
    async def user(user_id: int) -> dict[str, Any]:
        return {"user_id": user_id, "name": names[user_id]}

    return app


def mail_app(bootstrap: str, users_url: str, topic: str = TOPIC) -> FastAPI:
    """The mail service: welcomes every registered user, using the app's HTTP client."""
    bus = EventBus()
    sent: list[dict[str, Any]] = []
    state: dict[str, httpx.AsyncClient] = {}

    @bus.on("user.registered")
    async def welcome(sender: Any, *, user_id: int) -> None:
        user = (await state["http"].get(f"{users_url}/users/{user_id}")).json()
        sent.append({"to": user["name"], "user_id": user_id, "from_service": sender.source})

    bridge = Bridge(
        bus,
        transport=KafkaTransport({"bootstrap.servers": bootstrap}),
        service="mail",
        routes=[Route.inbound("user.*", topic=topic)],
        concurrency=16,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient() as http:  # bound to this app's event loop
            state["http"] = http
            async with bridge:
                yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/sent")
    async def sent_mails() -> list[dict[str, Any]]:
        return sent

    return app


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m examples.webapp", description=__doc__)
    parser.add_argument("service", choices=["users", "mail"])
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    if args.service == "users":
        app = users_app(bootstrap)
    else:
        app = mail_app(bootstrap, os.environ.get("USERS_URL", "http://127.0.0.1:8001"))
    uvicorn.run(app, host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
