"""Where the dev stack's services send their telemetry."""

from __future__ import annotations

from pathlib import Path

from waitroom_devtools.devstack import DevContext, telemetry_env


def test_without_traces_or_otel_settings_the_services_export_nothing() -> None:
    assert telemetry_env(None, {"PATH": "/usr/bin"}) == {
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
    }


def test_the_callers_own_otlp_endpoint_is_left_to_the_services() -> None:
    assert telemetry_env(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}) == {}
    assert telemetry_env(None, {"OTEL_TRACES_EXPORTER": "console"}) == {}


def test_every_service_gets_the_telemetry_settings_with_its_environment() -> None:
    ctx = DevContext(Path("/tmp/dev"), "127.0.0.1:9092", "waitroom", 3, 8000)
    ctx.otel_env = {"OTEL_TRACES_EXPORTER": "none"}
    assert ctx.base_env()["OTEL_TRACES_EXPORTER"] == "none"
    assert ctx.base_env()["KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:9092"
