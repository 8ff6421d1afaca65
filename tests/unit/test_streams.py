"""The ticket streams' fan-out, the token hiding, the page's language and the room's branding."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from typing import Any

import pytest

from waitroom_core.room import InvalidCommand, RoomConfig, configured
from waitroom_events.commands import RoomConfigureRequested
from waitroom_events.events import TicketAdmitted, TicketIssued, TicketLeft
from waitroom_events.stats import RoomStats
from waitroom_platform.settings import KafkaSettings
from waitroom_ticketing.page import pick_language, render_page
from waitroom_ticketing.stats_view import StatsView
from waitroom_ticketing.streams import SCOPE_TOKEN, USER_TIMEOUT_S, HideTicketToken, StreamHub, bound_half_open, sse

ROOM = "shop"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_an_event_of_a_watched_ticket_rings_only_that_tickets_streams() -> None:
    hub = StreamHub(batch_s=1.0)
    mine, other = hub.watch(ROOM, "t-1"), hub.watch(ROOM, "t-2")

    hub.on_events([TicketIssued(room_id=ROOM, ticket_id="t-1", queue_no=1, at=1.0)])

    assert mine.bell.is_set() and not other.bell.is_set()


async def test_position_moves_ring_every_stream_of_the_room_together_at_most_once_per_batch() -> None:
    clock = FakeClock()
    hub = StreamHub(batch_s=1.0, clock=clock)
    watches = [hub.watch(ROOM, f"t-{i}") for i in range(3)]
    elsewhere = hub.watch("other-room", "t-9")

    hub.on_events([TicketLeft(room_id=ROOM, ticket_id="gone", queue_no=1, at=1.0, was_admitted=True)])
    hub.on_events([TicketAdmitted(room_id=ROOM, ticket_id="next", queue_no=2, at=1.0)])
    await asyncio.sleep(0.05)

    assert all(w.bell.is_set() for w in watches) and not elsewhere.bell.is_set()
    assert hub.batches == 1  # two events, one batch
    for w in watches:
        w.bell.clear()
    hub.on_events([TicketLeft(room_id=ROOM, ticket_id="again", queue_no=3, at=2.0, was_admitted=False)])
    await asyncio.sleep(0.05)
    assert not any(w.bell.is_set() for w in watches), "a second batch within the second"


async def test_a_new_admission_pace_wakes_the_rooms_streams_so_their_estimates_are_resent() -> None:
    view = StatsView(KafkaSettings(), "stats")
    hub = StreamHub()
    view.add_pace_listener(hub.room_changed)
    watch = hub.watch(ROOM, "t-1")

    view.apply(_stats(at=1.0, seconds_per_admission=2.0))
    await asyncio.sleep(0.05)
    assert watch.bell.is_set()

    watch.bell.clear()
    hub._last_batch.clear()  # past the room's batch interval
    view.apply(_stats(at=2.0, seconds_per_admission=2.0))
    await asyncio.sleep(0.05)
    assert not watch.bell.is_set(), "the same pace: no estimate changed"


def _stats(*, at: float, seconds_per_admission: float) -> RoomStats:
    fields = {f.name: 0 for f in dataclasses.fields(RoomStats) if f.default is dataclasses.MISSING}
    return RoomStats(
        **{**fields, "room_id": ROOM, "at": at, "window_start": 0.0, "seconds_per_admission": seconds_per_admission}
    )  # type: ignore[arg-type]


async def test_a_room_without_streams_costs_nothing_and_unwatching_forgets_the_room() -> None:
    hub = StreamHub()
    watch = hub.watch(ROOM, "t-1")
    hub.unwatch(watch)

    hub.on_events([TicketAdmitted(room_id=ROOM, ticket_id="t-1", queue_no=1, at=1.0)])

    assert hub.describe()["rooms"] == 0 and not watch.bell.is_set()


async def test_draining_ends_every_stream() -> None:
    hub = StreamHub()
    watch = hub.watch(ROOM, "t-1")
    await hub.drain()
    assert hub.closing and watch.bell.is_set()


def test_an_event_is_framed_with_its_id_its_name_and_one_line_of_json() -> None:
    assert sse("ticket", {"state": "waiting"}, "w3") == b'id: w3\nevent: ticket\ndata: {"state":"waiting"}\n\n'


async def test_the_ticket_token_is_taken_out_of_a_stream_requests_query_string() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope)

    query = b"ticket_token=secret-token&x=1"
    await HideTicketToken(app)(
        {"type": "http", "path": "/v1/rooms/a/tickets/b/events", "query_string": query}, None, None
    )

    assert seen["query_string"] == b"x=1" and seen[SCOPE_TOKEN] == "secret-token"


@pytest.mark.parametrize(
    ("header", "language"),
    [
        (None, "en"),
        ("de-DE,de;q=0.9,en;q=0.8", "de"),
        ("fr-FR, en;q=0.5, de;q=0.7", "de"),
        ("fr, it", "en"),
        ("de;q=0, en", "en"),
        ("de;q=nonsense, en", "en"),
    ],
)
def test_the_page_speaks_the_visitors_best_catalogued_language(header: str | None, language: str) -> None:
    assert pick_language(header) == language


def test_the_branded_page_allows_images_only_from_the_logos_origin_and_drops_a_colour_that_is_not_one() -> None:
    branding = {"title": "Lumen <sale>", "logo_url": "https://cdn.example/l.svg", "accent_color": "red;}"}
    body, headers = render_page(ROOM, None, accept_language="de", branding=branding)

    assert "img-src https://cdn.example;" in headers["Content-Security-Policy"]
    assert headers["Content-Language"] == "de" and '<html lang="de">' in body
    assert "<title>Lumen &lt;sale&gt;</title>" in body
    assert "red;}" not in body


def test_branding_is_kept_by_a_reconfiguration_that_does_not_mention_it_and_replaced_by_one_that_does() -> None:
    branded = configured(
        RoomConfig(capacity=5),
        RoomConfigureRequested(room_id=ROOM, requested_at=1.0, branding={"title": "Sale", "accent_color": "#112233"}),
    )
    assert dict(branded.branding) == {"title": "Sale", "accent_color": "#112233"}
    assert (
        configured(branded, RoomConfigureRequested(room_id=ROOM, requested_at=2.0, capacity=9)).branding
        == branded.branding
    )
    assert configured(branded, RoomConfigureRequested(room_id=ROOM, requested_at=3.0, branding={})).branding == ()


@pytest.mark.parametrize(
    "branding",
    [{"accent_color": "blue"}, {"logo_url": "javascript:alert(1)"}, {"title": "x" * 81}, {"font": "Comic Sans"}],
)
def test_branding_that_is_not_valid_is_refused(branding: dict[str, str]) -> None:
    with pytest.raises(InvalidCommand):
        configured(RoomConfig(capacity=1), RoomConfigureRequested(room_id=ROOM, requested_at=1.0, branding=branding))


def test_a_connection_accepted_on_a_bounded_listener_inherits_keepalive_and_the_user_timeout() -> None:
    listener = socket.socket()
    try:
        bound_half_open(listener)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.create_connection(listener.getsockname()):
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == USER_TIMEOUT_S * 1000
    finally:
        listener.close()
