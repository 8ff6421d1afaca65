"""The one codec: a message <-> (key, JSON value, headers).

The body is the message's fields as JSON; its type travels in the ``waitroom-type`` header, next
to trace context and any transport metadata, so a reader can route or dead-letter a record without
parsing it. Decoding is tolerant: unknown fields are ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

# The modules below register their types on import; the codec must know every type.
from waitroom_events import commands, events, heartbeats, reaper, stats  # noqa: F401
from waitroom_events.base import OMIT_IF_NONE, Message, lookup

HEADER_TYPE = "waitroom-type"
HEADER_CONTENT_TYPE = "content-type"
CONTENT_TYPE = b"application/json"

Headers = Sequence[tuple[str, bytes]]


class DecodeError(ValueError):
    """A record that cannot become a message: route it to the dead-letter topic."""


@dataclass(frozen=True, slots=True)
class EncodedRecord:
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def encode(message: Message, extra_headers: Iterable[tuple[str, bytes]] = ()) -> EncodedRecord:
    if not message.TYPE:
        raise TypeError(f"{type(message).__name__} has no registered message type")
    value = _dumps(message)
    headers = [(HEADER_TYPE, message.TYPE.encode()), (HEADER_CONTENT_TYPE, CONTENT_TYPE)]
    headers.extend(extra_headers)
    return EncodedRecord(key=message.room_id.encode(), value=value, headers=headers)


def _dumps(message: Message) -> bytes:
    """The message's fields as compact JSON with sorted keys (orjson: a dataclass straight to bytes,
    several times faster than ``json.dumps`` of ``asdict``, which was a tenth of the sequencer's time)."""
    for rule in _rules(type(message)):
        if rule.base == "float":
            number = getattr(message, rule.name)
            # NaN and Infinity are not JSON (orjson would write null); other readers would reject them.
            if number is not None and not math.isfinite(number):
                raise ValueError(f"{message.TYPE}: {rule.name} {number!r} is not a JSON number")
    fields = {name: getattr(message, name) for name in _sorted_names(type(message))}
    for name in _omitted_if_none(type(message)):
        if fields[name] is None:
            del fields[name]
    try:
        return orjson.dumps(fields)
    except TypeError:
        # an integer beyond 64 bits: the standard library writes any integer
        return json.dumps(message.to_dict(), separators=(",", ":"), sort_keys=True, allow_nan=False).encode()


_SORTED: dict[type[Message], tuple[str, ...]] = {}


def _sorted_names(cls: type[Message]) -> tuple[str, ...]:
    names = _SORTED.get(cls)
    if names is None:
        names = _SORTED[cls] = tuple(sorted(f.name for f in dataclasses.fields(cls)))
    return names


_OMIT: dict[type[Message], tuple[str, ...]] = {}


def _omitted_if_none(cls: type[Message]) -> tuple[str, ...]:
    """The fields of ``cls`` declared with ``added_later()`` (base.py): not written while None."""
    names = _OMIT.get(cls)
    if names is None:
        names = _OMIT[cls] = tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get(OMIT_IF_NONE))
    return names


def header(headers: Headers | None, name: str) -> bytes | None:
    for key, value in headers or ():
        if key == name:
            return value
    return None


def decode(value: bytes | None, headers: Headers | None) -> Message:
    raw_type = header(headers, HEADER_TYPE)
    if raw_type is None:
        raise DecodeError("missing waitroom-type header")
    type_name = raw_type.decode("utf-8", "replace")
    cls = lookup(type_name)
    if cls is None:
        raise DecodeError(f"unknown message type {type_name!r}")
    if value is None:
        raise DecodeError("empty record value")
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        # bad JSON, bad UTF-8, NaN/Infinity, nesting deeper than 1024: all poison records
        raise DecodeError(f"value is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DecodeError("value is not a JSON object")
    return from_dict(cls, data)


@dataclass(frozen=True, slots=True)
class _FieldRule:
    name: str
    base: str
    optional: bool
    allowed: tuple[type, ...] | None


_SIMPLE: dict[str, tuple[type, ...]] = {"str": (str,), "float": (int, float), "int": (int,), "bool": (bool,)}


_RULES: dict[type[Message], tuple[_FieldRule, ...]] = {}


def _rules(cls: type[Message]) -> tuple[_FieldRule, ...]:
    """The JSON type rule of every field of ``cls``, worked out once per class (decoding is hot on replay)."""
    rules = _RULES.get(cls)
    if rules is None:
        found = []
        for f in dataclasses.fields(cls):
            annotation = str(f.type).replace(" ", "")
            base = annotation.removesuffix("|None")
            found.append(_FieldRule(f.name, base, annotation.endswith("|None"), _SIMPLE.get(base)))
        rules = _RULES[cls] = tuple(found)
    return rules


def from_dict(cls: type[Message], data: dict[str, Any]) -> Message:
    rules = _rules(cls)
    kwargs = {rule.name: data[rule.name] for rule in rules if rule.name in data}
    try:
        message = cls(**kwargs)
    except TypeError as exc:
        raise DecodeError(f"{cls.TYPE}: {exc}") from exc
    _check_types(message, rules)
    return message


def _check_types(message: Message, rules: tuple[_FieldRule, ...]) -> None:
    """Reject values of the wrong JSON type, so a poison record fails here, not deep in a handler."""
    for rule in rules:
        value = getattr(message, rule.name)
        if value is None:
            if rule.optional:
                continue
            raise DecodeError(f"{message.TYPE}: field {rule.name!r} must not be null")
        allowed = rule.allowed
        if rule.base == "list[str]":
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise DecodeError(f"{message.TYPE}: field {rule.name!r} must be a list of strings")
            continue
        if rule.base == "dict[str,str]":
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise DecodeError(f"{message.TYPE}: field {rule.name!r} must be an object of strings")
            continue
        if allowed is None:
            continue
        if isinstance(value, bool) and bool not in allowed:
            raise DecodeError(f"{message.TYPE}: field {rule.name!r} must be {rule.base}, got bool")
        if not isinstance(value, allowed):
            raise DecodeError(f"{message.TYPE}: field {rule.name!r} must be {rule.base}, got {type(value).__name__}")
