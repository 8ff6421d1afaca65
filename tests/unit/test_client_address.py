"""The production edge without a broker: client addresses behind proxies, the edge settings, and
the HTTP server component on a real socket (uvicorn's own proxy-header handling off)."""

from __future__ import annotations

import asyncio
import ipaddress
import json

import httpx
import pytest
import structlog
from fastapi import FastAPI, Request
from pydantic import ValidationError

from waitroom_ticketing.__main__ import HttpServer, http_config
from waitroom_ticketing.docs import FAVICON, SWAGGER_CSS, SWAGGER_JS, assets_dir
from waitroom_ticketing.edge import MAX_HOPS, TrustedProxies, parse_address, rate_limit_key
from waitroom_ticketing.settings import TicketingSettings

ip = ipaddress.ip_address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("198.51.100.7", "198.51.100.7"),
        (" 198.51.100.7 ", "198.51.100.7"),
        ("198.51.100.7:8080", "198.51.100.7"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
        ("fe80::1%eth0", "fe80::1"),
        ("", None),
        ("unknown", None),
        ("_hidden", None),
        ("999.1.1.1", None),
        ("198.51.100.7:", None),
        ("198.51.100.7:http", None),
        ("[2001:db8::1", None),
        ("[2001:db8::1]x", None),
        ("2001:db8::1::2", None),
        ("1" * 200, None),
    ],
)
def test_addresses_are_read_as_proxies_write_them(text: str, expected: str | None) -> None:
    parsed = parse_address(text)
    assert (None if parsed is None else str(parsed)) == expected


def test_the_client_is_the_right_most_hop_that_is_not_a_trusted_proxy() -> None:
    proxies = TrustedProxies.parse(["10.0.0.0/8", "192.0.2.10/32", "fd00::/8"])
    assert proxies.client("10.0.0.1", ["203.0.113.5"]) == ip("203.0.113.5")
    assert proxies.client("10.0.0.1", ["1.1.1.1, 203.0.113.5, 192.0.2.10"]) == ip("203.0.113.5")
    assert proxies.client("10.0.0.1", ["1.1.1.1", "203.0.113.5, 10.4.4.4"]) == ip("203.0.113.5"), (
        "header lines in order"
    )
    assert proxies.client("::ffff:10.0.0.1", ["203.0.113.5"]) == ip("203.0.113.5"), "an IPv4-mapped peer"
    assert proxies.client("fd00::2", ["2001:db8::5"]) == ip("2001:db8::5")
    # No header, or only trusted hops: the farthest trusted hop is all we know.
    assert proxies.client("10.0.0.1", []) == ip("10.0.0.1")
    assert proxies.client("10.0.0.1", ["10.0.0.7, 192.0.2.10"]) == ip("10.0.0.7")


def test_an_untrusted_peer_is_the_client_whatever_it_forwards() -> None:
    assert TrustedProxies().client("127.0.0.1", ["203.0.113.5"]) == ip("127.0.0.1"), "trust none by default"
    proxies = TrustedProxies.parse(["10.0.0.0/8"])
    assert proxies.client("203.0.113.9", ["10.0.0.1, 198.51.100.1"]) == ip("203.0.113.9")
    assert proxies.client(None, ["198.51.100.1"]) == "unknown"
    assert proxies.client("testclient", ["198.51.100.1"]) == "testclient", "a peer that is no address stays as it is"


def test_a_malformed_hop_ends_the_walk_at_the_proxy_that_passed_it_on() -> None:
    proxies = TrustedProxies.parse(["10.0.0.0/8"])
    assert proxies.client("10.0.0.1", ["198.51.100.1, garbage"]) == ip("10.0.0.1")
    assert proxies.client("10.0.0.1", ["198.51.100.1, nonsense, 10.0.0.2"]) == ip("10.0.0.2")
    assert proxies.client("10.0.0.1", [",,"]) == ip("10.0.0.1")
    assert proxies.client("10.0.0.1", ["garbage, 198.51.100.1"]) == ip("198.51.100.1"), "left of the client: unread"


def test_only_the_last_hops_of_a_long_header_are_looked_at() -> None:
    proxies = TrustedProxies.parse(["10.0.0.0/8"])
    hops = ["198.51.100.1"] + ["10.0.0.9"] * (MAX_HOPS + 10)
    assert proxies.client("10.0.0.1", [", ".join(hops)]) == ip("10.0.0.9")


def test_rate_limit_keys_are_ipv4_addresses_and_ipv6_64s() -> None:
    assert rate_limit_key(ip("198.51.100.7")) == "198.51.100.7"
    assert rate_limit_key(ip("2001:db8:1:2:3:4:5:6")) == "2001:db8:1:2::/64"
    assert rate_limit_key(ip("2001:db8:1:2::ffff")) == rate_limit_key(ip("2001:db8:1:2:ffff::"))
    assert rate_limit_key(ip("2001:db8:1:3::1")) != rate_limit_key(ip("2001:db8:1:2::1"))
    assert rate_limit_key("unknown") == "unknown"


# ---------------------------------------------------------------- settings


def test_edge_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TRUSTED_PROXIES", "ADMIN_PORT", "ADMIN_HOST", "DOCS_ENABLED", "PORT", "HEALTH_PORT"):
        monkeypatch.delenv(f"WAITROOM_TICKETING_{name}", raising=False)
    settings = TicketingSettings()
    assert settings.trusted_proxies == []
    assert (settings.admin_host, settings.admin_port) == ("127.0.0.1", 8001)
    assert settings.docs_enabled is True


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.0.0.0/8", ["10.0.0.0/8"]),
        ("10.0.0.0/8, 192.168.1.7 ,fd00::1/64", ["10.0.0.0/8", "192.168.1.7/32", "fd00::/64"]),
        (json.dumps(["10.1.2.3/8", "::1"]), ["10.0.0.0/8", "::1/128"]),
        ("", []),
        (" , ", []),
    ],
)
def test_trusted_proxies_are_cidrs_as_a_json_list_or_comma_separated(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: list[str]
) -> None:
    monkeypatch.setenv("WAITROOM_TICKETING_TRUSTED_PROXIES", value)
    assert TicketingSettings().trusted_proxies == expected


@pytest.mark.parametrize("value", ["10.0.0.0/33", "not-a-network", "[10.0.0.0/8", '["10.0.0.0/8", "x"]'])
def test_a_trusted_proxy_that_is_no_cidr_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("WAITROOM_TICKETING_TRUSTED_PROXIES", value)
    with pytest.raises(ValidationError):
        TicketingSettings()


def test_the_admin_port_cannot_be_the_public_or_the_health_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAITROOM_TICKETING_ADMIN_PORT", "8000")
    with pytest.raises(ValidationError, match="admin_port"):
        TicketingSettings()
    monkeypatch.setenv("WAITROOM_TICKETING_ADMIN_PORT", "0")
    monkeypatch.setenv("WAITROOM_TICKETING_PORT", "0")
    assert TicketingSettings().admin_port == 0, "0 (a free port) may be asked for both"


def test_the_docs_assets_are_in_the_installed_package() -> None:
    for name in (SWAGGER_JS, SWAGGER_CSS, FAVICON):
        assert (assets_dir() / name).stat().st_size > 1000, name


# ---------------------------------------------------------------- the server component


async def test_the_http_server_binds_port_0_logs_its_url_and_never_applies_proxy_headers() -> None:
    app = FastAPI()

    @app.get("/peer")
    async def peer(request: Request) -> dict[str, str | None]:
        return {"client": request.client.host if request.client else None}

    settings = TicketingSettings()
    server = HttpServer(http_config(app, "127.0.0.1", 0, settings), name="admin_http", event="admin_listening")
    with structlog.testing.capture_logs() as logs:
        await server.start()
    assert server.url is not None and not server.url.endswith(":0")
    assert [(e["event"], e["url"]) for e in logs] == [("admin_listening", server.url)]
    task = asyncio.create_task(server.run())
    try:
        while not server.ready():
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(timeout=10) as http:
            # uvicorn's default would believe a proxy on 127.0.0.1 and report 203.0.113.5 here.
            answer = await http.get(f"{server.url}/peer", headers={"X-Forwarded-For": "203.0.113.5"})
        assert answer.json() == {"client": "127.0.0.1"}
    finally:
        await server.drain()
        await asyncio.wait_for(task, 10)
        await server.stop()


async def test_a_port_already_taken_fails_the_start_with_an_os_error() -> None:
    first = HttpServer(http_config(FastAPI(), "127.0.0.1", 0, TicketingSettings()))
    await first.start()
    try:
        assert first.url is not None
        taken = int(first.url.rsplit(":", 1)[1])
        task = asyncio.create_task(first.run())
        while not first.ready():
            await asyncio.sleep(0.01)
        second = HttpServer(http_config(FastAPI(), "127.0.0.1", taken, TicketingSettings()))
        with pytest.raises(OSError):
            await second.start()
        await first.drain()
        await asyncio.wait_for(task, 10)
    finally:
        await first.stop()
