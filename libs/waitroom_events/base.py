"""Message base class and the type registry.

Every message is a frozen dataclass with a versioned ``TYPE`` string. A breaking change is a
new class with a new ``TYPE`` (``...v2``); an existing type is never edited incompatibly.
Readers are tolerant: unknown fields are ignored, new optional fields carry defaults.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, TypeVar

_REGISTRY: dict[str, type[Message]] = {}

M = TypeVar("M", bound="type[Message]")


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    TYPE: ClassVar[str] = ""

    room_id: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: field metadata: the codec writes the field only when it is set (not None)
OMIT_IF_NONE = "waitroom.omit_if_none"


def added_later() -> Any:
    """An optional field added to a type after v1: ``None`` by default and, when ``None``, not
    written at all, so a message that does not use it encodes to the same bytes as before the
    field existed (the golden payloads stay byte-identical; old readers ignore it when set)."""
    return dataclasses.field(default=None, metadata={OMIT_IF_NONE: True})


def message_type(type_name: str):  # type: ignore[no-untyped-def]
    """Class decorator: give a message class its wire type and register it for decoding."""

    def register(cls: M) -> M:
        if type_name in _REGISTRY and _REGISTRY[type_name] is not cls:
            raise ValueError(f"message type {type_name!r} registered twice")
        cls.TYPE = type_name
        _REGISTRY[type_name] = cls
        return cls

    return register


def lookup(type_name: str) -> type[Message] | None:
    return _REGISTRY.get(type_name)


def registered_types() -> dict[str, type[Message]]:
    return dict(_REGISTRY)
