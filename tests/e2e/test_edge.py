"""The production edge against a running ticketing process: two listeners, trusted proxies, docs.

- The admin routes live on the admin listener only: the public port answers 404 for them (with
  or without the token), the admin port answers 401 without the token and 403 with a wrong one.
- ``X-Forwarded-For`` counts only from a trusted proxy: from an untrusted peer it is ignored (a
  spoofed header does not escape the join rate limit); behind a trusted proxy every forwarded
  client has its own bucket, IPv6 clients one per /64.
- No page the service serves loads anything from another origin; the docs are on the admin port.

The test's own connections come from 127.0.0.1, or from 127.0.0.2 (another loopback address) to
play a peer that is not a trusted proxy.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from e2e.conftest import TicketingLauncher, TicketingProcess
from support.http import admin_headers, create_room, wait_room_visible

from waitroom_events.topics import TopicRegistry

pytestmark = pytest.mark.asyncio(loop_scope="session")

#: a join rate no test reaches: the burst is all a client gets
LIMITED = {"WAITROOM_TICKETING_JOIN_RATE_PER_IP": "0.001", "WAITROOM_TICKETING_JOIN_BURST": "3"}
ADMIN_CALLS = [
    ("GET", "/v1/admin/rooms"),
    ("GET", "/v1/admin/rooms/hall"),
    ("PUT", "/v1/admin/rooms/hall"),
    ("POST", "/v1/admin/rooms/hall/admit"),
    ("GET", "/v1/admin/rooms/hall/stats"),
]
URL_ATTRIBUTE = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']*)["']""")


def _logged(proc: TicketingProcess, event: str) -> list[dict[str, Any]]:
    lines = proc.log_path.read_text(errors="replace").splitlines()
    return [e for e in (json.loads(line) for line in lines if line.startswith("{")) if e.get("event") == event]


def _peer(address: str) -> httpx.AsyncClient:
    """A client whose connections come from ``address`` (a loopback address)."""
    return httpx.AsyncClient(timeout=30, transport=httpx.AsyncHTTPTransport(local_address=address))


async def _joins(http: httpx.AsyncClient, base: str, forwarded: list[str | None]) -> list[int]:
    codes = []
    for value in forwarded:
        headers = {} if value is None else {"X-Forwarded-For": value}
        codes.append((await http.post(f"{base}/v1/rooms/hall/tickets", headers=headers)).status_code)
    return codes


async def test_admin_routes_and_docs_are_on_the_admin_listener_only(
    topics: TopicRegistry, launch_ticketing: TicketingLauncher
) -> None:
    (svc,) = launch_ticketing(topics, **LIMITED)
    assert [e["url"] for e in _logged(svc, "ticketing_listening")] == [svc.url]
    assert [e["url"] for e in _logged(svc, "admin_listening")] == [svc.admin_url]
    async with httpx.AsyncClient(timeout=30) as http:
        for method, path in ADMIN_CALLS:
            for headers in ({}, admin_headers()):
                response = await http.request(method, svc.url + path, json={"capacity": 5}, headers=headers)
                assert response.status_code == 404, (method, path, response.text)
                assert response.json()["error"] == "not_found", (method, path, response.text)
        assert (await http.get(f"{svc.url}/v1/rooms/hall")).status_code == 404, "the public PUT created nothing"

        assert (await http.get(f"{svc.admin_url}/v1/admin/rooms")).status_code == 401
        assert (await http.get(f"{svc.admin_url}/v1/admin/rooms")).json()["error"] == "unauthorized"
        wrong = await http.put(f"{svc.admin_url}/v1/admin/rooms/hall", json={"capacity": 5}, headers=admin_headers("x"))
        assert wrong.status_code == 403 and wrong.json()["error"] == "forbidden"
        created = await create_room(http, svc.admin_url, "hall", capacity=5)
        assert created["capacity"] == 5
        await wait_room_visible(http, svc.url, "hall")
        listing = await http.get(f"{svc.admin_url}/v1/admin/rooms", headers=admin_headers())
        assert [r["room_id"] for r in listing.json()["rooms"]] == ["hall"]
        admitted = await http.post(f"{svc.admin_url}/v1/admin/rooms/hall/admit", json={}, headers=admin_headers())
        assert admitted.status_code == 202
        assert (await http.get(f"{svc.admin_url}/v1/rooms/hall")).status_code == 404, "visitors use the public port"

        # Docs: none on the public port, but its OpenAPI document; on the admin port, every asset local.
        for path in ("/docs", "/redoc", "/docs/public"):
            assert (await http.get(svc.url + path)).status_code == 404, path
        public_paths = (await http.get(f"{svc.url}/openapi.json")).json()["paths"]
        assert "/v1/rooms/{room_id}/tickets" in public_paths and not any("admin" in p for p in public_paths)
        pages = [svc.admin_url + p for p in ("/docs", "/docs/public")] + [f"{svc.url}/wait/hall"]
        for url in pages:
            page = await http.get(url)
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), url
            assert "default-src 'none'" in page.headers["Content-Security-Policy"], url
            links = URL_ATTRIBUTE.findall(page.text)
            assert links and [u for u in links if not u.startswith(("/", "#")) or u.startswith("//")] == [], links
            assert not re.search(r"https?://", page.text), (url, re.findall(r"https?://[^\s\"']+", page.text))
            for link in links:
                if link.startswith("/docs/assets/"):
                    asset = await http.get(svc.admin_url + link)
                    assert asset.status_code == 200 and len(asset.content) > 1000, link

    # Trusting nobody (the default), a client behind a proxy on localhost cannot pick its bucket.
    async with httpx.AsyncClient(timeout=30) as local:
        spoofed: list[str | None] = [f"198.51.100.{n}" for n in range(1, 6)]
        assert await _joins(local, svc.url, spoofed) == [201, 201, 201, 429, 429]


async def test_forwarded_clients_behind_a_trusted_proxy_get_their_own_buckets_an_untrusted_peer_does_not(
    topics: TopicRegistry, launch_ticketing: TicketingLauncher
) -> None:
    (svc,) = launch_ticketing(topics, WAITROOM_TICKETING_TRUSTED_PROXIES="127.0.0.1/32", **LIMITED)
    async with _peer("127.0.0.1") as proxy, _peer("127.0.0.2") as outsider:
        await create_room(proxy, svc.admin_url, "hall", capacity=1000)
        await wait_room_visible(proxy, svc.url, "hall")

        # Six visitors behind the one trusted proxy: 18 joins where a shared bucket would allow 3.
        for n in range(1, 7):
            assert await _joins(proxy, svc.url, [f"198.51.100.{n}"] * 3) == [201, 201, 201], n
        # Each still has its limit, whatever it writes left of what the proxy appended.
        assert await _joins(proxy, svc.url, ["198.51.100.1", "203.0.113.9, 198.51.100.2"]) == [429, 429]
        # IPv6 visitors: one bucket per /64.
        same_64: list[str | None] = [f"2001:db8:5:6::{n}" for n in range(1, 5)]
        assert await _joins(proxy, svc.url, same_64) == [201, 201, 201, 429]
        assert await _joins(proxy, svc.url, ["2001:db8:5:7::1"]) == [201]
        # Garbage in the header: no error, counted against the proxy itself.
        assert await _joins(proxy, svc.url, ["not-an-ip", "999.0.0.1", None, None]) == [201, 201, 201, 429]

        # 127.0.0.2 is no trusted proxy: its header is ignored, it is one client however it signs.
        forged: list[str | None] = [f"203.0.113.{n}" for n in range(1, 6)]
        assert await _joins(outsider, svc.url, forged) == [201, 201, 201, 429, 429]
