"""What docs/operations.md tells an operator to run, run: the Kubernetes manifest's probes
reach the daemon's real endpoints, the mutual-TLS settings build into librdkafka with real
certificate files (and a missing file is refused)."""

from __future__ import annotations

import http.client
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge import ConfigError, KafkaTransport
from bridge._config import parse_config
from bridge._daemon import preflight
from bridge._metrics import serve_metrics
from eventbus import EventBus

ROOT = Path(__file__).parents[2]
OPERATIONS = (ROOT / "docs" / "operations.md").read_text()


def section(title: str) -> str:
    start = OPERATIONS.index(f"\n## {title}\n")
    end = OPERATIONS.find("\n## ", start + 1)
    return OPERATIONS[start : end if end >= 0 else None]


def block(text: str, language: str) -> str:
    [found] = re.findall(rf"```{language}\n(.*?)```", text, re.S)
    return str(found)


def test_the_kubernetes_probes_reach_the_daemons_health_endpoint() -> None:
    manifest = yaml.safe_load(block(section("In Kubernetes"), "yaml"))
    assert manifest["kind"] == "StatefulSet"
    pod = manifest["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"][:3] == ["eventbus-bridge", "run", "-c"]
    config_path = container["args"][3]
    [mount] = container["volumeMounts"]
    assert config_path.startswith(mount["mountPath"] + "/")
    assert {v["name"] for v in pod["volumes"]} == {mount["name"]}
    # the environment is what the daemon reads: a metrics port on every interface, and
    # the pod name as the static member id
    env = {e["name"]: e.get("value", "pod-0") for e in container["env"]}
    config = parse_config({"bridge": {"service": "message-service"}}, env=env)
    assert config.metrics_host == "0.0.0.0"
    assert config.kafka["group.instance.id"] == "pod-0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    assert ports[readiness["httpGet"]["port"]] == config.metrics_port
    assert ports[liveness["tcpSocket"]["port"]] == config.metrics_port
    assert pod["terminationGracePeriodSeconds"] > config.drain_timeout
    # the readiness path is the daemon's health check: 503 before the bridge is up
    server = serve_metrics(None, "127.0.0.1", 0)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("GET", readiness["httpGet"]["path"])
        assert connection.getresponse().status == 503
    finally:
        server.close()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def certificates(tmp_path: Path) -> Path:
    """A CA, and a client certificate and key it signed (what mTLS needs on disk)."""
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem", cwd=tmp_path,
    )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=message-service",
        "-keyout", "client.key", "-out", "client.csr", cwd=tmp_path,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "1", "-out", "client.pem", cwd=tmp_path,
    )  # fmt: skip
    return tmp_path


def tls_config(folder: Path) -> dict[str, Any]:
    text = block(section("TLS and mutual TLS"), "toml")
    text = text.replace("/etc/message-service/tls", str(folder))
    import tomllib

    data = tomllib.loads(text)
    data["bridge"] = {"service": "message-service", "modules": []}
    data["route"] = [{"signals": "user.*", "topic": "users", "direction": "out"}]
    return data


def test_the_mutual_tls_settings_build_into_librdkafka(certificates: Path) -> None:
    config = parse_config(tls_config(certificates))
    assert config.kafka["security.protocol"] == "SSL"
    preflight(config, EventBus())  # what check and run do before connecting
    KafkaTransport(dict(config.kafka)).validate()


def test_a_missing_certificate_file_is_refused_before_connecting(certificates: Path) -> None:
    (certificates / "client.pem").unlink()
    config = parse_config(tls_config(certificates))
    with pytest.raises(ConfigError, match=r"client\.pem|ssl\.certificate\.location"):
        preflight(config, EventBus())
