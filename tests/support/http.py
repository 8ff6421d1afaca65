"""HTTP helpers for the waitroom API in tests."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

ADMIN_TOKEN = "e2e-admin-token-0123456789"


def admin_headers(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def bearer(ticket_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {ticket_token}"}


async def create_room(http: httpx.AsyncClient, admin_url: str, room_id: str, **config: Any) -> dict[str, Any]:
    """Create or reconfigure a room through the admin listener (``TicketingProcess.admin_url``)."""
    response = await http.put(f"{admin_url}/v1/admin/rooms/{room_id}", json=config, headers=admin_headers())
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


async def create_room_eventually(
    http: httpx.AsyncClient, admin_url: str, base: str, room_id: str, timeout: float = 30, **config: Any
) -> None:
    """:func:`create_room` where a 202 (accepted, not applied within the API's wait) is also a
    success once the room shows: a broker that has just started may take seconds over its first
    transactions (its group coordinator still loading), which is not what a test of it is about."""
    response = await http.put(f"{admin_url}/v1/admin/rooms/{room_id}", json=config, headers=admin_headers())
    assert response.status_code in (200, 201, 202), response.text
    await wait_room_visible(http, base, room_id, timeout)


async def wait_room_visible(http: httpx.AsyncClient, base: str, room_id: str, timeout: float = 10) -> None:
    """Another replica sees a room once its read model has the RoomConfigured event."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await http.get(f"{base}/v1/rooms/{room_id}")).status_code == 200:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"room {room_id} not visible at {base}")


async def ticket_status(http: httpx.AsyncClient, base: str, ticket: dict[str, Any], token: str) -> httpx.Response:
    return await http.get(f"{base}/v1/rooms/{ticket['room_id']}/tickets/{ticket['ticket_id']}", headers=bearer(token))


async def settle(http: httpx.AsyncClient, base: str, ticket: dict[str, Any], token: str, timeout: float = 30) -> dict:
    """Poll a ticket until it is sequenced (a 202 'pending' becomes a 200 with its queue number)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = await ticket_status(http, base, ticket, token)
        if response.status_code == 200:
            body: dict[str, Any] = response.json()
            return body
        assert response.status_code == 202, response.text
        await asyncio.sleep(0.1)
    raise AssertionError(f"ticket {ticket['ticket_id']} never sequenced")
