"""Fixtures shared by every test layer.

Layers are marked by folder: tests under ``tests/integration`` get the ``integration`` marker, under
``tests/e2e`` the ``e2e`` marker, under ``tests/containers`` the ``containers`` marker (the images
on podman), under ``tests/kube`` the ``kube`` marker (the chart on a local Kubernetes), and any
other test that asks for a broker is an integration test too. So ``pytest -m
"not integration and not e2e and not containers and not kube"`` runs exactly what needs no Kafka.

Which Kafka the ``kafka_bootstrap`` fixture gives, once per session:

* ``KAFKA_BOOTSTRAP_SERVERS`` set: that cluster, as is (it must accept topic creation);
* ``WAITROOM_TEST_BROKER=testcontainers``: the project's Kafka image (``localhost/waitroom-kafka``,
  ``make containers`` builds it) started through testcontainers, advertised on its host port. The
  engine is the one ``DOCKER_HOST`` names if it answers, else a ``podman system service`` of the
  session's own (``support.containers.PodmanEngine``), stopped at the end;
* otherwise: the embedded Apache Kafka (local Java, jars fetched once) in a fresh temporary folder.

Tests never clean topics up: each one gets its own topic prefix from the ``topics`` fixture, so no
test sees another's records, whichever cluster runs them.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import pytest
import pytest_asyncio

from waitroom_devtools.broker import EmbeddedKafka
from waitroom_events.topics import TopicRegistry, topic_registry
from waitroom_platform.admin import ensure_topics, wait_for_broker

TESTS_DIR = Path(__file__).parent
LAYER_MARKERS = {
    "integration": pytest.mark.integration,
    "e2e": pytest.mark.e2e,
    "browser": pytest.mark.browser,
    "containers": pytest.mark.containers,
    "kube": pytest.mark.kube,
}
BROKER_FIXTURES = {"kafka_bootstrap", "topics"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            layer = item.path.relative_to(TESTS_DIR).parts[0]
        except ValueError:
            continue
        if layer in LAYER_MARKERS:
            item.add_marker(LAYER_MARKERS[layer])
        elif BROKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """The bootstrap address of the session's Kafka (see the module docstring for which one)."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        await wait_for_broker(external, timeout_s=30)
        yield external
    elif os.environ.get("WAITROOM_TEST_BROKER") == "testcontainers":
        # Imported here: the default run must not need testcontainers or a container engine.
        from support.containers import kafka_container

        with kafka_container() as bootstrap:
            await wait_for_broker(bootstrap, timeout_s=60)
            yield bootstrap
    else:
        async with EmbeddedKafka(tmp_path_factory.mktemp("kafka")) as broker:
            yield broker.bootstrap_servers


@pytest_asyncio.fixture(loop_scope="session")
async def topics(kafka_bootstrap: str) -> TopicRegistry:
    """Every registry topic, created under a prefix of this test's own, 3 partitions per room topic."""
    registry = topic_registry(prefix=f"t{uuid4().hex[:8]}", room_partitions=3)
    await ensure_topics(kafka_bootstrap, registry.all())
    return registry
