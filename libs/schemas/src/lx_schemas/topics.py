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
        ev.CampaignConfiguredV2,
        ev.CampaignConfigured,
        ev.SourceConfiguredV1,
        ev.SourceConfigured,
        ev.BuyerConfiguredV1,
        ev.BuyerConfigured,
    ),
    config={"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"},
    description="Full state of accounts, campaigns, sources and buyers (compacted).",
)
LEAD_RECEIVED = TopicSpec(
    "lead.received",
    partitions=12,
    key="lead id",
    events=(ev.LeadReceivedV1, ev.LeadReceived, ev.LeadRejected),
    description="Leads accepted by ingest (PII sealed under a per-lead key), and the posts"
    " it refused with their reasons.",
)
LEAD_PINGED = TopicSpec(
    "lead.pinged",
    partitions=12,
    key="ping id",
    events=(ev.PingReceived, ev.BuyerPinged, ev.AuctionClosed),
    description="Ping-post auctions: each ping, each buyer's bid (or none), the result.",
)
LEAD_ROUTED = TopicSpec(
    "lead.routed",
    partitions=12,
    key="lead id",
    events=(ev.LeadRoutedV1, ev.LeadRouted, ev.LeadRoutingExhaustedV1, ev.LeadRoutingExhausted),
    description="Routing decisions: the buyer offered each lead next, or that none remain.",
)
DELIVERY_OUTCOME = TopicSpec(
    "delivery.outcome",
    partitions=12,
    key="lead id",
    events=(
        ev.DeliveryAttemptedV1,
        ev.DeliveryAttempted,
        ev.LeadSoldV1,
        ev.LeadSold,
        ev.LeadUnsoldV1,
        ev.LeadUnsold,
        ev.LeadReturned,
    ),
    description="Each delivery attempt's result, each lead's outcome (sales, unsold) and returns.",
)
USAGE_INCREMENTED = TopicSpec(
    "usage.incremented",
    partitions=6,
    key="account id",
    events=(ev.UsageIncremented,),
    description="Metered usage per account, for plans and billing.",
)

EXPORT_CONFIGURED = TopicSpec(
    "export.configured",
    partitions=1,
    key="export id",
    events=(ev.ExportConfigured,),
    description="Scheduled analytics exports as operators configure them (full state).",
)
BILLING_OPERATIONS = TopicSpec(
    "billing.operations",
    partitions=3,
    key="account id (plans: plan id)",
    events=(
        ev.PlanDefined,
        ev.SubscriptionStarted,
        ev.SubscriptionChanged,
        ev.SubscriptionEnded,
        ev.PaymentRecorded,
        ev.FundsDeposited,
        ev.BuyerCreditLimitSet,
        ev.InvoiceIssued,
        ev.InvoicePaid,
        ev.InvoiceVoided,
    ),
    description="Operators' billing decisions (plans, subscriptions, payments, prepaid"
    " deposits, invoices), validated by billing's API; billing projects them.",
)
BILLING_LIMITS = TopicSpec(
    "billing.limits",
    partitions=3,
    key="account id (AccountLimitChanged) or buyer id (BuyerFundsChanged)",
    events=(ev.AccountLimitChanged, ev.BuyerFundsChanged),
    # Only each account's and buyer's latest state matters to the services enforcing it.
    config={"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"},
    description="Derived by billing: accounts over their plan's cap (ingest refuses their"
    " posts) and prepaid buyers out of funds (router skips them).",
)
AUDIT_RECORDED = TopicSpec(
    "audit.recorded",
    partitions=3,
    key="account id",
    events=(ev.AuditRecorded,),
    description="Actions of other services for admin's hash-chained audit log (privacy"
    " requests and retention changes, with their actor); no PII.",
)
PRIVACY_ERASURES = TopicSpec(
    "privacy.erasures",
    partitions=3,
    key="account id",
    events=(ev.LeadsErased,),
    description="Leads erased at their subject's request (ids only): services delete what"
    " else links them to a person (router's per-buyer duplicate index).",
)

ALL_TOPICS: tuple[TopicSpec, ...] = (
    CONFIG_CHANGED,
    LEAD_RECEIVED,
    LEAD_PINGED,
    LEAD_ROUTED,
    DELIVERY_OUTCOME,
    USAGE_INCREMENTED,
    BILLING_OPERATIONS,
    BILLING_LIMITS,
    EXPORT_CONFIGURED,
    AUDIT_RECORDED,
    PRIVACY_ERASURES,
)
DEAD_LETTER_PARTITIONS = 1


def topic_for(event: type[Event]) -> TopicSpec:
    for spec in ALL_TOPICS:
        if event in spec.events:
            return spec
    raise LookupError(f"{event.__name__} belongs to no topic")
