"""The message service: sends a welcome message to each new user (here: prints it).

It knows nothing about the user service; it handles ``user.registered`` on the
process-wide bus, whether the event was emitted in this process or arrived from Kafka
(then the sender is a ``bridge.Remote`` saying where it came from).
"""

from __future__ import annotations

import os
from typing import Any

from eventbus import default_bus


@default_bus.on("user.registered")
def send_welcome(sender: Any, *, user_id: int, name: str, email: str, **_: Any) -> None:
    """Send (print) the welcome message of a new user."""
    via = f"from {sender.source} via Kafka topic {sender.topic}" if sender else "local signal"
    print(
        f"message-service (pid {os.getpid()}): welcome message to {email}: "
        f"'Welcome aboard, {name}!' (user {user_id}, {via})",
        flush=True,
    )
