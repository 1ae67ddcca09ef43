"""The CLI, daemon and metrics without a broker: parsing, formatting, errors, signals."""

from __future__ import annotations

import dataclasses
import io
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bridge import Bridge, ConfigError, MemoryTransport, MsgpackCodec, Record, Route
from bridge._config import load_config
from bridge._daemon import EXIT_CONFIG, EXIT_OK, DaemonError, hosted, import_modules, run
from bridge._dlq import ReplayProgress
from bridge._envelope import HeaderBuilder
from bridge._metrics import INSTALL_HINT, require_prometheus, serve_metrics
from bridge.cli import ReplayDisplay, build_parser, format_record, main, parse_fields
from eventbus import EventBus

from .helpers import cli, wait_for


def test_parse_fields_takes_json_where_it_parses() -> None:
    assert parse_fields(["a=1", "b=x", "c=true", "d=[1,2]", 'e="7"', "f=", "g=a=b"]) == {
        "a": 1,
        "b": "x",
        "c": True,
        "d": [1, 2],
        "e": "7",
        "f": "",
        "g": "a=b",
    }
    for bad, message in [
        (["novalue"], "expected FIELD=VALUE"),
        (["=1"], "expected FIELD=VALUE"),
        (["a=1", "a=2"], "given twice"),
        (["sender=x"], "cannot be called 'sender'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_fields(bad)


def _record(value: bytes | None, headers: list[tuple[str, bytes]], key: bytes | None) -> Record:
    return Record("users", 0, 7, key, value, tuple(headers), None)


def test_format_record_decodes_or_says_why_not() -> None:
    codec = MsgpackCodec()
    headers = HeaderBuilder("user-service", "origin").build("user.registered")
    good = _record(codec.encode({"user_id": 42, "email": "a@example.com"}), headers, b"42")
    line = format_record(good, codec, as_json=False)
    assert "users/0@7  user.registered  source=user-service  key=42" in line
    assert line.endswith('{"user_id": 42, "email": "a@example.com"}')
    assert '"type": "user.registered"' in format_record(good, codec, as_json=True)

    for bad in (
        _record(b"\xc1garbage", headers, None),  # not msgpack
        _record(b"\x80", [], None),  # no CloudEvents headers
        _record(None, headers, None),
    ):
        assert "UNDECODABLE" in format_record(bad, codec, as_json=False)
        assert '"error": ' in format_record(bad, codec, as_json=True)


def test_every_command_has_help_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ([], ["run"], ["check"], ["tail"], ["emit"]):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([*command, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert "examples:" in out and "eventbus-bridge" in out


def test_bad_command_lines_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run"])  # -c is required
    assert exit_info.value.code == 2
    assert "-c/--config" in capsys.readouterr().err


def test_check_and_run_reject_a_bad_file_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "svc.toml"
    path.write_text("[bridge]\nservice = 'svc'\nmax_atempts = 2\n")
    for command in ("check", "run"):
        done = cli(command, "-c", str(path))
        assert done.process.returncode == 2
        assert done.lines == [
            f"eventbus-bridge: error: {path}: [bridge] max_atempts: unknown [bridge] key "
            "'max_atempts' (did you mean 'max_attempts'?)"
        ]
    path.write_text("[bridge\n")
    done = cli("check", "-c", str(path))
    assert done.process.returncode == 2 and "not valid TOML" in done.output


def test_check_fails_clearly_on_an_unreachable_broker(tmp_path: Path) -> None:
    path = tmp_path / "svc.toml"
    path.write_text(
        "[bridge]\nservice='svc'\n[kafka]\n'bootstrap.servers'='127.0.0.1:1'\n"
        "'sasl.password'='hunter2'\n"
        "[[route]]\nsignals='a.b'\ntopic='t'\ndirection='out'\n"
    )
    done = cli("check", "-c", str(path), "--timeout", "1.5")
    assert done.process.returncode == 3
    assert "eventbus-bridge: error: cannot reach the Kafka broker at 127.0.0.1:1 within 1.5 s" in (
        done.output
    )
    assert "hunter2" not in done.output and "sasl.password = ********" in done.output


def test_run_fails_clearly_on_an_unreachable_broker(tmp_path: Path) -> None:
    path = tmp_path / "svc.toml"
    path.write_text(
        "[bridge]\nservice='svc'\nready_timeout=1\n[kafka]\n'bootstrap.servers'='127.0.0.1:1'\n"
        "[[route]]\nsignals='a.b'\ntopic='t'\ndirection='in'\nrequire_handlers=false\n"
    )
    done = cli("run", "-c", str(path))
    assert done.process.returncode == 3
    assert "cannot reach the Kafka broker at 127.0.0.1:1 within 1 s" in done.output


def test_a_module_that_fails_to_import_is_named(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import os\nraise RuntimeError('no database')\n")
    path = tmp_path / "svc.toml"
    path.write_text("[bridge]\nservice='svc'\nmodules=['broken']\n")
    done = cli("run", "-c", str(path), cwd=tmp_path)
    assert done.process.returncode == 2
    assert (
        "cannot import handler module 'broken': RuntimeError: no database (at "
        f"{tmp_path / 'broken.py'}:2)" in done.output
    )
    with pytest.raises(ConfigError, match=r"'no_such_module': ModuleNotFoundError: No module"):
        import_modules(["no_such_module"])


def test_hosted_without_routes_is_a_monolith(tmp_path: Path) -> None:
    config = load_config(None, env={"EVENTBUS_BRIDGE_SERVICE": "shop"})
    with hosted(config, EventBus()) as bridge:
        assert bridge is None
    bad = load_config(None, env={"EVENTBUS_BRIDGE_SERVICE": "s", "EVENTBUS_BRIDGE_MODULES": "nope"})
    with pytest.raises(DaemonError) as info, hosted(bad, EventBus()):
        pass
    assert info.value.status == EXIT_CONFIG


def test_run_drains_and_exits_0_on_sigterm() -> None:
    """The daemon loop in this process, over a MemoryTransport: SIGTERM stops it cleanly."""
    transport = MemoryTransport()
    bus = EventBus()
    handled: list[int] = []
    bus.on("test.ping")(lambda _sender, n: handled.append(n))
    config = load_config(
        None,
        env={"EVENTBUS_BRIDGE_SERVICE": "pinged"},
        overrides=["bridge.ready_timeout=5"],
    )
    config = dataclasses.replace(config, routes=(Route.inbound("test.ping", topic="pings"),))
    done = threading.Event()

    def ping_then_terminate() -> None:
        sender_bus = EventBus()
        sender = Bridge(
            sender_bus,
            transport=transport,
            service="pinger",
            routes=[Route.outbound("test.ping", topic="pings")],
        )
        with sender:
            n = 0
            # The daemon's consumer starts at the end of the topic: ping until one lands.
            while not handled and not done.is_set():
                n += 1
                sender_bus.emit("test.ping", n=n)
                done.wait(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=ping_then_terminate, daemon=True)
    thread.start()
    try:
        assert run(config, transport=transport, bus=bus) == EXIT_OK
    finally:
        done.set()
        thread.join(10)
    assert handled
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(
        signal.getsignal(signal.SIGTERM)
    )


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_and_health_read_the_bridge_at_scrape_time() -> None:
    transport = MemoryTransport()
    bus = EventBus()
    bridge = Bridge(
        bus, transport=transport, service="svc", routes=[Route.outbound("a.*", topic="a")]
    )
    server = serve_metrics(bridge, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert _get(base + "/healthz") == (503, "unhealthy\n")  # not started yet
        with bridge:
            bus.emit("a.b", x=1)
            bus.emit("a.b", x=2)
            wait_for(lambda: bridge.stats.delivered == 2, 30, "deliveries")
            assert _get(base + "/healthz") == (200, "ok\n")
            status, text = _get(base + "/metrics")
            assert status == 200
            assert 'eventbus_bridge_events_out_total{service="svc"} 2.0' in text
            assert 'eventbus_bridge_events_in_total{service="svc"} 0.0' in text
            assert 'eventbus_bridge_healthy{service="svc"} 1.0' in text
            for name in ("retries", "dead_lettered", "events_out_failed", "duplicates"):
                assert f"eventbus_bridge_{name}_total" in text
            assert "eventbus_bridge_in_flight" in text
        assert _get(base + "/healthz")[0] == 503  # stopped
        assert _get(base + "/nope")[0] == 404
    finally:
        server.close()
        server.close()


def test_every_log_level_of_the_file_is_accepted_on_the_command_line() -> None:
    parser = build_parser()
    for level in ("debug", "INFO", "warning", "ERROR", "critical"):
        assert parser.parse_args(["check", "-c", "x", "--log-level", level]).log_level == (
            level.upper()
        )


def test_a_missing_prometheus_client_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigError, match=r"pip install prometheus-client"):
        require_prometheus()
    assert "pip install prometheus-client" in INSTALL_HINT and "'.[metrics]'" in INSTALL_HINT
    path = tmp_path / "svc.toml"
    path.write_text("[bridge]\nservice='svc'\n[kafka]\n'bootstrap.servers'='127.0.0.1:1'\n")
    # A child process, so that the missing module is really missing.
    code = (
        "import sys; sys.modules['prometheus_client'] = None; "
        "from bridge.cli import main; "
        f"sys.exit(main(['run', '-c', {str(path)!r}, '--metrics-port', '0']))"
    )
    import subprocess

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_CONFIG
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and INSTALL_HINT in errors[0]


OWN_BUS_MODULE = '''
"""Handlers on a bus of their own, as the quickstart's first steps write them."""
from eventbus import EventBus

bus = EventBus()

@bus.on("user.registered")
def welcome(sender, **payload):
    raise AssertionError("never reached through the daemon")
'''


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_route_whose_handlers_are_on_another_bus_is_refused(tmp_path: Path, command: str) -> None:
    (tmp_path / "own_bus.py").write_text(OWN_BUS_MODULE)
    path = tmp_path / "svc.toml"
    path.write_text(
        "[bridge]\nservice='svc'\nmodules=['own_bus']\n"
        "[kafka]\n'bootstrap.servers'='127.0.0.1:1'\n"  # refused before any connection
        "[[route]]\nsignals=['user.registered', 'user.deleted']\ntopic='users'\ndirection='in'\n"
    )
    done = cli(command, "-c", str(path), cwd=tmp_path)
    assert done.process.returncode == EXIT_CONFIG, done.output
    assert (
        "route in   user.registered, user.deleted <- users (dead letters to users.dlq): "
        "no handler for user.registered, user.deleted on eventbus.default_bus after importing "
        "the [bridge] modules (own_bus)" in done.output
    )
    assert "cannot reach" not in done.output


def test_metrics_count_dead_letters_and_delayed_retries() -> None:
    transport = MemoryTransport()
    bus = EventBus()
    calls: list[int] = []

    @bus.on("a.*")
    def fails_once(sender: object, n: int) -> None:
        calls.append(n)
        if n == 1 and calls.count(1) == 1:
            raise ConnectionError("once")
        if n == 2:
            raise ValueError("always")

    routes = [Route.inbound("a.*", topic="a", retry_delays=[0.01])]
    bridge = Bridge(bus, transport=transport, service="svc", routes=routes, max_attempts=1)
    server = serve_metrics(bridge, "127.0.0.1", 0)
    try:
        with bridge:
            sender = EventBus()
            with Bridge(
                sender,
                transport=transport,
                service="src",
                routes=[Route.outbound("a.*", topic="a")],
            ):
                for n in (1, 2, 3):
                    sender.emit("a.b", n=n)
            wait_for(lambda: bridge.stats.dead_lettered == 1, 30, "the dead letter")
            status, text = _get(f"http://127.0.0.1:{server.port}/metrics")
        assert status == 200
        assert 'eventbus_bridge_dead_letter_records{service="svc",topic="a.dlq"} 1.0' in text
        assert 'eventbus_bridge_retries_scheduled_total{route="a",service="svc"} 2.0' in text
        assert 'eventbus_bridge_retries_due_total{route="a",service="svc"} 2.0' in text
        assert 'eventbus_bridge_retries_handled_total{route="a",service="svc"} 1.0' in text
    finally:
        server.close()


def test_the_same_replay_command_has_the_same_name_whatever_the_time() -> None:
    from bridge.cli import _replay_name, build_parser

    parser = build_parser()
    first = parser.parse_args(["dlq", "replay", "t.dlq", "--since", "2h", "--type", "a.*"])
    again = parser.parse_args(["dlq", "replay", "t.dlq", "--since", "2h", "--type", "a.*"])
    other = parser.parse_args(["dlq", "replay", "t.dlq", "--since", "3h", "--type", "a.*"])
    assert _replay_name(first) == _replay_name(again) != _replay_name(other)
    assert _replay_name(first).startswith("topic-")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _show_replay(display: ReplayDisplay) -> None:
    """A replay of 250 records as ``Replay.run`` reports it: at the start, every 100, done."""
    state = ReplayProgress("fix-1", "group", pending=250)
    display(state)
    for read in (100, 200, 250):
        state.read = state.matched = state.replayed = read
        state.finished = read == 250
        display(state)
    display.close()


def test_a_replay_shows_a_tqdm_bar_on_a_terminal_else_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    final = "replay fix-1: 250/250 read, 250 selected, 250 replayed, 0 failed again, 0 skipped"
    shown: dict[tuple[str, bool], tuple[str, str]] = {}
    for mode in ("auto", "bar", "lines", "none"):
        for terminal in (False, True):
            stream = _Terminal() if terminal else io.StringIO()
            display = ReplayDisplay(mode, stream)
            _show_replay(display)
            shown[mode, terminal] = display.mode, stream.getvalue()
    for key in [("auto", True), ("bar", False), ("bar", True)]:
        mode, text = shown[key]
        assert mode == "bar", key
        assert "| 100/250 [" in text and "| 250/250 [" in text  # tqdm's bar, as it moved
        assert "40%|" in text and text.endswith(final + "\n")
    for key in [("auto", False), ("lines", False), ("lines", True)]:
        mode, text = shown[key]
        assert mode == "lines", key
        lines = text.splitlines()  # at most one a second: those between may be left out
        assert lines[0] == (
            "replay fix-1: 0/250 read, 0 selected, 0 replayed, 0 failed again, 0 skipped"
        )
        assert lines[-1] == final and all(line.startswith("replay fix-1: ") for line in lines)
        assert "%|" not in text
    assert shown["none", False] == shown["none", True] == ("none", "")
    # without tqdm: lines on a terminal, and --progress bar says what to install
    monkeypatch.setitem(sys.modules, "tqdm", None)
    stream = _Terminal()
    display = ReplayDisplay("auto", stream)
    _show_replay(display)
    assert display.mode == "lines" and stream.getvalue().splitlines()[-1] == final
    with pytest.raises(
        ConfigError, match=r"--progress bar needs tqdm: pip install tqdm \(the \[cli\] extra"
    ):
        ReplayDisplay("bar", stream)
