"""Every topic of the platform: name, partitions, configs, events, key.

Partition counts are fixed up front: changing them later remaps keys and breaks
per-lead ordering.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lx_schemas import events as ev
from lx_schemas.envelope import Event

# Event logs are the record of truth and the source of every projection rebuild.
KEEP_FOREVER = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    key: str
    events: tuple[type[Event], ...]
    config: dict[str, str] = field(default_factory=lambda: dict(KEEP_FOREVER))
    description: str = ""

    def qualified(self, prefix: str = "") -> str:
        return f"{prefix}{self.name}"

    @property
    def dead_letter_name(self) -> str:
        return f"{self.name}.dlq"


CONFIG_CHANGED = TopicSpec(
    "config.changed",
    partitions=3,
    key="entity id",
    events=(
        ev.AccountConfigured,
        ev.CampaignConfiguredV1,
        ev.CampaignConfigured,
        ev.SourceConfigured,
        ev.BuyerConfigured,
    ),
    config={"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"},
    description="Full state of accounts, campaigns, sources and buyers (compacted).",
)
LEAD_RECEIVED = TopicSpec(
    "lead.received",
    partitions=12,
    key="lead id",
    events=(ev.LeadReceived,),
    description="Leads accepted by ingest, PII sealed under a per-lead key.",
)
LEAD_ROUTED = TopicSpec(
    "lead.routed",
    partitions=12,
    key="lead id",
    events=(ev.LeadRouted, ev.LeadRoutingExhausted),
    description="Routing decisions: the buyer offered each lead next, or that none remain.",
)
DELIVERY_OUTCOME = TopicSpec(
    "delivery.outcome",
    partitions=12,
    key="lead id",
    events=(ev.DeliveryAttempted, ev.LeadSold, ev.LeadUnsold),
    description="Each delivery attempt's result and each lead's final outcome.",
)
USAGE_INCREMENTED = TopicSpec(
    "usage.incremented",
    partitions=6,
    key="account id",
    events=(ev.UsageIncremented,),
    description="Metered usage per account, for plans and billing.",
)

ALL_TOPICS: tuple[TopicSpec, ...] = (
    CONFIG_CHANGED,
    LEAD_RECEIVED,
    LEAD_ROUTED,
    DELIVERY_OUTCOME,
    USAGE_INCREMENTED,
)
DEAD_LETTER_PARTITIONS = 1


def topic_for(event: type[Event]) -> TopicSpec:
    for spec in ALL_TOPICS:
        if event in spec.events:
            return spec
    raise LookupError(f"{event.__name__} belongs to no topic")
