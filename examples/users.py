"""The user service: registers users and announces each with a ``user.registered`` event.

It knows nothing about who listens. Run it with a configuration file::

    python -m examples.users -c examples/monolith.toml "Ann=ann@example.com" ...

The file decides the rest: ``monolith.toml`` imports the message service into this process
(local signals, no broker); ``user-service.toml`` instead routes ``user.*`` to Kafka.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
from collections.abc import Sequence

from eventbus import default_bus

_ids = itertools.count(1)


def register(name: str, email: str) -> int:
    """Register a user; emit ``user.registered`` on the process-wide bus; return the id."""
    user_id = next(_ids)
    print(f"user-service (pid {os.getpid()}): registered {name} <{email}> as user {user_id}")
    default_bus.emit("user.registered", user_id=user_id, name=name, email=email)
    return user_id


def main(argv: Sequence[str] | None = None) -> int:
    """Host the service as the configuration says, register the given users, stop."""
    from bridge import DaemonError, hosted, load_config

    parser = argparse.ArgumentParser(prog="python -m examples.users", description=__doc__)
    parser.add_argument("-c", "--config", required=True, help="the service's TOML file")
    parser.add_argument("users", nargs="+", metavar="NAME=EMAIL")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    logging.basicConfig(level=config.log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        with hosted(config) as bridge:
            for user in args.users:
                name, _, email = user.partition("=")
                register(name, email)
            if bridge is not None:
                print(f"user-service (pid {os.getpid()}): flushing events to Kafka")
    except DaemonError as exc:
        print(f"user-service: error: {exc}")
        return exc.status
    return 0


if __name__ == "__main__":
    import sys

    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    raise SystemExit(main())
