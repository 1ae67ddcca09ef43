"""The package surface: exported names, import isolation, typing marker, pytest plugin."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import eventbus


def test_all_matches_public_members() -> None:
    public = {n for n in dir(eventbus) if n.isidentifier() and not n.startswith("_")}
    modules = {"testing"}  # submodules are imported by attribute access, not exported
    assert set(eventbus.__all__) == public - modules
    assert eventbus.__all__ == sorted(eventbus.__all__)


def test_import_eventbus_loads_neither_kafka_nor_msgpack() -> None:
    code = (
        "import sys, eventbus; "
        "mods = ('confluent_kafka', 'msgpack', 'bridge', 'pytest'); "
        "bad = [m for m in mods if m in sys.modules]; "
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, f"import eventbus loaded: {done.stdout.strip()}"


def test_py_typed_markers_present() -> None:
    for package in ("eventbus", "bridge"):
        assert (Path(__file__).parent.parent / package / "py.typed").is_file()


def test_pytest_plugin_fixtures(bus: eventbus.EventBus, bus_events: list[eventbus.Event]) -> None:
    assert isinstance(bus, eventbus.EventBus) and bus is not eventbus.default_bus
    eventbus.default_bus.emit("plugin.check", n=1)
    bus.emit("plugin.other")  # another bus: not recorded
    assert [(e.name, dict(e.payload)) for e in bus_events] == [("plugin.check", {"n": 1})]


def test_bridge_all_matches_public_members() -> None:
    import bridge

    public = {n for n in dir(bridge) if n.isidentifier() and not n.startswith("_")}
    modules = {"cli"}  # the console script's module, imported by attribute access
    assert set(bridge.__all__) == public - modules
    assert bridge.__all__ == sorted(bridge.__all__)


def test_import_bridge_loads_no_sqlalchemy() -> None:
    code = "import sys, bridge; sys.exit(1 if 'sqlalchemy' in sys.modules else 0)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, "import bridge loaded sqlalchemy (the [sql] extra is optional)"
