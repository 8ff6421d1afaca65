"""The chart on a real Kubernetes: install, every workload Ready, ``helm test``, a visit through the
Service, upgrade with a changed value, rollback, uninstall leaving nothing; then ``make kube-down``
leaves the host as it was.

Kafka and moto run in the cluster too (kube/deps.yaml), from the project's images; nothing is pulled.
The tests run in file order: the second takes the cluster down.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from support.containers import APP_IMAGE, KAFKA_IMAGE, MOTO_IMAGE
from support.kube import REPO, ClusterRun, HostState, Kube, cluster_sh
from support.waiting import eventually

from waitroom_ticketing.tokens import write_private_key

CHART = REPO / "charts" / "waitroom"
CI_VALUES = CHART / "ci" / "kube-values.yaml"
DEPS = REPO / "kube" / "deps.yaml"
NAMESPACE = "waitroom-e2e"
RELEASE = "wr"
FULLNAME = f"{RELEASE}-waitroom"
ADMIN_TOKEN = "kube-e2e-admin-token-not-a-secret"  # charts/waitroom/ci/kube-values.yaml
WORKLOADS = {f"{FULLNAME}-{c}" for c in ("ticketing", "reaper", "stats", "notifier")}

pytestmark = pytest.mark.timeout(900)


@contextlib.contextmanager
def timed(run: ClusterRun, step: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    run.timings[step] = time.monotonic() - started


def _ready_workloads(kube: Kube) -> dict[str, tuple[int, int]]:
    """name -> (ready replicas, wanted replicas) of every Deployment of the release."""
    deployments = kube.get("deployments", "-l", f"app.kubernetes.io/instance={RELEASE}")["items"]
    return {d["metadata"]["name"]: (d["status"].get("readyReplicas", 0), d["spec"]["replicas"]) for d in deployments}


def _release_pods(kube: Kube) -> list[dict[str, Any]]:
    pods = kube.get("pods", "-l", f"app.kubernetes.io/instance={RELEASE}")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def _assert_every_workload_ready(kube: Kube, ticketing_replicas: int) -> None:
    ready = _ready_workloads(kube)
    assert set(ready) == WORKLOADS
    wanted = {name: 1 for name in WORKLOADS} | {f"{FULLNAME}-ticketing": ticketing_replicas}
    assert ready == {name: (n, n) for name, n in wanted.items()}, ready
    for pod in _release_pods(kube):
        statuses = pod["status"].get("containerStatuses", [])
        name = pod["metadata"]["name"]
        assert statuses and all(s["ready"] for s in statuses), name
        # Probes that pass on a real kubelet: no container was ever restarted by its liveness probe.
        assert all(s["restartCount"] == 0 for s in statuses), (name, statuses)
        for container in pod["spec"]["containers"]:
            assert container["image"] == APP_IMAGE and not container["image"].endswith(":latest")
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def _env_of(kube: Kube, deployment: str) -> dict[str, str]:
    [container] = kube.get("deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def _service_url(kube: Kube, service: str) -> str:
    spec = kube.get("service", service)["spec"]
    return f"http://{spec['clusterIP']}:{spec['ports'][0]['port']}"


async def _visit_through_the_services(kube: Kube) -> dict[str, Any]:
    """From this host to the Services' cluster IPs (kube-proxy's rules route them): a room, a join, heartbeats
    until admitted, the entry token checked against the JWKS the Service serves, a leave."""
    public = _service_url(kube, f"{FULLNAME}-ticketing")
    admin = _service_url(kube, f"{FULLNAME}-ticketing-admin")
    room = f"kube-e2e-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(timeout=10) as http:
        created = await http.put(
            f"{admin}/v1/admin/rooms/{room}", json={"capacity": 1}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert created.status_code == 201, created.text
        joined = await http.post(
            f"{public}/v1/rooms/{room}/tickets", json={}, headers={"Idempotency-Key": str(uuid.uuid4())}
        )
        assert joined.status_code in (201, 202), joined.text
        ticket = joined.json()
        ticket_url = f"{public}/v1/rooms/{room}/tickets/{ticket['ticket_id']}"
        auth = {"Authorization": f"Bearer {ticket['ticket_token']}"}

        async def admitted() -> dict[str, Any] | None:
            beat = await http.post(f"{ticket_url}/heartbeat", headers=auth)
            body: dict[str, Any] = beat.json()
            return body if beat.status_code == 200 and body["state"] == "admitted" else None

        admitted_ticket = await eventually(admitted, 30, "the ticket to be admitted")
        jwks = (await http.get(f"{public}/.well-known/jwks.json")).json()
        token = admitted_ticket["entry_token"]
        kid = jwt.get_unverified_header(token)["kid"]
        [key] = [jwt.PyJWK(k) for k in jwks["keys"] if k["kid"] == kid]
        claims = jwt.decode(token, key.key, algorithms=["RS256", "ES256"], audience=room)
        assert claims["sub"] == ticket["ticket_id"]

        left = await http.delete(ticket_url, headers=auth)
        assert left.status_code == 204
        gone = await http.get(ticket_url, headers=auth)
        assert gone.status_code == 410 and gone.json()["error"] == "ticket_left"
        status = (await http.get(f"{public}/v1/rooms/{room}")).json()
        assert status["active"] == 0
    return claims


def _helm_test(kube: Kube) -> str:
    result = kube.helm("test", RELEASE, "--timeout", "3m", check=False)
    if result.returncode != 0:
        logs = kube.kubectl("logs", f"{FULLNAME}-helm-test", check=False)
        pytest.fail(
            f"helm test failed:\n{result.stdout}{result.stderr}\nthe test pod's log:\n{logs.stdout}{logs.stderr}"
        )
    return result.stdout


def _leftovers(kube: Kube) -> list[str]:
    kinds = (
        "all,configmaps,secrets,serviceaccounts,networkpolicies,poddisruptionbudgets,jobs,ingresses,roles,rolebindings"
    )
    of_release = kube.kubectl("get", kinds, "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name").stdout
    helm_records = kube.kubectl("get", "secrets", "-l", f"owner=helm,name={RELEASE}", "-o", "name").stdout
    return (of_release + helm_records).split()


async def test_the_chart_installs_passes_helm_test_upgrades_rolls_back_and_uninstalls_leaving_nothing(
    cluster: ClusterRun, tmp_path: Path
) -> None:
    kube = Kube(NAMESPACE)
    kube.kubectl("create", "namespace", NAMESPACE)
    write_private_key(tmp_path / "kube-e2e.pem")
    kube.kubectl("create", "secret", "generic", "waitroom-jwt-keys", f"--from-file={tmp_path / 'kube-e2e.pem'}")

    with timed(cluster, "Kafka and moto in the cluster, Ready (kube/deps.yaml)"):
        kube.kubectl("apply", "-f", str(DEPS))
        for name in ("waitroom-kafka", "waitroom-moto"):
            kube.kubectl("rollout", "status", f"deployment/{name}", "--timeout=180s")
    images = {c["image"] for p in kube.get("pods")["items"] for c in p["spec"]["containers"]}
    assert images == {KAFKA_IMAGE, MOTO_IMAGE}

    with timed(cluster, "helm install --wait (topics hook Job, then every workload Ready)"):
        kube.helm("install", RELEASE, str(CHART), "-f", str(CI_VALUES), "--wait", "--timeout", "5m")
    _assert_every_workload_ready(kube, ticketing_replicas=1)
    # The topics hook Job ran to completion against the in-cluster Kafka (and was then deleted, as its policy says).
    events = kube.get("events", "--field-selector", f"involvedObject.kind=Job,involvedObject.name={FULLNAME}-topics")
    assert "Completed" in {e["reason"] for e in events["items"]}, events["items"]
    assert not kube.get("jobs")["items"]

    with timed(cluster, "helm test (join, heartbeat, entry token vs JWKS, leave, in-cluster)"):
        _helm_test(kube)
    assert not kube.get("pods", "-l", "app.kubernetes.io/component=helm-test")["items"]

    with timed(cluster, "a visit from the host through the Services' cluster IPs"):
        await _visit_through_the_services(kube)

    with timed(cluster, "helm upgrade --wait (ticketing.replicas 1 -> 2, logging.level DEBUG)"):
        kube.helm(
            "upgrade", RELEASE, str(CHART), "-f", str(CI_VALUES), "--set", "ticketing.replicas=2",
            "--set", "logging.level=DEBUG", "--wait", "--timeout", "5m",
        )  # fmt: skip
    _assert_every_workload_ready(kube, ticketing_replicas=2)
    assert _env_of(kube, f"{FULLNAME}-ticketing")["WAITROOM_LOG_LEVEL"] == "DEBUG"

    with timed(cluster, "helm rollback --wait (to revision 1)"):
        kube.helm("rollback", RELEASE, "1", "--wait", "--timeout", "5m")
    await eventually(lambda: len(_release_pods(kube)) == 4, 60, "the second ticketing pod to be gone")
    _assert_every_workload_ready(kube, ticketing_replicas=1)
    assert _env_of(kube, f"{FULLNAME}-ticketing")["WAITROOM_LOG_LEVEL"] == "INFO"
    history = kube.helm("history", RELEASE, "-o", "json").stdout
    assert '"revision":3' in history.replace(" ", "") and "Rollback to 1" in history

    with timed(cluster, "helm test after the rollback"):
        _helm_test(kube)

    with timed(cluster, "helm uninstall --wait"):
        kube.helm("uninstall", RELEASE, "--wait", "--timeout", "3m")
    # Its pods terminate after the uninstall returned (SIGTERM, each service's graceful stop); then nothing is left.
    await eventually(lambda: _leftovers(kube) == [], 60, "nothing of the release left", seen=lambda: _leftovers(kube))
    assert not [p for p in kube.get("pods")["items"] if p["metadata"]["name"].startswith(FULLNAME)]

    with timed(cluster, "namespace deleted (Kafka, moto)"):
        kube.kubectl("delete", "namespace", NAMESPACE, "--wait", "--timeout=120s")


def test_kube_down_leaves_the_host_as_it_was(cluster: ClusterRun) -> None:
    running = HostState.now()
    # The check sees a cluster: its processes, bridge, iptables chains and pod cgroups are there while it runs.
    for kind in ("processes", "links", "iptables", "cgroups", "paths"):
        assert getattr(running, kind) - getattr(cluster.before, kind), f"no {kind} of a running cluster seen"
    cluster.timings["make kube-down"] = cluster_sh("down")
    assert cluster.before.differences(HostState.now()) == {}
