"""The AsyncAPI document: JSON Schemas of typed events, and documents the official parser accepts.

The parser is npm's ``@asyncapi/parser`` (scripts/asyncapi, installed by ``make test``
with the machine's Node). Without it these tests skip, and fail under ``make test``
(REQUIRE_ASYNCAPI_PARSER=1), like the broker tests.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from bridge import ConfigError, asyncapi_document, dump_asyncapi
from bridge._asyncapi import event_schema, type_schema, typed_events
from bridge._config import load_config, parse_config
from bridge.cli import main
from eventbus import EventBus, event

from . import asyncapi_events as ev

ROOT = Path(__file__).resolve().parents[2]
PARSER_DIR = ROOT / "scripts" / "asyncapi"
EVENTS_MODULE = "tests.bridge.asyncapi_events"

CONFIG = {
    "bridge": {"service": "shop", "modules": [EVENTS_MODULE], "group": "shop-workers"},
    "kafka": {"bootstrap.servers": "k1:9092,k2:9092"},
    "route": [
        {"signals": "shop.order.*", "topic": "orders", "direction": "out", "key": "order_id"},
        {"signals": ["shop.user.registered"], "topic": "users", "direction": "both"},
        {
            "signals": "billing.**",
            "topic": "billing",
            "direction": "in",
            "dlq": "billing-dead",
            "retry_delays": [10, 60],
        },
        {"signals": "audit.entry", "topic": "audit", "direction": "in"},
    ],
}


# -- JSON Schemas of field types ----------------------------------------------------------


def test_every_supported_field_type_has_its_json_schema() -> None:
    props = event_schema(ev.OrderPlaced)["properties"]
    assert props["order_id"] == {"type": "integer"}
    assert props["ratio"] == {"type": "number"}
    assert props["customer"] == {"type": "string"}
    assert props["paid"] == {"type": "boolean"}
    assert props["blob"]["type"] == "string" and props["blob"]["x-msgpack"] == "bin"
    assert props["placed_at"]["format"] == "date-time"
    assert props["day"]["format"] == "date"
    assert props["ref"]["format"] == "uuid"
    assert props["total"]["type"] == "string" and "pattern" in props["total"]
    assert props["anything"] == {}
    assert props["nothing"] == {"type": "null"}
    assert props["maybe"] == {"anyOf": [{"type": "integer"}, {"type": "null"}]}
    assert props["either"] == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert props["kind"] == {"enum": ["web", 1, True, None]}
    assert props["lines"] == {"type": "array", "items": {"type": "string"}}
    assert props["pair"] == {
        "type": "array",
        "items": [{"type": "integer"}, {"type": "string"}],
        "minItems": 2,
        "maxItems": 2,
        "additionalItems": False,
    }
    assert props["many"] == {"type": "array", "items": {"type": "integer"}}
    assert props["seq"] == {"type": "array", "items": {"type": "number"}}
    assert props["counts"] == {"type": "object", "additionalProperties": {"type": "integer"}}
    assert props["by_id"]["x-msgpack-key"] == {"type": "integer"}
    assert props["extra"] == {"type": "object"}
    assert props["color"] == {"enum": ["red", "blue"]}
    assert props["size"] == {"enum": [1, 2]}
    assert props["code"]["type"] == "string"
    assert props["bare"] == {"type": "array"}
    assert props["note"] == {"type": "string", "default": "none"}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}  # a factory: no default


def test_event_schema_requires_fields_without_default_and_forbids_others() -> None:
    schema = event_schema(ev.OrderCancelled)
    assert schema["required"] == ["order_id"]
    assert schema["additionalProperties"] is False
    assert schema["x-python-type"] == f"{EVENTS_MODULE}.OrderCancelled"
    assert event_schema(ev.OrderPlaced)["description"] == "An order was placed."
    assert "description" not in schema  # the dataclass's generated docstring is no description


def _json_form(value: Any) -> Any:
    """A payload value as a JSON document would carry it (what the schemas describe)."""
    return json.loads(json.dumps(value, default=str))


def test_the_schema_accepts_a_valid_payload_and_rejects_wrong_ones() -> None:
    schema = event_schema(ev.OrderPlaced)
    good = {
        "order_id": 7,
        "total": "19.90",
        "placed_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).isoformat(),
        "day": date(2026, 1, 2).isoformat(),
        "ref": "6f1c1e1e-2b7a-4c53-9a43-0e1a3a6a0b61",
        "blob": "aGk=",
        "paid": True,
        "ratio": 1,
        "customer": "ann",
        "anything": [1, "x"],
        "nothing": None,
        "maybe": None,
        "either": "x",
        "kind": "web",
        "lines": ["a"],
        "pair": [1, "b"],
        "many": [1, 2, 3],
        "seq": [0.5],
        "counts": {"a": 1},
        "by_id": {"1": "x"},
        "extra": {"k": [1]},
        "color": "red",
        "size": 2,
        "code": "C-1",
        "bare": [1, "x"],
    }
    # (jsonschema checks the date and uuid formats itself; date-time needs another package)
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())
    assert list(validator.iter_errors(_json_form(good))) == []
    for field, wrong in [
        ("order_id", "7"),
        ("total", "nineteen"),
        ("ref", "not-a-uuid"),
        ("day", "2026-13-45"),
        ("paid", 1),
        ("nothing", 0),
        ("either", 1.5),
        ("kind", "shop"),
        ("pair", [1, "b", 3]),
        ("many", [1, "x"]),
        ("counts", {"a": "1"}),
        ("color", "green"),
        ("size", 3),
    ]:
        errors = list(validator.iter_errors({**good, field: wrong}))
        assert errors, f"{field}={wrong!r} should not validate"
    assert list(validator.iter_errors({**good, "unknown": 1}))
    assert list(validator.iter_errors({k: v for k, v in good.items() if k != "ratio"}))


def test_a_type_without_a_schema_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="no JSON Schema"):
        type_schema(Callable[[], int])  # @event rejects it too


# -- typed events and the document --------------------------------------------------------


def test_typed_events_come_from_the_modules_and_the_bus() -> None:
    bus = EventBus()

    @event("billing.invoice.sent")
    @dataclass
    class InvoiceSent:
        invoice_id: int

    bus.register(InvoiceSent)
    found = typed_events(bus, [EVENTS_MODULE])
    assert found == {
        "billing.invoice.sent": InvoiceSent,
        "shop.order.cancelled": ev.OrderCancelled,
        "shop.order.placed": ev.OrderPlaced,
        "shop.user.registered": ev.UserRegistered,
    }


def _document(bus: EventBus | None = None) -> dict[str, Any]:
    return asyncapi_document(parse_config(CONFIG), bus or EventBus(), version="1.2.3")


def test_the_document_has_every_route_typed_event_and_dead_letter_topic() -> None:
    doc = _document()
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["version"] == "1.2.3"
    assert [s["host"] for s in doc["servers"].values()] == ["k1:9092", "k2:9092"]
    assert list(doc["channels"]) == [
        "orders",
        "users",
        "users.dlq",
        "billing",
        "billing.retry.10s",
        "billing.retry.1m",
        "billing-dead",
        "audit",
        "audit.dlq",
    ]
    orders = doc["channels"]["orders"]["messages"]
    assert list(orders) == ["shop.order.cancelled", "shop.order.placed", "shop.order.ANY"]
    assert orders["shop.order.ANY"]["name"] == "shop.order.*"
    assert orders["shop.order.placed"]["bindings"]["kafka"]["key"]["type"] == "string"
    assert orders["shop.order.placed"]["headers"]["properties"]["ce_type"]["enum"] == [
        "shop.order.placed"
    ]
    schemas = doc["components"]["schemas"]
    assert schemas["shop.order.placed"] == event_schema(ev.OrderPlaced)
    assert schemas["audit.entry"]["type"] == "object"  # untyped: an open object
    assert "properties" not in schemas["audit.entry"]
    ops = doc["operations"]
    assert {k: v["action"] for k, v in ops.items()} == {
        "send-orders": "send",
        "send-users": "send",
        "receive-users": "receive",
        "send-users.dlq": "send",
        "receive-billing": "receive",
        "send-billing.retry.10s": "send",
        "receive-billing.retry.10s": "receive",
        "send-billing.retry.1m": "send",
        "receive-billing.retry.1m": "receive",
        "send-billing-dead": "send",
        "receive-audit": "receive",
        "send-audit.dlq": "send",
    }
    assert ops["receive-users"]["bindings"]["kafka"]["groupId"]["enum"] == ["shop-workers"]
    dead = doc["channels"]["billing-dead"]["messages"]["eventbus.dead-letter"]
    assert "eventbus-dlq-reason" in dead["headers"]["properties"]
    trait = doc["components"]["messageTraits"]["cloudevents-headers-kafka-binary"]
    assert trait["headers"]["required"] == ["ce_id", "ce_source", "ce_specversion", "ce_type"]
    assert trait["headers"]["properties"]["content-type"]["enum"] == ["application/vnd.msgpack"]


def test_yaml_and_json_carry_the_same_document() -> None:
    doc = _document()
    assert yaml.safe_load(dump_asyncapi(doc, "yaml")) == doc
    assert json.loads(dump_asyncapi(doc)) == doc
    with pytest.raises(ConfigError, match="unknown AsyncAPI format"):
        dump_asyncapi(doc, "xml")


def test_cli_writes_the_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "shop.toml"
    config.write_text(
        '[bridge]\nservice = "shop"\nmodules = ["tests.bridge.asyncapi_events"]\n'
        '[[route]]\nsignals = "shop.order.*"\ntopic = "orders"\ndirection = "out"\n'
    )
    out = tmp_path / "shop.asyncapi.yaml"
    assert main(["asyncapi", "-c", str(config), "-o", str(out), "--doc-version", "2.0"]) == 0
    doc = yaml.safe_load(out.read_text())
    assert doc["info"] == {**doc["info"], "title": "shop", "version": "2.0"}
    assert "shop.order.placed" in doc["channels"]["orders"]["messages"]
    assert "servers" not in doc  # no broker configured: none described
    assert main(["asyncapi", "-c", str(config)]) == 0
    assert json.loads(capsys.readouterr().out)["channels"].keys() == {"orders"}


def test_cli_reports_a_handler_module_that_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[bridge]\nservice = "s"\nmodules = ["no_such_module_here"]\n')
    assert main(["asyncapi", "-c", str(config)]) == 2
    assert "cannot import handler module 'no_such_module_here'" in capsys.readouterr().err


# -- the official parser ------------------------------------------------------------------


def _parser_missing(what: str) -> None:
    if os.environ.get("REQUIRE_ASYNCAPI_PARSER") == "1":
        pytest.fail(f"REQUIRE_ASYNCAPI_PARSER=1 but {what}", pytrace=False)
    pytest.skip(what)


@pytest.fixture(scope="module")
def parse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Parse documents with @asyncapi/parser: ``parse({name: document}) -> {name: report}``."""
    node = shutil.which("node")
    if node is None:
        _parser_missing("no node on PATH for @asyncapi/parser")
    if not (PARSER_DIR / "node_modules" / "@asyncapi" / "parser").is_dir():
        _parser_missing(f"@asyncapi/parser is not installed: npm ci --prefix {PARSER_DIR}")
    folder = tmp_path_factory.mktemp("asyncapi")

    def run(documents: dict[str, str]) -> dict[str, dict[str, Any]]:
        files = []
        for name, text in documents.items():
            path = folder / name
            path.write_text(text)
            files.append(str(path))
        done = subprocess.run(
            [str(node), str(PARSER_DIR / "validate.mjs"), *files],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        assert len(reports) == len(files), done.stderr
        return {Path(r["file"]).name: r for r in reports}

    yield run


def _problems(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in report["diagnostics"] if d["severity"] in ("error", "warning")]


def test_the_official_parser_accepts_the_documents(parse: Any) -> None:
    doc = _document()
    demo = ROOT / "examples"
    cwd = os.getcwd()
    os.chdir(ROOT)  # the demo's handler modules import from the project root
    try:
        services = {
            name: asyncapi_document(load_config(demo / f"{name}.toml"), EventBus())
            for name in ("user-service", "message-service")
        }
    finally:
        os.chdir(cwd)
    broken = copy.deepcopy(doc)
    del broken["operations"]["send-orders"]["action"]
    broken["channels"]["orders"]["bindings"]["kafka"]["partitions"] = "many"
    reports = parse(
        {
            "shop.yaml": dump_asyncapi(doc, "yaml"),
            "shop.json": dump_asyncapi(doc),
            **{f"{name}.json": dump_asyncapi(d) for name, d in services.items()},
            "broken.json": dump_asyncapi(broken),
        }
    )
    for name in ("shop.yaml", "shop.json", "user-service.json", "message-service.json"):
        assert reports[name]["valid"], reports[name]
        assert _problems(reports[name]) == [], (name, reports[name]["diagnostics"])
    # The parser checks what it says it checks: a broken document is rejected.
    assert not reports["broken.json"]["valid"]
    assert any(d["severity"] == "error" for d in reports["broken.json"]["diagnostics"])

    # Every route and typed event, as the parser sees the document.
    shop = reports["shop.yaml"]
    assert set(shop["channels"]) == {
        "orders",
        "users",
        "users.dlq",
        "billing",
        "billing.retry.10s",
        "billing.retry.1m",
        "billing-dead",
        "audit",
        "audit.dlq",
    }
    by_id = {op["id"]: op for op in shop["operations"]}
    assert by_id["send-orders"]["messages"] == [
        "shop.order.cancelled",
        "shop.order.placed",
        "shop.order.*",
    ]
    assert by_id["receive-users"]["messages"] == ["shop.user.registered"]
    assert by_id["receive-billing"]["messages"] == ["billing.**"]
    assert by_id["send-billing-dead"]["channels"] == ["billing-dead"]
    assert by_id["receive-billing.retry.1m"]["messages"] == ["eventbus.retry"]
    assert by_id["send-billing.retry.10s"]["channels"] == ["billing.retry.10s"]
    messages = {m["name"]: m for m in shop["messages"]}
    for name in ("shop.order.placed", "shop.order.cancelled", "shop.user.registered"):
        assert messages[name]["payload"] == "object"
        # the CloudEvents trait is applied: its headers are the message's
        assert {"ce_id", "ce_source", "ce_specversion", "ce_type"} <= set(messages[name]["headers"])
    user_ops = {op["id"]: op for op in reports["user-service.json"]["operations"]}
    assert user_ops["send-users"]["messages"] == ["user.*"]
    message_ops = {op["id"]: op for op in reports["message-service.json"]["operations"]}
    assert message_ops["receive-users"]["messages"] == ["user.registered"]
