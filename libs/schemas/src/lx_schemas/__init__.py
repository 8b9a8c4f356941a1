"""The single source of every event and topic of LeadExchange."""

from lx_schemas.envelope import (
    Event,
    UnknownEventError,
    decode_event,
    derived_id,
    registered_events,
    utcnow,
)
from lx_schemas.events import *  # noqa: F403
from lx_schemas.topics import ALL_TOPICS, TopicSpec, topic_for

__all__ = [
    "ALL_TOPICS",
    "Event",
    "TopicSpec",
    "UnknownEventError",
    "decode_event",
    "derived_id",
    "registered_events",
    "topic_for",
    "utcnow",
]
