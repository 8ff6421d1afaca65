"""The Kubernetes layer (marker ``kube``, given by folder): the chart on a real single-node cluster.

The layer owns the cluster of ``kube/cluster.sh`` (``make kube-up``): it takes down one that is
running, records what of a cluster is on the host (``support.kube.HostState``), starts it, and at
the end the last test takes it down and compares. Needs root; the Kubernetes binaries must have
been built (``make kube-build``, which ``make test`` runs first) and the images too (``make
containers``). Without root the layer is skipped, saying so; anything else missing fails.

The wall time of each step is printed at the end of the run (and written to
``$WAITROOM_KUBE_DIR/e2e-timings.json``).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest
from support.containers import APP_IMAGE, KAFKA_IMAGE, MOTO_IMAGE, SOURCE_LABEL, source_key
from support.kube import KUBE_DIR, TIMINGS, ClusterRun, HostState, binaries_missing, cluster_sh


def _image_label(image: str) -> str | None:
    result = subprocess.run(
        ["podman", "image", "inspect", "--format", f'{{{{index .Labels "{SOURCE_LABEL}"}}}}', image],
        capture_output=True,
        text=True,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def _require_images() -> None:
    missing = [image for image in (APP_IMAGE, KAFKA_IMAGE, MOTO_IMAGE) if _image_label(image) is None]
    if missing:
        pytest.fail(f"images missing in podman: {', '.join(missing)}; build them with `make containers`")
    if not os.environ.get("WAITROOM_APP_IMAGE") and _image_label(APP_IMAGE) != source_key():
        pytest.fail(f"{APP_IMAGE} was built from other sources than the working tree's: rebuild it (`make containers`)")


@pytest.fixture(scope="package")
def cluster() -> Iterator[ClusterRun]:
    if os.geteuid() != 0:
        pytest.skip("the local Kubernetes needs root (containerd, kubelet, iptables, a bridge): run as root")
    missing = binaries_missing()
    if missing:
        pytest.fail(f"Kubernetes binaries not built ({', '.join(missing)}): run `make kube-build` (~20 min cold)")
    _require_images()
    cluster_sh("down")  # the layer owns the cluster: one left running would hide what it leaves behind
    run = ClusterRun(HostState.now())
    cold = not (KUBE_DIR / "containerd").exists()
    run.timings["make kube-up" + (" (no image store yet)" if cold else "")] = cluster_sh("up")
    try:
        yield run
    finally:
        cluster_sh("down")  # idempotent: the last test normally took it down already


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TIMINGS:
        return
    terminalreporter.section("kubernetes e2e: wall time of each step")
    for step, seconds in TIMINGS.items():
        terminalreporter.write_line(f"{seconds:8.1f} s  {step}")
    try:
        (KUBE_DIR / "e2e-timings.json").write_text(json.dumps(TIMINGS, indent=2) + "\n")
    except OSError:
        pass
