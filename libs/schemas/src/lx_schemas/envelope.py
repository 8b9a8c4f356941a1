"""The envelope every event travels in, and the registry that decodes them.

An event class carries its own ``type`` and ``schema_version``; a published
(type, version) pair is never edited. A new version is a new class plus an
upcaster from the previous one, applied on read (see ``register_upcaster``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

JsonDict = dict[str, Any]
Upcaster = Callable[[JsonDict], JsonDict]

# uuid5 namespace for ids derived from other ids, so a retried step yields the same id.
LX_NAMESPACE = uuid.UUID("6f1c2b0e-7d0a-4f6e-9a53-2b6f3f0c9d11")


def derived_id(*parts: object) -> uuid.UUID:
    """A deterministic id for a step (retries of the same step get the same id)."""
    return uuid.uuid5(LX_NAMESPACE, ":".join(str(p) for p in parts))


def utcnow() -> datetime:
    return datetime.now(UTC)


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Event(Frozen):
    """Envelope fields shared by every event; subclasses add ``type``, version and payload."""

    TYPE: ClassVar[str]
    VERSION: ClassVar[int]

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: str
    schema_version: int
    occurred_at: AwareDatetime = Field(default_factory=utcnow)
    account_id: uuid.UUID
    correlation_id: uuid.UUID
    causation_id: uuid.UUID | None = None
    producer: str
    payload: Any

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "TYPE" in cls.__dict__:
            _REGISTRY[(cls.TYPE, cls.VERSION)] = cls
            _LATEST.pop(cls.TYPE, None)

    @classmethod
    def new(cls, **fields: Any) -> Self:
        return cls(type=cls.TYPE, schema_version=cls.VERSION, **fields)

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    def headers(self) -> dict[str, str]:
        """Kafka headers: type and version readable without parsing the body."""
        return {
            "lx-event-type": self.type,
            "lx-schema-version": str(self.schema_version),
            "lx-event-id": str(self.event_id),
        }


_REGISTRY: dict[tuple[str, int], type[Event]] = {}
_LATEST: dict[str, int] = {}  # type -> newest version, filled lazily
_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


class UnknownEventError(ValueError):
    """A message whose type/version this code does not know: a poison message."""


def register_upcaster(type_: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register a function turning the JSON of version N into version N+1."""

    def deco(fn: Upcaster) -> Upcaster:
        _UPCASTERS[(type_, from_version)] = fn
        return fn

    return deco


def latest_version(type_: str) -> int:
    latest = _LATEST.get(type_)
    if latest is None:
        versions = [v for (t, v) in _REGISTRY if t == type_]
        if not versions:
            raise UnknownEventError(f"unknown event type {type_!r}")
        latest = _LATEST[type_] = max(versions)
    return latest


class _Head(BaseModel):
    """Just what picks an event's class."""

    type: str
    schema_version: int


def event_class(type_: str, version: int) -> type[Event]:
    try:
        return _REGISTRY[(type_, version)]
    except KeyError:
        raise UnknownEventError(f"unknown event {type_!r} v{version}") from None


def registered_events() -> list[type[Event]]:
    return sorted(_REGISTRY.values(), key=lambda c: (c.TYPE, c.VERSION))


def decode_event(raw: bytes | str | JsonDict) -> Event:
    """Parse and validate any known event, upcasting old versions to the newest.

    Raises ``UnknownEventError`` or ``pydantic.ValidationError`` for poison input.
    """
    import json

    if not isinstance(raw, dict):
        # The common case, a record of the newest version, is parsed and validated in
        # one pass by pydantic-core (about 1.7x faster than json.loads + model_validate,
        # the largest cost of a projection's replay); anything else takes the long way.
        try:
            head = _Head.model_validate_json(raw)
        except ValidationError:
            head = None
        if head is not None and head.schema_version == latest_version(head.type):
            return event_class(head.type, head.schema_version).model_validate_json(raw)
    data: JsonDict = raw if isinstance(raw, dict) else json.loads(raw)
    if not isinstance(data, dict):
        raise UnknownEventError("event is not a JSON object")
    type_, version = data.get("type"), data.get("schema_version")
    if not isinstance(type_, str) or not isinstance(version, int):
        raise UnknownEventError("event has no type/schema_version")
    target = latest_version(type_)
    while version < target:
        up = _UPCASTERS.get((type_, version))
        if up is None:
            raise UnknownEventError(f"no upcaster for {type_!r} v{version}")
        data = up(data)
        version = data["schema_version"]
    return event_class(type_, version).model_validate(data)


__all__ = [
    "LX_NAMESPACE",
    "Event",
    "Frozen",
    "JsonDict",
    "UnknownEventError",
    "ValidationError",
    "decode_event",
    "derived_id",
    "event_class",
    "register_upcaster",
    "registered_events",
    "utcnow",
]
