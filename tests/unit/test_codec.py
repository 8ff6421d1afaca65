"""The codec: golden payloads of every message type, and the refusal of poison records.

Every registered message type has a fixed example in ``EXAMPLES`` and a golden file
``tests/unit/golden/<type>.json`` holding the exact value bytes the codec produced for it. The test
checks both ways: today's encoder still writes those bytes, and today's decoder still reads them
into the example, so an event already in the log keeps decoding. A type registered without an
example or a golden file fails the test.

To write the golden file of a new type, add its example and run once with the update switch::

    WAITROOM_UPDATE_GOLDEN=1 pytest tests/unit/test_codec.py

then review and commit the new file. An existing golden file must never change: a payload that no
longer matches is a breaking change, which needs a new type (``...v2``), not an edited one.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pkgutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import waitroom_events
from waitroom_events.base import OMIT_IF_NONE, Message, registered_types
from waitroom_events.codec import HEADER_CONTENT_TYPE, HEADER_TYPE, DecodeError, decode, encode
from waitroom_events.commands import (
    AdmitRequested,
    ExpireRequested,
    JoinRequested,
    LeaveRequested,
    RoomArchiveRequested,
    RoomConfigureRequested,
)
from waitroom_events.events import (
    JoinRejected,
    RoomArchived,
    RoomConfigured,
    TicketAdmitted,
    TicketExpired,
    TicketIssued,
    TicketLeft,
)
from waitroom_events.heartbeats import Heartbeat, HeartbeatBatch
from waitroom_events.reaper import ExpiryCheck
from waitroom_events.stats import RoomStats, ThresholdBreached, ThresholdRecovered

GOLDEN_DIR = Path(__file__).parent / "golden"
UPDATE_GOLDEN = os.environ.get("WAITROOM_UPDATE_GOLDEN") == "1"

# A type lives wherever the contract package defines it; import every module so each one registers.
for _module in pkgutil.walk_packages(waitroom_events.__path__, f"{waitroom_events.__name__}."):
    importlib.import_module(_module.name)

ROOM = "summer-sale"
AT = 1_767_225_600.25

EXAMPLES: dict[str, Message] = {
    example.TYPE: example
    for example in [
        JoinRequested(room_id=ROOM, ticket_id="tk-7f3a", requested_at=AT, idempotency_key="idem-42"),
        LeaveRequested(room_id=ROOM, ticket_id="tk-7f3a", requested_at=AT),
        ExpiryCheck(room_id=ROOM, scheduled_at=AT),
        ExpireRequested(
            room_id=ROOM, ticket_id="tk-7f3a", requested_at=AT, last_heartbeat_at=AT - 21.5, reason="operator"
        ),
        RoomConfigureRequested(
            room_id=ROOM,
            requested_at=AT,
            capacity=250,
            heartbeat_timeout_s=30.0,
            heartbeat_interval_s=7.5,
            target_url="https://shop.example/checkout",
            paused=True,
        ),
        AdmitRequested(room_id=ROOM, requested_at=AT, count=10, above_capacity=True),
        RoomConfigured(
            room_id=ROOM,
            at=AT,
            capacity=250,
            heartbeat_timeout_s=30.0,
            heartbeat_interval_s=7.5,
            target_url="https://shop.example/checkout",
            paused=True,
        ),
        TicketIssued(room_id=ROOM, ticket_id="tk-7f3a", queue_no=1042, at=AT),
        TicketAdmitted(room_id=ROOM, ticket_id="tk-7f3a", queue_no=1042, at=AT, manual=True),
        TicketLeft(room_id=ROOM, ticket_id="tk-7f3a", queue_no=1042, at=AT, was_admitted=True),
        TicketExpired(
            room_id=ROOM, ticket_id="tk-7f3a", queue_no=1042, at=AT, was_admitted=False, last_heartbeat_at=AT - 21.5
        ),
        JoinRejected(room_id=ROOM, ticket_id="tk-7f3a", at=AT, reason="unknown_room"),
        RoomArchiveRequested(room_id=ROOM, requested_at=AT),
        RoomArchived(room_id=ROOM, at=AT, last_queue_no=1042),
        Heartbeat(room_id=ROOM, ticket_id="tk-7f3a", at=AT),
        HeartbeatBatch(room_id=ROOM, ticket_ids=["tk-7f3a", "tk-9b21"], at=AT),
        RoomStats(
            room_id=ROOM,
            at=AT,
            capacity=250,
            active=248,
            waiting=1310,
            paused=False,
            window_start=AT - 60.25,
            joins_1m=95,
            admissions_1m=40,
            leaves_1m=31,
            expiries_waiting_1m=6,
            expiries_admitted_1m=3,
            joins_5m=480,
            admissions_5m=205,
            leaves_5m=160,
            expiries_waiting_5m=27,
            expiries_admitted_5m=12,
            wait_p50_s=312.5,
            wait_p90_s=540.0,
            wait_p99_s=701.25,
            wait_max_s=730.5,
            admission_rate_per_s=0.68,
            seconds_per_admission=1.4705,
            estimated_wait_s=1927.8,
            last_admission_at=AT - 0.75,
        ),
        ThresholdBreached(
            room_id=ROOM,
            alert_id="summer-sale:waiting_high:1767225600",
            rule="waiting_high",
            value=1310.0,
            threshold=1000.0,
            at=AT,
            summary="1310 waiting, above 1000",
        ),
        ThresholdRecovered(
            room_id=ROOM,
            alert_id="summer-sale:waiting_high:1767225600",
            rule="waiting_high",
            value=640.0,
            threshold=1000.0,
            at=AT + 900.0,
            breached_at=AT,
            summary="640 waiting, below 1000",
        ),
    ]
}

ALL_TYPES = sorted(registered_types())


def type_header(type_name: str) -> list[tuple[str, bytes]]:
    return [(HEADER_TYPE, type_name.encode())]


def golden_path(type_name: str) -> Path:
    return GOLDEN_DIR / f"{type_name}.json"


# --------------------------------------------------------------------------------------------
# golden payloads


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_every_registered_type_encodes_to_its_golden_bytes_and_decodes_from_them(type_name: str) -> None:
    example = EXAMPLES.get(type_name)
    assert example is not None, f"{type_name} is registered but has no example in EXAMPLES"
    record = encode(example)
    path = golden_path(type_name)
    if UPDATE_GOLDEN:
        GOLDEN_DIR.mkdir(exist_ok=True)
        path.write_bytes(record.value)
    assert path.exists(), f"no golden file for {type_name}: run with WAITROOM_UPDATE_GOLDEN=1 (see module docstring)"
    golden = path.read_bytes()

    assert record.value == golden
    assert decode(golden, type_header(type_name)) == example


@pytest.mark.parametrize("type_name", sorted(EXAMPLES))
def test_every_example_sets_each_optional_field_away_from_its_default(type_name: str) -> None:
    # A golden payload that leaves a field at its default would not show that field surviving a round trip.
    example = EXAMPLES[type_name]
    for field in dataclasses.fields(example):
        if field.metadata.get(OMIT_IF_NONE):
            continue  # a field added later is left out of the v1 golden bytes: see ADDED_LATER below
        if field.default is not dataclasses.MISSING:
            assert getattr(example, field.name) != field.default, f"{type_name}.{field.name} is at its default"


#: every example again with its fields added after v1 set (``added_later()`` in base.py): their own
#: golden files, so such a field is shown to survive a round trip while the v1 bytes stay as they were
ADDED_LATER_DIR = GOLDEN_DIR / "added-later"
BRANDING = {"title": "Summer sale", "accent_color": "#c2410c", "logo_url": "https://shop.example/logo.svg"}
ADDED_LATER: dict[str, Message] = {
    **{
        example.TYPE: dataclasses.replace(example, branding=BRANDING)  # type: ignore[call-arg]
        for example in (EXAMPLES[RoomConfigured.TYPE], EXAMPLES[RoomConfigureRequested.TYPE])
    },
    TicketAdmitted.TYPE: dataclasses.replace(EXAMPLES[TicketAdmitted.TYPE], issued_at=AT - 42.5),  # type: ignore[call-arg]
}


def _without_added_later(message: Message) -> Message:
    later = {f.name: None for f in dataclasses.fields(message) if f.metadata.get(OMIT_IF_NONE)}
    return dataclasses.replace(message, **later)  # type: ignore[type-var]


@pytest.mark.parametrize("type_name", sorted(EXAMPLES))
def test_every_field_added_later_is_set_in_an_added_later_example(type_name: str) -> None:
    later = [f.name for f in dataclasses.fields(EXAMPLES[type_name]) if f.metadata.get(OMIT_IF_NONE)]
    if later:
        example = ADDED_LATER[type_name]
        assert all(getattr(example, name) is not None for name in later)


@pytest.mark.parametrize("type_name", sorted(ADDED_LATER))
def test_an_example_with_its_added_later_fields_encodes_to_its_golden_bytes_and_decodes_from_them(
    type_name: str,
) -> None:
    example = ADDED_LATER[type_name]
    record = encode(example)
    path = ADDED_LATER_DIR / f"{type_name}.json"
    if UPDATE_GOLDEN:
        ADDED_LATER_DIR.mkdir(exist_ok=True)
        path.write_bytes(record.value)
    assert record.value == path.read_bytes()
    assert decode(record.value, type_header(type_name)) == example
    # and unset, the field is not written: the bytes are the v1 golden ones
    assert encode(_without_added_later(example)).value == golden_path(type_name).read_bytes()


def test_a_field_added_later_that_is_not_an_object_of_strings_is_refused() -> None:
    value = encode(ADDED_LATER[RoomConfigured.TYPE]).value.replace(b'"title":"Summer sale"', b'"title":7')
    with pytest.raises(DecodeError, match="object of strings"):
        decode(value, type_header(RoomConfigured.TYPE))


def test_every_golden_file_belongs_to_a_registered_type() -> None:
    # Removing a type would strand its events in the log: the log is kept for ever.
    on_disk = {path.name.removesuffix(".json") for path in GOLDEN_DIR.glob("*.json")}

    assert on_disk <= set(registered_types())


def test_every_example_is_of_a_registered_type() -> None:
    assert set(EXAMPLES) <= set(registered_types())


def test_a_record_is_keyed_by_room_and_carries_its_type_and_content_type_headers() -> None:
    example = EXAMPLES[TicketIssued.TYPE]

    record = encode(example, extra_headers=[("traceparent", b"00-abc-def-01")])

    assert record.key == ROOM.encode()
    assert record.headers == [
        (HEADER_TYPE, b"waitroom.ticket.issued.v1"),
        (HEADER_CONTENT_TYPE, b"application/json"),
        ("traceparent", b"00-abc-def-01"),
    ]


def test_a_message_class_without_a_registered_type_cannot_be_encoded() -> None:
    with pytest.raises(TypeError):
        encode(Message(room_id=ROOM))


# --------------------------------------------------------------------------------------------
# tolerant reading


def test_decode_ignores_unknown_extra_fields() -> None:
    value = b'{"room_id":"r1","ticket_id":"t1","queue_no":3,"at":5.0,"shard":"eu-1","flags":{"vip":true}}'

    assert decode(value, type_header(TicketIssued.TYPE)) == TicketIssued(
        room_id="r1", ticket_id="t1", queue_no=3, at=5.0
    )


def test_decode_fills_absent_optional_fields_with_their_defaults() -> None:
    value = b'{"room_id":"r1","ticket_id":"t1","queue_no":3,"at":5.0,"was_admitted":true}'

    assert decode(value, type_header(TicketExpired.TYPE)) == TicketExpired(
        room_id="r1", ticket_id="t1", queue_no=3, at=5.0, was_admitted=True, last_heartbeat_at=None
    )


def test_decode_accepts_null_for_an_optional_field_and_an_integer_for_a_float_field() -> None:
    value = b'{"room_id":"r1","ticket_id":"t1","requested_at":5,"idempotency_key":null}'

    assert decode(value, type_header(JoinRequested.TYPE)) == JoinRequested(room_id="r1", ticket_id="t1", requested_at=5)


def test_decode_finds_the_type_header_among_other_headers() -> None:
    headers = [("traceparent", b"00-abc-def-01"), (HEADER_TYPE, Heartbeat.TYPE.encode())]

    assert decode(b'{"room_id":"r1","ticket_id":"t1","at":1.5}', headers) == Heartbeat(
        room_id="r1", ticket_id="t1", at=1.5
    )


# --------------------------------------------------------------------------------------------
# poison records

ISSUED = TicketIssued.TYPE


def issued_with(**overrides: Any) -> bytes:
    return json.dumps({"room_id": "r1", "ticket_id": "t1", "queue_no": 3, "at": 5.0, **overrides}).encode()


def issued_without(name: str) -> bytes:
    body = json.loads(issued_with())
    del body[name]
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("value", "headers"),
    [
        pytest.param(issued_with(), [], id="no headers"),
        pytest.param(issued_with(), None, id="headers None"),
        pytest.param(issued_with(), [("content-type", b"application/json")], id="missing type header"),
        pytest.param(issued_with(), type_header("waitroom.ticket.issued.v99"), id="unknown type"),
        pytest.param(issued_with(), [(HEADER_TYPE, b"\xff\xfe")], id="type header not UTF-8"),
        pytest.param(None, type_header(ISSUED), id="tombstone value"),
        pytest.param(b"", type_header(ISSUED), id="empty value"),
        pytest.param(b"queue_no=3", type_header(ISSUED), id="not JSON"),
        pytest.param(b"\xff\xfe\x00", type_header(ISSUED), id="not UTF-8"),
        pytest.param(b'{"room_id": "r1"', type_header(ISSUED), id="truncated JSON"),
        pytest.param(b'[{"room_id":"r1"}]', type_header(ISSUED), id="JSON array"),
        pytest.param(b'"r1"', type_header(ISSUED), id="JSON string"),
        pytest.param(b"null", type_header(ISSUED), id="JSON null"),
        pytest.param(issued_without("queue_no"), type_header(ISSUED), id="missing required field"),
        pytest.param(issued_with(queue_no="3"), type_header(ISSUED), id="string for int"),
        pytest.param(issued_with(queue_no=True), type_header(ISSUED), id="bool for int"),
        pytest.param(issued_with(queue_no=3.5), type_header(ISSUED), id="float for int"),
        pytest.param(issued_with(at="5.0"), type_header(ISSUED), id="string for float"),
        pytest.param(issued_with(at=False), type_header(ISSUED), id="bool for float"),
        pytest.param(issued_with(ticket_id=7), type_header(ISSUED), id="int for str"),
        pytest.param(issued_with(ticket_id=["t1"]), type_header(ISSUED), id="list for str"),
        pytest.param(issued_with(ticket_id=None), type_header(ISSUED), id="null for non-optional str"),
        pytest.param(issued_with(queue_no=None), type_header(ISSUED), id="null for non-optional int"),
        pytest.param(
            b'{"room_id":"r1","ticket_id":"t1","at":5.0,"was_admitted":1,"queue_no":3}',
            type_header(TicketLeft.TYPE),
            id="int for bool",
        ),
        pytest.param(
            b'{"room_id":"r1","requested_at":5.0,"count":2,"above_capacity":"yes"}',
            type_header(AdmitRequested.TYPE),
            id="string for bool",
        ),
        pytest.param(
            b'{"room_id":"r1","requested_at":5.0,"capacity":true}',
            type_header(RoomConfigureRequested.TYPE),
            id="bool for optional int",
        ),
        pytest.param(
            b'{"room_id":"r1","ticket_id":"t1","at":' + b"9" * 5000 + b"}",
            type_header(Heartbeat.TYPE),
            id="integer beyond the digit limit",
        ),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, type_header(ISSUED), id="deeply nested arrays"),
        pytest.param(b'{"a":' * 100_000 + b"1" + b"}" * 100_000, type_header(ISSUED), id="deeply nested objects"),
    ],
)
def test_decode_refuses_a_poison_record_with_decode_error(
    value: bytes | None, headers: list[tuple[str, bytes]] | None
) -> None:
    with pytest.raises(DecodeError):
        decode(value, headers)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


def field_names(type_name: str) -> list[str]:
    return [f.name for f in dataclasses.fields(registered_types()[type_name])]


@settings(max_examples=300, deadline=None)
@given(type_name=st.sampled_from(ALL_TYPES), value=st.binary(max_size=200))
def test_decode_of_arbitrary_bytes_either_returns_a_message_or_raises_decode_error(
    type_name: str, value: bytes
) -> None:
    try:
        message = decode(value, type_header(type_name))
    except DecodeError:
        return
    assert message.TYPE == type_name


@settings(max_examples=300, deadline=None)
@given(data=st.data(), type_name=st.sampled_from(ALL_TYPES))
def test_decode_of_an_object_with_arbitrary_field_values_either_returns_a_well_typed_message_or_raises_decode_error(
    data: st.DataObject, type_name: str
) -> None:
    names = field_names(type_name)
    body = data.draw(st.dictionaries(st.sampled_from([*names, "extra"]), json_values, max_size=len(names) + 1))
    value = json.dumps(body).encode()

    try:
        message = decode(value, type_header(type_name))
    except DecodeError:
        return

    assert message.TYPE == type_name
    assert isinstance(message.room_id, str)
    # The message is what an encoder would write again: decode(encode(m)) is m.
    assert decode(encode(message).value, type_header(type_name)) == message


# --------------------------------------------------------------------------------------------
# round trip

_FIELD_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "str": st.text(max_size=20),
    "int": st.integers(-(2**63), 2**63),
    "float": st.floats(allow_nan=False, allow_infinity=False),
    "bool": st.booleans(),
    "list[str]": st.lists(st.text(max_size=20), max_size=5),
    "dict[str,str]": st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=4),
}


def message_strategy(type_name: str) -> st.SearchStrategy[Message]:
    cls = registered_types()[type_name]
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in dataclasses.fields(cls):
        annotation = str(field.type).replace(" ", "")
        base = annotation.removesuffix("|None")
        strategy = _FIELD_STRATEGIES[base]
        fields[field.name] = st.none() | strategy if annotation != base else strategy
    return st.builds(cls, **fields)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), type_name=st.sampled_from(ALL_TYPES))
def test_every_message_survives_an_encode_decode_round_trip(data: st.DataObject, type_name: str) -> None:
    message = data.draw(message_strategy(type_name))
    record = encode(message)

    assert decode(record.value, record.headers) == message


def test_nan_and_infinity_are_refused_on_both_sides_because_they_are_not_json() -> None:
    from waitroom_events.events import TicketIssued

    with pytest.raises(ValueError):
        encode(TicketIssued(room_id="r", ticket_id="t", queue_no=1, at=float("nan")))
    headers = [("waitroom-type", b"waitroom.ticket.issued.v1")]
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        with pytest.raises(DecodeError):
            decode(b'{"room_id":"r","ticket_id":"t","queue_no":1,"at":' + constant + b"}", headers)
