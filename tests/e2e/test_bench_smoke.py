"""The benchmarks still run and measure something: each bench, tiny, against the session's broker.

Real figures come from the full runs in docs/benchmarks.md; these only keep the commands honest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from waitroom_devtools.procs import ServiceProcess, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bench_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """``bench`` is run from the repository root, not installed: import it from there."""
    monkeypatch.syspath_prepend(str(REPO_ROOT))


def _run_bench(kafka_bootstrap: str, *argv: str, timeout: float = 90) -> str:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", *argv], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _table(report: str, first_header: str) -> list[dict[str, str]]:
    """The rows of the Markdown table whose first column is ``first_header``, as dicts by header."""
    lines = [line for line in report.splitlines() if line.startswith("|")]
    start = next(i for i, line in enumerate(lines) if line.split("|")[1].strip() == first_header)
    headers = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) != len(headers):
            break
        rows.append(dict(zip(headers, cells, strict=True)))
    return rows


SHAPES = ("join", "heartbeat waiting", "heartbeat admitted", "status")


def test_the_http_bench_measures_every_shape_of_waitroom_and_the_baseline_without_errors(
    kafka_bootstrap: str,
) -> None:
    report = _run_bench(
        kafka_bootstrap,
        "bench.http_joins",
        *("--duration", "1", "--warmup", "0", "--connections", "4", "--tickets", "30", "--capacity", "10"),
        *("--partitions", "1"),
        timeout=180,
    )

    rows = _table(report, "shape")
    # after the join row, joins open-loop at a tenth of the rate it reached (the latency row)
    paced = {r["shape"] for r in rows if r["shape"].startswith("join at 10% (")}
    assert len(paced) == 1, rows
    shapes = [*SHAPES, *paced]
    assert {(r["shape"], r["server"]) for r in rows} == {
        (shape, server) for shape in shapes for server in ("baseline", "waitroom")
    }
    for row in rows:
        assert float(row["req/s"]) > 0, row
        assert row["errors"] == "0", row
    ratios = _table(report.split("Ratios", 1)[1], "shape")
    assert {r["shape"] for r in ratios} == set(shapes)
    assert "open-loop, latency from each request's due time" in report


def test_the_sequencer_bench_applies_every_command_and_reports_a_rate(kafka_bootstrap: str) -> None:
    report = _run_bench(kafka_bootstrap, "bench.sequencer_throughput", "--commands", "2000", timeout=120)

    (row,) = _table(report, "commands")
    assert row["commands"] == "2,000"
    assert float(row["commands applied /s"].replace(",", "")) > 0


def test_the_recovery_bench_replays_every_event_it_wrote_and_reports_a_rate(kafka_bootstrap: str) -> None:
    report = _run_bench(kafka_bootstrap, "bench.sequencer_recovery", "--events", "1000")

    (row,) = _table(report, "events")
    assert row["events"] == "1,000"
    assert float(row["replay events/s"].replace(",", "")) > 0
    assert "Recommendation" in report


@pytest.mark.usefixtures("bench_on_path")
def test_the_fallback_client_loads_the_baseline_without_errors(tmp_path: Path) -> None:
    from bench.loadgen import RequestSpec, run_load

    port = free_port()
    baseline = ServiceProcess(
        "baseline",
        "bench.baseline_app",
        {"PYTHONPATH": str(REPO_ROOT)},
        tmp_path / "baseline.log",
        ready_url=f"http://127.0.0.1:{port}/readyz",
        args=("--port", str(port)),
    ).start()
    try:
        baseline.wait_ready(30)
        specs = [RequestSpec("POST", f"/v1/rooms/r/tickets/{uuid.uuid4()}/heartbeat", "Bearer t") for _ in range(5)]
        result = run_load("python", f"http://127.0.0.1:{port}", specs, connections=4, duration_s=0.5, max_requests=200)
    finally:
        baseline.stop()

    assert result.requests > 0 and result.throughput > 0
    assert result.errors == 0, result
    assert result.cpu_s > 0  # the client's own CPU is accounted


@pytest.mark.usefixtures("bench_on_path")
def test_writing_a_section_replaces_only_that_section(tmp_path: Path) -> None:
    from bench.common import write_section

    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Other\n\nkept\n\n## Mine\n\nold\n\n## Last\n\nalso kept\n")

    write_section("Mine", "new figures", doc)
    write_section("Added", "appended", doc)

    assert doc.read_text() == (
        "# Benchmarks\n\n## Other\n\nkept\n\n## Mine\n\nnew figures\n\n## Last\n\nalso kept\n\n## Added\n\nappended\n"
    )
