"""``eventbus-bridge`` (also ``python -m bridge``): run, check, tail, emit and asyncapi.

``main(argv)`` parses the command line and returns the exit status; it never raises for
a user's mistake: every failure is one line on stderr, ``eventbus-bridge: error: ...``.

Exit statuses: 0 success; 1 a failure at run time (an event not delivered, a problem
found by ``check``, the bridge failing while running); 2 a bad command line,
configuration or handler module; 3 the broker could not be reached in time; 130 Ctrl-C
(``check``, ``emit``, ``tail``; ``run`` drains and exits 0).
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from importlib import metadata
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO
from uuid import UUID

from eventbus import default_bus

from ._config import Config, describe_route, load_config
from ._daemon import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    DaemonError,
    Interrupted,
    configure_logging,
    connect,
    import_modules,
    interrupt_on_sigint,
    preflight,
)
from ._errors import BridgeError, ConfigError, TransportError

if TYPE_CHECKING:
    from ._dlq import ReplayProgress

PROG = "eventbus-bridge"
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, as a shell reports a command ended by Ctrl-C
DEFAULT_TIMEOUT = 10.0
PROGRESS_HINT = "pip install tqdm (the [cli] extra: pip install '.[cli]')"

MAIN_EPILOG = """\
examples:
  eventbus-bridge run -c message-service.toml
  eventbus-bridge run --help
  eventbus-bridge check -c message-service.toml
  eventbus-bridge tail users -b 127.0.0.1:9092 --from-beginning
  eventbus-bridge emit user.registered user_id=42 email=a@example.com --topic users
  eventbus-bridge dlq ls -c message-service.toml
  eventbus-bridge asyncapi -c message-service.toml -o message-service.asyncapi.yaml

exit status: 0 ok, 1 failed at run time, 2 bad command line or configuration,
3 the broker could not be reached in time, 130 interrupted (Ctrl-C). See docs/operations.md.
"""

RUN_EPILOG = """\
Imports the [bridge] modules (they register handlers on eventbus.default_bus), starts
the bridge, and serves until SIGTERM or SIGINT. Then it drains: the running handler
finishes, offsets are committed, the producer is flushed; exit status 0. A second
signal exits at once without draining (status 128+signal).

examples:
  eventbus-bridge run -c message-service.toml
  eventbus-bridge run -c message-service.toml --metrics-port 9464 --log-level DEBUG
  EVENTBUS_KAFKA_BOOTSTRAP_SERVERS=kafka:9092 eventbus-bridge run -c message-service.toml
  eventbus-bridge run -c svc.toml --set bridge.max_attempts=5 --set kafka.client.id=svc-1
  eventbus-bridge run -c message-service.toml --workers 4   # 4 processes, one group

With --workers N (or [bridge] workers), the daemon supervises N worker processes: a
worker that crashes is restarted, SIGTERM drains them all, and one /metrics and
/healthz (200 when every worker is healthy) serve the daemon. See docs/operations.md.
"""

CHECK_EPILOG = """\
Validates the file (with the environment and --set applied), imports the handler
modules and checks that every inbound route has handlers, builds the librdkafka client
settings, reaches the broker and lists each route with whether its topics exist: what
run checks before it serves, so the two agree.
Secrets are masked. Exit status 0 when all is well, 1 when a topic is missing and
create_topics is false, 2 for a bad file or module, 3 when the broker is unreachable.

examples:
  eventbus-bridge check -c message-service.toml
  eventbus-bridge check -c message-service.toml --timeout 3
"""

TAIL_EPILOG = """\
Reads the topic with a throwaway consumer group (nothing is committed) and prints one
line per record: time, topic/partition@offset, type, source, key, payload. Records
that cannot be decoded are shown as UNDECODABLE with the reason. A dead letter gets a
second line: its reason, error, handler, original topic/partition@offset and attempts.
Stops on Ctrl-C (exit status 130; 143 on SIGTERM), or after -n records (0).
With --json, one JSON object per line (datetime, UUID and Decimal as text, bytes as
base64; undecodable records have an "error" field, dead letters a "dead_letter" object).

examples:
  eventbus-bridge tail users -b 127.0.0.1:9092
  eventbus-bridge tail users -c user-service.toml --from-beginning --json
  EVENTBUS_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 eventbus-bridge tail users -n 10
"""

EMIT_EPILOG = """\
Publishes one event exactly as a bridge would (msgpack value, CloudEvents headers),
through a bridge with a single outbound route. Each FIELD=VALUE is a payload field;
the value is parsed as JSON where it parses (42, true, null, [1,2], {"a":1},
"quoted text"), else taken as text. Exit status 0 once the broker acknowledged it.

examples:
  eventbus-bridge emit user.registered user_id=42 email=a@example.com --topic users
  eventbus-bridge emit user.registered user_id=42 --topic users --key user_id -b 127.0.0.1:9092
  eventbus-bridge emit order.placed order='{"id": 7, "lines": []}' --topic orders --create
"""

DLQ_EPILOG = """\
Inspect dead-letter topics and send their records again (docs/operations.md, "a
handler failed: find, fix, replay"). The broker comes from -c FILE (the service's
TOML, as for run) or -b HOSTS.

  ls      per dead-letter topic: how many, by type, reason, handler; oldest/newest
  show    each dead letter decoded: headers, payload, the failing handler's traceback
  replay  send them again: to their original topic (--to topic, the default), or
          straight to the service's handlers in this process (--to handlers, with -c)
  purge   delete them from the start of the topic (all, or up to a time or offset)

Filters (every one given must match): --type, --reason, --handler (repeatable),
--since/--until (ISO time, or a duration ago: 30m, 2h, 7d), --partition,
--from-offset/--to-offset.

examples:
  eventbus-bridge dlq ls -c shipping.toml
  eventbus-bridge dlq show orders.dlq -c shipping.toml --reason ValueError -n 5
  eventbus-bridge dlq replay orders.dlq -c shipping.toml --since 2h --dry-run
  eventbus-bridge dlq replay orders.dlq -c shipping.toml --to handlers --handler on_order
"""

DLQ_REPLAY_EPILOG = """\
Only the handlers that failed run again (their names are in the dead letter), and only
for the service that dead-lettered the record: a replay to the original topic carries
eventbus-rerun-* headers that the other services' bridges skip, and that make the
bridge handle it although it saw the event id before. With --to handlers, a record
that fails again is dead-lettered again with the new reason (to the same topic, after
the records this replay reads).

Progress goes to stderr: a bar when tqdm is installed (pip install tqdm, or the
[cli] extra) and stderr is a terminal, else a line a second (--progress to choose;
none with --json unless asked for).

A replay is a consumer group, eventbus-bridge-replay.<topic>.<name>: it commits each
batch once replayed, so the same command run again (same --name, or the same
filters) continues where an interrupted one stopped. It reads up to the end of the
topic as it was when it started. Exit status 0 when done, 1 when interrupted (run it
again to resume), 3 when the broker fails.

examples:
  eventbus-bridge dlq replay orders.dlq -c shipping.toml --type order.placed --dry-run
  eventbus-bridge dlq replay orders.dlq -c shipping.toml --since 2026-01-31T08:00
  eventbus-bridge dlq replay orders.dlq -c shipping.toml --to handlers --name fix-1234
"""

DLQ_PURGE_EPILOG = """\
Kafka deletes a topic's records from its start only (DeleteRecords), so a purge takes
every dead letter, or those dead-lettered before --until (up to the first one that is
not), or those up to --to-offset; of every partition, or of --partition. It prints what
it will delete and asks you to type the topic's name, unless --yes (required when stdin
is not a terminal). Replay what you need first: purged records are gone.

examples:
  eventbus-bridge dlq purge orders.dlq -c shipping.toml --until 7d
  eventbus-bridge dlq purge orders.dlq -c shipping.toml --partition 0 --to-offset 41 --yes
"""

ASYNCAPI_EPILOG = """\
Imports the [bridge] modules (as run does, to find the @event classes) and prints the
AsyncAPI 3.0 document of the service: a channel per topic and dead-letter topic, a send
or receive operation per route direction, a message per signal with its payload schema
and the CloudEvents headers. Contacts no broker. JSON unless --format yaml or an output
file ending in .yaml/.yml (YAML needs PyYAML: pip install 'eventbus-bridge[asyncapi]').

examples:
  eventbus-bridge asyncapi -c message-service.toml
  eventbus-bridge asyncapi -c user-service.toml -o user-service.asyncapi.yaml --doc-version 1.2.0
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = interrupt_on_sigint()  # run installs its own handlers
    try:
        status: int = args.command(args)
    except (KeyboardInterrupt, Interrupted):  # Ctrl-C: no traceback, the shell's status
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except DaemonError as exc:
        return _fail(str(exc), exc.status)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    except TransportError as exc:
        return _fail(str(exc), EXIT_UNAVAILABLE)
    except BridgeError as exc:
        return _fail(str(exc), EXIT_FAILED)
    finally:
        signal.signal(signal.SIGINT, previous)
    return status


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``eventbus-bridge`` and its commands."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run and inspect the eventbus Kafka bridge.",
        epilog=MAIN_EPILOG,
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a setting, e.g. bridge.max_attempts=5 or "
        "kafka.bootstrap.servers=HOST:PORT (repeatable; beats the file and the environment)",
    )
    common.add_argument(
        "--log-level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
        type=str.upper,
        help="log level (run: default from the file, else INFO; other commands: ERROR)",
    )
    kafka = argparse.ArgumentParser(add_help=False)
    kafka.add_argument(
        "-c", "--config", metavar="FILE", help="take the [kafka] settings from this file"
    )
    kafka.add_argument(
        "-b",
        "--bootstrap-servers",
        metavar="HOSTS",
        help="the broker(s), same as --set kafka.bootstrap.servers=HOSTS",
    )
    kafka.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"how long to wait for the broker (default {DEFAULT_TIMEOUT:g})",
    )

    def command(name: str, help: str, epilog: str, parents: list[Any]) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help,
            description=help[0].upper() + help[1:] + ".",
            epilog=epilog,
            formatter_class=formatter,
            parents=parents,
        )

    run = command("run", "host a service's handlers, bridged to Kafka", RUN_EPILOG, [common])
    run.add_argument(
        "-c", "--config", required=True, metavar="FILE", help="the service's TOML file"
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve /metrics and /healthz on this port (0: any free port); "
        "same as --set bridge.metrics_port=PORT",
    )
    run.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="run N worker processes, each a member of the consumer group (use N cores); "
        "same as --set bridge.workers=N",
    )
    run.set_defaults(command=cmd_run)

    check = command(
        "check", "validate a configuration and reach its broker", CHECK_EPILOG, [common]
    )
    check.add_argument("-c", "--config", required=True, metavar="FILE", help="the TOML file")
    check.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"how long to wait for the broker (default {DEFAULT_TIMEOUT:g})",
    )
    check.set_defaults(command=cmd_check)

    tail = command("tail", "print the events arriving on a topic", TAIL_EPILOG, [common, kafka])
    tail.add_argument("topic", metavar="TOPIC")
    tail.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest record, not the end"
    )
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.add_argument("-n", "--count", type=int, metavar="N", help="exit after printing N records")
    tail.set_defaults(command=cmd_tail)

    emit = command("emit", "publish one event, as the bridge would", EMIT_EPILOG, [common, kafka])
    emit.add_argument("signal", metavar="SIGNAL", help="the signal name (the event's type)")
    emit.add_argument("fields", nargs="*", metavar="FIELD=VALUE", help="the payload")
    emit.add_argument("--topic", required=True, help="the topic to publish to")
    emit.add_argument("--key", metavar="FIELD", help="the payload field that is the record key")
    emit.add_argument(
        "--source",
        help="the CloudEvents source (default: [bridge] service, else eventbus-bridge-cli)",
    )
    emit.add_argument("--create", action="store_true", help="create the topic if it is missing")
    emit.set_defaults(command=cmd_emit)

    dlq = command("dlq", "inspect and replay dead-letter topics", DLQ_EPILOG, [])
    dlq_commands = dlq.add_subparsers(title="dlq commands", metavar="COMMAND", required=True)
    selection = argparse.ArgumentParser(add_help=False)
    selection.add_argument("--json", action="store_true", help="machine-readable output")
    group = selection.add_argument_group("filters")
    group.add_argument(
        "--type",
        dest="types",
        action="append",
        default=[],
        metavar="TYPE",
        help="event type or pattern (order.*)",
    )
    group.add_argument(
        "--reason",
        dest="reasons",
        action="append",
        default=[],
        metavar="TEXT",
        help="text in the reason, or the error name",
    )
    group.add_argument(
        "--handler",
        dest="handlers",
        action="append",
        default=[],
        metavar="NAME",
        help="failed handler: dotted name or its last parts",
    )
    group.add_argument("--since", metavar="TIME", help="dead-lettered at or after TIME")
    group.add_argument("--until", metavar="TIME", help="dead-lettered before TIME")
    group.add_argument("--partition", type=int, metavar="N", help="dead-letter partition")
    group.add_argument("--from-offset", type=int, metavar="OFFSET", help="first offset")
    group.add_argument("--to-offset", type=int, metavar="OFFSET", help="last offset")

    def dlq_command(name: str, help: str, epilog: str) -> argparse.ArgumentParser:
        return dlq_commands.add_parser(
            name,
            help=help,
            description=help[0].upper() + help[1:] + ".",
            epilog=epilog,
            formatter_class=formatter,
            parents=[common, kafka, selection],
        )

    ls = dlq_command("ls", "count the dead letters of each dead-letter topic", DLQ_EPILOG)
    ls.add_argument(
        "topics",
        nargs="*",
        metavar="TOPIC",
        help="default: the dead-letter topics of the -c file's routes, "
        "else every topic ending in .dlq",
    )
    ls.set_defaults(command=cmd_dlq_ls)
    show = dlq_command("show", "print dead letters, decoded, with their headers", DLQ_EPILOG)
    show.add_argument("topic", metavar="TOPIC")
    show.add_argument("-n", "--count", type=int, metavar="N", help="print at most N")
    show.set_defaults(command=cmd_dlq_show)
    replay = dlq_command("replay", "send dead letters again", DLQ_REPLAY_EPILOG)
    replay.add_argument("topic", metavar="TOPIC")
    replay.add_argument(
        "--to",
        dest="target",
        choices=("topic", "handlers"),
        default="topic",
        help="the original topic (default), or the service's handlers here",
    )
    replay.add_argument(
        "--target-topic",
        metavar="TOPIC",
        help="with --to topic: produce here instead of the original topic",
    )
    replay.add_argument("--name", help="the replay's name (default: from the filters)")
    replay.add_argument(
        "--dry-run",
        action="store_true",
        help="count what would be replayed; send and commit nothing",
    )
    replay.add_argument(
        "--progress",
        choices=("auto", "bar", "lines", "none"),
        default="auto",
        help="on stderr: a tqdm bar, a line a second, or nothing (default auto: the bar "
        "on a terminal when tqdm is installed, else lines; none with --json)",
    )
    replay.set_defaults(command=cmd_dlq_replay)
    purge = dlq_commands.add_parser(
        "purge",
        help="delete dead letters from the start of a topic",
        description="Delete dead letters from the start of a topic.",
        epilog=DLQ_PURGE_EPILOG,
        formatter_class=formatter,
        parents=[common, kafka],
    )
    purge.add_argument("topic", metavar="TOPIC")
    purge.add_argument("--until", metavar="TIME", help="those dead-lettered before TIME")
    purge.add_argument("--partition", type=int, metavar="N", help="this partition only")
    purge.add_argument("--to-offset", type=int, metavar="OFFSET", help="up to OFFSET (included)")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    purge.add_argument("--json", action="store_true", help="machine-readable output")
    purge.set_defaults(command=cmd_dlq_purge)

    asyncapi = command(
        "asyncapi", "print the AsyncAPI 3.0 document of a service", ASYNCAPI_EPILOG, [common]
    )
    asyncapi.add_argument("-c", "--config", required=True, metavar="FILE", help="the TOML file")
    asyncapi.add_argument(
        "-o", "--output", metavar="FILE", help="write the document here instead of stdout"
    )
    asyncapi.add_argument(
        "--format",
        choices=("json", "yaml"),
        help="default: yaml for an output file ending in .yaml or .yml, else json",
    )
    asyncapi.add_argument(
        "--doc-version", default="0.0.0", metavar="VERSION", help="info.version (default 0.0.0)"
    )
    asyncapi.set_defaults(command=cmd_asyncapi)
    return parser


# -- run and check ------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    """``run``: see RUN_EPILOG."""
    from ._daemon import run

    overrides = list(args.overrides)
    if args.metrics_port is not None:
        overrides.append(f"bridge.metrics_port={args.metrics_port}")
    if args.workers is not None:
        overrides.append(f"bridge.workers={args.workers}")
    if args.log_level:
        overrides.append(f"bridge.log_level={args.log_level}")
    config = load_config(args.config, overrides=overrides)
    configure_logging(config.log_level)
    return run(config)


def cmd_check(args: argparse.Namespace) -> int:
    """``check``: see CHECK_EPILOG."""
    configure_logging(args.log_level or "ERROR")
    config = load_config(args.config, overrides=args.overrides)
    out = sys.stdout
    print(f"{config.source}: valid", file=out)
    for line in config.describe():
        if not line.startswith("route "):
            print(f"  {line}", file=out)
    preflight(config, default_bus)  # all that run checks before it connects
    if config.modules:
        print(f"  modules imported: {', '.join(config.modules)}", file=out)
    if not config.routes:
        print("no routes: local signals only (a monolith), no broker needed", file=out)
        print("ok", file=out)
        return EXIT_OK
    config = _with_timeout(config, args.timeout)
    transport = connect(config)
    try:
        topics = transport.list_topics(timeout=args.timeout)
    finally:
        transport.close()
    print(f"broker {config.bootstrap}: reachable, {len(topics)} topic(s)", file=out)
    problems: list[str] = []
    for route in config.routes:
        print(describe_route(route), file=out)
        names = [route.topic] + ([route.dead_letter_topic] if route.is_inbound else [])
        names += [t for t in dict.fromkeys(route.retry_topics) if t not in names]
        for name in names:
            if name in topics:
                state = f"exists ({topics[name]} partition(s))"
            elif config.create_topics:
                state = "missing: created at start (create_topics = true)"
            else:
                state = "MISSING, and create_topics = false: create it first (run refuses)"
                problems.append(name)
            print(f"  topic {name}: {state}", file=out)
    if problems:
        return _fail(
            f"{config.source}: topic(s) {', '.join(dict.fromkeys(problems))} missing on "
            f"{config.bootstrap}, and create_topics = false: create them first",
            EXIT_FAILED,
        )
    print("ok", file=out)
    return EXIT_OK


# -- asyncapi -----------------------------------------------------------------------------


def cmd_asyncapi(args: argparse.Namespace) -> int:
    """``asyncapi``: see ASYNCAPI_EPILOG."""
    from pathlib import Path

    from ._asyncapi import asyncapi_document, dump_asyncapi

    configure_logging(args.log_level or "ERROR")
    config = load_config(args.config, overrides=args.overrides)
    fmt = args.format
    if fmt is None:
        suffix = Path(args.output).suffix.lower() if args.output else ""
        fmt = "yaml" if suffix in (".yaml", ".yml") else "json"
    text = dump_asyncapi(asyncapi_document(config, version=args.doc_version), fmt)
    if args.output is None:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as exc:
        return _fail(f"cannot write {args.output}: {exc.strerror or exc}", EXIT_FAILED)
    print(f"wrote the AsyncAPI document of {config.service} to {args.output}", file=sys.stderr)
    return EXIT_OK


# -- tail ---------------------------------------------------------------------------------


def cmd_tail(args: argparse.Namespace) -> int:
    """``tail``: see TAIL_EPILOG."""
    from ._codec import MsgpackCodec

    configure_logging(args.log_level or "ERROR")
    config = _kafka_config(args)
    transport = connect(config)
    stop = _stop_on_signals()
    try:
        topics = transport.list_topics(timeout=args.timeout)
        if args.topic not in topics:
            return _fail(f"topic {args.topic!r} does not exist on {config.bootstrap}", EXIT_FAILED)
        # In no group: nothing committed, no group left behind on the broker.
        consumer = transport.reader(args.topic, from_beginning=args.from_beginning)
        codec = MsgpackCodec()
        printed = 0
        announced = False
        deadline = time.monotonic() + args.timeout
        try:
            while not stop.is_set() and (args.count is None or printed < args.count):
                record = consumer.poll(0.2)
                if not announced and consumer.is_ready():
                    announced = True
                    start = "the beginning" if args.from_beginning else "now"
                    print(f"tailing {args.topic} from {start} (Ctrl-C to stop)", file=sys.stderr)
                elif not announced and time.monotonic() > deadline:
                    return _fail(
                        f"no partitions of {args.topic!r} assigned within {args.timeout:g} s",
                        EXIT_UNAVAILABLE,
                    )
                if record is not None:
                    print(format_record(record, codec, as_json=args.json), flush=True)
                    printed += 1
        finally:
            consumer.close()
    finally:
        transport.close()
    return 128 + stop.signum if stop.signum else EXIT_OK


def format_record(record: Any, codec: Any, *, as_json: bool) -> str:
    """One line for a record: decoded, or marked undecodable with the reason. Never raises."""
    from ._formats import Batched, Readers

    key = record.key.decode(errors="replace") if record.key is not None else None
    where = f"{record.topic}/{record.partition}@{record.offset}"
    letter = dead_letter_headers(record)
    dead = _describe_dead_letter(letter) if letter else ""
    try:
        readers = Readers((), codec, lambda name: None)  # CloudEvents, either mode
        envelope, payload = readers.read(record)
        if payload is None:
            payload = readers.decode(record, envelope)
    except (ValueError, Batched) as exc:  # DecodeError, or a batch of events: not shown
        size = len(record.value or b"")
        if as_json:
            return json.dumps(
                {
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                    "key": key,
                    "error": str(exc),
                    "size": size,
                    **({"dead_letter": letter} if letter else {}),
                }
            )
        return f"-  {where}  UNDECODABLE ({exc})  key={key or '-'}  {size} byte(s){dead}"
    if as_json:
        return json.dumps(
            {
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "time": envelope.time,
                "type": envelope.type,
                "source": envelope.source,
                "id": envelope.id,
                "key": key,
                "payload": payload,
                **({"dead_letter": letter} if letter else {}),
            },
            default=_jsonable,
            ensure_ascii=False,
        )
    text = json.dumps(payload, default=_jsonable, ensure_ascii=False)
    return (
        f"{envelope.time or '-'}  {where}  {envelope.type}  source={envelope.source}  "
        f"key={key or '-'}  {text}{dead}"
    )


def dead_letter_headers(record: Any) -> dict[str, str]:
    """The ``eventbus-dlq-*`` headers of a dead letter (reason, error, handler, topic,
    partition, offset, attempts, service), by name without the prefix; {} for others."""
    from ._envelope import DLQ_PREFIX

    found: dict[str, str] = {}
    for name, value in record.headers or ():
        if name.startswith(DLQ_PREFIX) and value is not None:
            found[name[len(DLQ_PREFIX) :]] = value.decode(errors="replace")
    return found


def _describe_dead_letter(letter: dict[str, str]) -> str:
    origin = (
        f"{letter.get('topic', '?')}/{letter.get('partition', '?')}@{letter.get('offset', '?')}"
    )
    parts = [f"reason={letter.get('reason', '?')!r}", f"error={letter.get('error', '?')}"]
    if "handler" in letter:
        parts.append(f"handler={letter['handler']}")
    parts += [f"from={origin}", f"attempts={letter.get('attempts', '?')}"]
    if "service" in letter:
        parts.append(f"service={letter['service']}")
    return "\n    DEAD LETTER  " + "  ".join(parts)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, UUID | Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# -- emit ---------------------------------------------------------------------------------


def cmd_emit(args: argparse.Namespace) -> int:
    """``emit``: see EMIT_EPILOG. One code path with the bridge: a Bridge with one route."""
    from eventbus import EmitError, EventBus

    from ._bridge import Bridge
    from ._routes import Route

    configure_logging(args.log_level or "ERROR")
    payload = parse_fields(args.fields)
    if args.key is not None and args.key not in payload:
        raise ConfigError(f"--key {args.key}: the payload has no field {args.key!r}")
    config = _kafka_config(args)
    route = Route.outbound(args.signal, topic=args.topic, key=args.key)
    transport = connect(config)
    try:
        if not args.create and args.topic not in transport.list_topics(timeout=args.timeout):
            return _fail(
                f"topic {args.topic!r} does not exist on {config.bootstrap} (--create creates it)",
                EXIT_FAILED,
            )
        bus = EventBus()
        failures: list[BaseException] = []
        bridge = Bridge(
            bus,
            transport=transport,
            service=args.source or config.service,
            routes=[route],
            create_topics=args.create,
            ready_timeout=args.timeout,
            drain_timeout=args.timeout,
            on_delivery_failure=failures.append,
        )
        with bridge:
            try:
                bus.emit(args.signal, **payload)
            except EmitError as exc:
                failures.extend(f.exception for f in exc.failures)
        if failures or bridge.stats.delivered != 1:
            reason = failures[0] if failures else "no delivery report from the broker"
            return _fail(f"{args.signal} not delivered to {args.topic}: {reason}", EXIT_FAILED)
    finally:
        transport.close()
    print(f"delivered {args.signal} to {args.topic}", file=sys.stderr)
    return EXIT_OK


def parse_fields(fields: Sequence[str]) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}``: JSON where it parses, else text."""
    payload: dict[str, Any] = {}
    for field in fields:
        name, sep, text = field.partition("=")
        if not sep or not name:
            raise ConfigError(f"payload field {field!r}: expected FIELD=VALUE")
        if name in payload:
            raise ConfigError(f"payload field {name!r} given twice")
        if name == "sender":
            raise ConfigError("a payload field cannot be called 'sender' (blinker's sender)")
        try:
            payload[name] = json.loads(text)
        except ValueError:
            payload[name] = text
    return payload


# -- dlq ----------------------------------------------------------------------------------


def cmd_dlq_ls(args: argparse.Namespace) -> int:
    """``dlq ls``: see DLQ_EPILOG."""
    from ._codec import MsgpackCodec
    from ._dlq import summarize

    configure_logging(args.log_level or "ERROR")
    config = _kafka_config(args)
    selection = _selection(args)
    transport = connect(config)
    try:
        existing = transport.list_topics(timeout=args.timeout)
        topics = list(args.topics)
        if not topics:
            topics = [r.dead_letter_topic for r in config.routes if r.is_inbound]
            topics = list(dict.fromkeys(topics)) or sorted(
                t for t in existing if t.endswith(".dlq")
            )
        summaries = []
        for topic in topics:
            if topic not in existing:
                if args.topics:
                    return _fail(f"topic {topic!r} does not exist", EXIT_FAILED)
                continue  # a route's dead-letter topic not created yet: nothing in it
            summaries.append(
                summarize(transport, topic, MsgpackCodec(), selection, timeout=args.timeout)
            )
    finally:
        transport.close()
    if args.json:
        print(json.dumps([s.as_json() for s in summaries], ensure_ascii=False, indent=2))
        return EXIT_OK
    if not summaries:
        print("no dead-letter topics found", file=sys.stderr)
    for summary in summaries:
        data = summary.as_json()
        span = f"  oldest {data['oldest']}  newest {data['newest']}" if summary.count else ""
        print(f"{summary.topic}: {summary.count} dead letter(s){span}")
        for label in ("types", "reasons", "handlers", "services"):
            if data[label]:
                items = ", ".join(f"{k} {v}" for k, v in data[label].items())
                print(f"  {label + ':':<10} {items}")
    return EXIT_OK


def cmd_dlq_show(args: argparse.Namespace) -> int:
    """``dlq show``: see DLQ_EPILOG."""
    from ._codec import MsgpackCodec
    from ._dlq import read_topic

    configure_logging(args.log_level or "ERROR")
    config = _kafka_config(args)
    selection = _selection(args)
    transport = connect(config)
    shown = 0
    try:
        for info in read_topic(transport, args.topic, MsgpackCodec(), timeout=args.timeout):
            if args.count is not None and shown >= args.count:
                break
            if not selection.matches(info):
                continue
            shown += 1
            data = info.as_json()
            if args.json:
                print(json.dumps(data, default=_jsonable, ensure_ascii=False), flush=True)
                continue
            print(
                f"== {info.record.topic}/{info.record.partition}@{info.record.offset}"
                f"  dead-lettered {data['dead_lettered_at']}"
            )
            for name in (
                "type",
                "id",
                "source",
                "time",
                "key",
                "service",
                "reason",
                "error",
                "attempts",
            ):
                print(f"  {name + ':':<10} {data[name]}")
            print(f"  {'from:':<10} {info.topic}/{info.partition}@{info.offset}")
            print(f"  {'handlers:':<10} {', '.join(info.handlers) or '-'}")
            if info.problem:
                print(f"  {'problem:':<10} {info.problem}")
            else:
                text = json.dumps(info.payload, default=_jsonable, ensure_ascii=False)
                print(f"  {'payload:':<10} {text}")
            print("  headers:")
            for name, value in data["headers"]:
                if name != "eventbus-dlq-traceback":
                    print(f"    {name}: {value}")
            if info.traceback:
                print("  traceback:")
                for line in info.traceback.splitlines():
                    print(f"    {line}")
            print(flush=True)
    finally:
        transport.close()
    if not args.json:
        print(f"{shown} dead letter(s) shown", file=sys.stderr)
    return EXIT_OK


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    """``dlq replay``: see DLQ_REPLAY_EPILOG."""
    from eventbus import default_bus

    from ._dlq import Replay

    configure_logging(args.log_level or "WARNING")
    config = _kafka_config(args)
    selection = _selection(args)
    if args.target == "handlers":
        if not args.config:
            raise ConfigError("--to handlers needs -c FILE: the service whose handlers run")
        load_config(args.config, overrides=args.overrides)  # [bridge] service is required
        import_modules(config.modules)
    elif args.target_topic is not None:
        from ._routes import check_topic

        check_topic(args.target_topic)
    mode = "none" if args.json and args.progress == "auto" else args.progress
    progress = ReplayDisplay(mode, sys.stderr)
    transport = connect(config)
    stop = _stop_on_signals()
    try:
        replay = Replay(
            transport,
            args.topic,
            target=args.target,
            selection=selection,
            to_topic=args.target_topic,
            bus=default_bus,
            service=config.service,
            name=args.name or _replay_name(args),
            dry_run=args.dry_run,
            timeout=args.timeout,
            stop=stop,
            progress=progress,
        )
        if not args.json:
            print(f"replay {replay.name}: consumer group {replay.group}", file=sys.stderr)
        state = replay.run()
    finally:
        progress.close()
        transport.close()
    if args.json:
        from dataclasses import asdict

        print(json.dumps(asdict(state)))
    if not state.finished:
        return _fail("interrupted: run the same command again to resume", EXIT_FAILED)
    return EXIT_OK


def cmd_dlq_purge(args: argparse.Namespace) -> int:
    """``dlq purge``: see DLQ_PURGE_EPILOG."""
    from ._codec import MsgpackCodec
    from ._dlq import plan_purge, purge

    configure_logging(args.log_level or "ERROR")
    config = _kafka_config(args)
    until = parse_time(args.until, "--until")
    transport = connect(config)
    try:
        plan = plan_purge(
            transport,
            args.topic,
            MsgpackCodec(),
            until=until,
            partition=args.partition,
            to_offset=args.to_offset,
            timeout=args.timeout,
        )
        spans = ", ".join(f"[{p}] {f}-{b - 1}" for p, (f, b) in sorted(plan.partitions.items()))
        if not plan.count:
            print(f"{args.topic}: nothing to purge", file=sys.stderr)
        else:
            print(f"{args.topic}: {plan.count} dead letter(s) to delete: {spans}", file=sys.stderr)
            if not args.yes:
                if not sys.stdin.isatty():
                    raise ConfigError("purge deletes records: confirm with --yes")
                answer = input(f"type {args.topic} to delete them: ")
                if answer.strip() != args.topic:
                    return _fail("not confirmed: nothing deleted", EXIT_FAILED)
            purge(transport, plan, args.timeout)
            print(f"{args.topic}: {plan.count} dead letter(s) deleted", file=sys.stderr)
    finally:
        transport.close()
    if args.json:
        print(json.dumps(plan.as_json()))
    return EXIT_OK


class ReplayDisplay:
    """Shows a replay's progress (call it with each ``ReplayProgress``) on ``stream``.

    ``mode``: ``"bar"`` a tqdm bar (ConfigError when tqdm is missing), ``"lines"`` a line
    at most every second and at the end, ``"none"`` nothing; ``"auto"`` the bar when
    tqdm is installed and ``stream`` is a terminal, else lines. ``close()`` replaces the
    bar with a line of the last counts.
    """

    def __init__(self, mode: str, stream: TextIO) -> None:
        self.stream = stream
        self._tqdm: Any = None
        self._bar: Any = None
        self._last = 0.0
        self._state: ReplayProgress | None = None
        if mode in ("auto", "bar"):
            if mode == "bar" or stream.isatty():
                try:
                    from tqdm import tqdm
                except ImportError:
                    if mode == "bar":
                        raise ConfigError(f"--progress bar needs tqdm: {PROGRESS_HINT}") from None
                else:
                    self._tqdm = tqdm
            mode = "bar" if self._tqdm is not None else "lines"
        self.mode = mode

    def __call__(self, state: ReplayProgress) -> None:
        if self.mode == "lines":
            now = time.monotonic()
            if now - self._last >= 1.0 or state.finished:
                self._last = now
                print(_progress_line(state), file=self.stream, flush=True)
        elif self.mode == "bar":
            self._state = state
            bar = self._bar
            if bar is None:
                bar = self._bar = self._tqdm(
                    total=state.pending or None,
                    desc=f"replay {state.name}",
                    unit=" records",
                    file=self.stream,
                    dynamic_ncols=True,
                    leave=False,  # replaced by the last line at close()
                )
            bar.update(state.read - bar.n)
            bar.set_postfix_str(_counts(state))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            if self._state is not None:
                print(_progress_line(self._state), file=self.stream, flush=True)


def _progress_line(state: ReplayProgress) -> str:
    done = f"{state.read}/{state.pending} read" if state.pending else "0 to read"
    return f"replay {state.name}: {done}, {_counts(state)}"


def _counts(state: ReplayProgress) -> str:
    return (
        f"{state.matched} selected, {state.replayed} "
        f"{'to replay' if state.dry_run else 'replayed'}, {state.failed} failed again, "
        f"{state.skipped} skipped"
    )


def _replay_name(args: argparse.Namespace) -> str:
    """A replay's default name: a digest of the command's target and filters as typed,
    so that the same command (``--since 2h`` included) resumes the same replay."""
    import hashlib

    typed = [
        args.target,
        args.target_topic,
        args.types,
        args.reasons,
        args.handlers,
        args.since,
        args.until,
        args.partition,
        args.from_offset,
        args.to_offset,
    ]
    digest = hashlib.sha256(json.dumps(typed).encode()).hexdigest()[:10]
    return f"{args.target}-{digest}"


def _selection(args: argparse.Namespace) -> Any:
    from ._dlq import Selection

    return Selection(
        types=tuple(args.types),
        reasons=tuple(args.reasons),
        handlers=tuple(args.handlers),
        since=parse_time(args.since, "--since"),
        until=parse_time(args.until, "--until"),
        partition=args.partition,
        from_offset=args.from_offset,
        to_offset=args.to_offset,
    )


def parse_time(text: str | None, option: str, now: float | None = None) -> float | None:
    """Seconds since the epoch from an ISO 8601 time (UTC unless it says otherwise) or
    a duration ago (``30m``, ``2h``, ``7d``); ConfigError naming ``option`` if neither."""
    from datetime import UTC

    from ._config import parse_duration

    if text is None:
        return None
    try:
        return (time.time() if now is None else now) - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{option} {text!r}: expected an ISO time (2026-01-31T08:00) or a duration ago "
            "(30m, 2h, 7d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# -- helpers ------------------------------------------------------------------------------


def _kafka_config(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    if args.bootstrap_servers:
        overrides.insert(0, f"kafka.bootstrap.servers={args.bootstrap_servers}")
    config = load_config(args.config, overrides=overrides, require_service=False)
    return _with_timeout(config, args.timeout)


def _with_timeout(config: Config, timeout: float) -> Config:
    from dataclasses import replace

    return replace(config, ready_timeout=timeout)


class _Stop(threading.Event):
    """Set by SIGTERM or SIGINT; ``signum`` says which came first."""

    signum = 0


def _stop_on_signals() -> _Stop:
    """An event set by SIGTERM or SIGINT (this is the CLI: it may install handlers)."""
    stop = _Stop()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.signum = stop.signum or signum
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    return stop


def _fail(message: str, status: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return status


def _version() -> str:
    try:
        return metadata.version("eventbus-bridge")
    except metadata.PackageNotFoundError:
        return "unknown"


__all__ = [
    "build_parser",
    "dead_letter_headers",
    "format_record",
    "main",
    "parse_fields",
    "parse_time",
]
