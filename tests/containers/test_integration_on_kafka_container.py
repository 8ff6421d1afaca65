"""``WAITROOM_TEST_BROKER=testcontainers`` runs the integration tests on the project's Kafka image.

The integration layer normally runs on the embedded broker; this runs one of its files again in a
pytest of its own whose ``kafka_bootstrap`` is a ``localhost/waitroom-kafka`` container started
through testcontainers on this session's podman service (``DOCKER_HOST``), so the branch keeps
working and the image keeps passing what the embedded broker passes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from support.containers import REPO, PodmanEngine

from waitroom_devtools.procs import tail_lines

#: the delayed consumer: timestamps, pauses, commits and restarts against a real broker
INTEGRATION_FILES = ["tests/integration/test_delayed_consumer.py"]


def test_the_integration_tests_pass_on_the_kafka_container(engine: PodmanEngine) -> None:
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("PYTEST_")},
        "WAITROOM_TEST_BROKER": "testcontainers",
        "DOCKER_HOST": engine.docker_host,
    }
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)  # that would win over the container
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *INTEGRATION_FILES],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, tail_lines(output, 60)
    summary = re.search(r"(\d+) passed", output)
    assert summary and int(summary.group(1)) >= 6, tail_lines(output, 20)
    assert not re.search(r"\d+ (failed|errors?|skipped)", output), tail_lines(output, 20)
