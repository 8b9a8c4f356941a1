"""Every event on the platform's topics, each version a class of its own.

Names are past tense. Money is ``Decimal`` USD with cents, serialised as a string.
``config.changed`` events carry an entity's full state (the topic is compacted).
The newest version of an event has the plain name; a superseded one keeps its class
under a ``V<n>`` suffix, unchanged, with an upcaster to the next version.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import AnyHttpUrl, ConfigDict, Field, field_validator

from lx_schemas.envelope import Event, Frozen, JsonDict, register_upcaster

Usd = Annotated[Decimal, Field(max_digits=14, decimal_places=2, ge=0)]
FieldValue = str | int | float | bool | None


class Status(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"


# --- config.changed -------------------------------------------------------------------------


class FieldType(StrEnum):
    TEXT = "text"
    EMAIL = "email"
    PHONE = "phone"
    INTEGER = "integer"
    DECIMAL = "decimal"
    BOOLEAN = "boolean"
    DATE = "date"
    ENUM = "enum"
    US_STATE = "us_state"
    ZIP = "zip"


class FieldSpec(Frozen):
    """One field of a campaign's schema. ``pii`` fields never travel in clear."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    type: FieldType
    required: bool = False
    pii: bool = False
    options: tuple[str, ...] = ()
    max_length: Annotated[int, Field(ge=1, le=10_000)] = 255


class AccountState(Frozen):
    account_id: uuid.UUID
    name: str
    status: Status = Status.ACTIVE


class CampaignStateV1(Frozen):
    # A campaign as CampaignConfigured v1 published it: frozen, never edit. No docstring
    # and the old title, so that v1's JSON Schema reads as before (only its $defs key
    # now says CampaignStateV1).
    model_config = ConfigDict(title="CampaignState")

    campaign_id: uuid.UUID
    account_id: uuid.UUID
    name: str
    vertical: str
    status: Status = Status.ACTIVE
    fields: tuple[FieldSpec, ...]


class DedupeScope(StrEnum):
    """Where a duplicate is looked for. A buyer's own window is routing's business."""

    CAMPAIGN = "campaign"
    ACCOUNT = "account"  # every campaign of the account whose rule also says "account"


MAX_DEDUPE_WINDOW_DAYS = 365
# Field types that identify a consumer. A rule matches on ANY of its fields, so a field
# most leads share (a state, a ZIP, a yes/no) would make nearly every lead a duplicate.
DEDUPE_MATCHABLE_TYPES = frozenset({FieldType.EMAIL, FieldType.PHONE, FieldType.TEXT})


class DedupeRule(Frozen):
    """A lead is a duplicate when ANY of ``fields`` (normalised) matches a lead accepted
    in ``scope`` within the last ``window_days``."""

    fields: Annotated[tuple[str, ...], Field(min_length=1, max_length=8)]
    window_days: Annotated[int, Field(ge=1, le=MAX_DEDUPE_WINDOW_DAYS)]
    scope: DedupeScope = DedupeScope.CAMPAIGN

    @field_validator("fields")
    @classmethod
    def _distinct(cls, fields: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(fields)) != len(fields):
            raise ValueError("each field may be named once")
        return fields


class CampaignState(Frozen):
    """A campaign's full state (``CampaignConfigured`` v2): v1 plus its duplicate check."""

    campaign_id: uuid.UUID
    account_id: uuid.UUID
    name: str
    vertical: str
    status: Status = Status.ACTIVE
    fields: tuple[FieldSpec, ...]
    dedupe: DedupeRule | None = None


class SourceState(Frozen):
    source_id: uuid.UUID
    account_id: uuid.UUID
    campaign_id: uuid.UUID
    name: str
    status: Status = Status.ACTIVE
    api_key_prefix: str
    # SHA-256 of the whole key; the key itself is shown once and never stored.
    api_key_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    payout: Usd


class AcceptanceRule(Frozen):
    """How a buyer's answer is read: a 2xx whose JSON ``field`` is one of ``accepted``."""

    field: str = "status"
    accepted: tuple[str, ...] = ("accepted",)
    reason_field: str = "reason"


class BuyerState(Frozen):
    buyer_id: uuid.UUID
    account_id: uuid.UUID
    campaign_id: uuid.UUID
    name: str
    status: Status = Status.ACTIVE
    endpoint_url: AnyHttpUrl
    price: Usd
    priority: Annotated[int, Field(ge=0)]
    timeout_ms: Annotated[int, Field(ge=50, le=60_000)] = 5_000
    acceptance: AcceptanceRule = AcceptanceRule()


class AccountConfigured(Event):
    TYPE: ClassVar[str] = "AccountConfigured"
    VERSION: ClassVar[int] = 1
    type: Literal["AccountConfigured"]
    schema_version: Literal[1]
    payload: AccountState


class CampaignConfiguredV1(Event):
    # Superseded by v2; its records are upcast on read (decode_event).
    model_config = ConfigDict(title="CampaignConfigured")

    TYPE: ClassVar[str] = "CampaignConfigured"
    VERSION: ClassVar[int] = 1
    type: Literal["CampaignConfigured"]
    schema_version: Literal[1]
    payload: CampaignStateV1


class CampaignConfigured(Event):
    TYPE: ClassVar[str] = "CampaignConfigured"
    VERSION: ClassVar[int] = 2
    type: Literal["CampaignConfigured"]
    schema_version: Literal[2]
    payload: CampaignState


@register_upcaster("CampaignConfigured", 1)
def _campaign_configured_v1_to_v2(data: JsonDict) -> JsonDict:
    # v1 campaigns had no duplicate check.
    return {**data, "schema_version": 2, "payload": {**data["payload"], "dedupe": None}}


class SourceConfigured(Event):
    TYPE: ClassVar[str] = "SourceConfigured"
    VERSION: ClassVar[int] = 1
    type: Literal["SourceConfigured"]
    schema_version: Literal[1]
    payload: SourceState


class BuyerConfigured(Event):
    TYPE: ClassVar[str] = "BuyerConfigured"
    VERSION: ClassVar[int] = 1
    type: Literal["BuyerConfigured"]
    schema_version: Literal[1]
    payload: BuyerState


# --- lead.received --------------------------------------------------------------------------


class SealedFields(Frozen):
    """PII fields as one AES-256-GCM ciphertext under the lead's own data key.

    The key lives only in ingest's key vault; destroying it shreds the PII everywhere
    this ciphertext was copied (Kafka, stores, exports).
    """

    key_id: uuid.UUID
    alg: Literal["AES-256-GCM"] = "AES-256-GCM"
    nonce: str
    ciphertext: str
    field_names: tuple[str, ...]


class LeadContent(Frozen):
    fields: dict[str, FieldValue]
    pii: SealedFields | None = None


class LeadReceivedPayload(Frozen):
    lead_id: uuid.UUID
    campaign_id: uuid.UUID
    source_id: uuid.UUID
    lead: LeadContent


class LeadReceived(Event):
    TYPE: ClassVar[str] = "LeadReceived"
    VERSION: ClassVar[int] = 1
    type: Literal["LeadReceived"]
    schema_version: Literal[1]
    payload: LeadReceivedPayload


# --- lead.routed ----------------------------------------------------------------------------


class LeadRef(Frozen):
    lead_id: uuid.UUID
    campaign_id: uuid.UUID
    source_id: uuid.UUID


class LeadRoutedPayload(LeadRef):
    buyer_id: uuid.UUID
    attempt: Annotated[int, Field(ge=1)]
    # Stable across retries of this offer: buyers dedupe on it.
    delivery_id: uuid.UUID
    price: Usd
    lead: LeadContent


class LeadRouted(Event):
    TYPE: ClassVar[str] = "LeadRouted"
    VERSION: ClassVar[int] = 1
    type: Literal["LeadRouted"]
    schema_version: Literal[1]
    payload: LeadRoutedPayload


class ExhaustionReason(StrEnum):
    NO_ELIGIBLE_BUYERS = "no_eligible_buyers"
    ALL_BUYERS_DECLINED = "all_buyers_declined"


class LeadRoutingExhaustedPayload(LeadRef):
    reason: ExhaustionReason
    attempts: Annotated[int, Field(ge=0)]


class LeadRoutingExhausted(Event):
    TYPE: ClassVar[str] = "LeadRoutingExhausted"
    VERSION: ClassVar[int] = 1
    type: Literal["LeadRoutingExhausted"]
    schema_version: Literal[1]
    payload: LeadRoutingExhaustedPayload


# --- delivery.outcome -----------------------------------------------------------------------


class DeliveryResult(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    ERROR = "error"
    # Sent, but no answer (timeout or crash after sending): retried with the same delivery id.
    OUTCOME_UNKNOWN = "outcome_unknown"


class DeliveryAttemptedPayload(LeadRef):
    buyer_id: uuid.UUID
    delivery_id: uuid.UUID
    attempt: Annotated[int, Field(ge=1)]
    try_number: Annotated[int, Field(ge=1)] = 1
    # False while the delivery service will try this offer again (same delivery id).
    final: bool = True
    result: DeliveryResult
    http_status: int | None = None
    latency_ms: Annotated[float, Field(ge=0)]
    reason: str | None = None
    price: Usd | None = None


class DeliveryAttempted(Event):
    TYPE: ClassVar[str] = "DeliveryAttempted"
    VERSION: ClassVar[int] = 1
    type: Literal["DeliveryAttempted"]
    schema_version: Literal[1]
    payload: DeliveryAttemptedPayload


class LeadSoldPayload(LeadRef):
    buyer_id: uuid.UUID
    delivery_id: uuid.UUID
    price: Usd


class LeadSold(Event):
    TYPE: ClassVar[str] = "LeadSold"
    VERSION: ClassVar[int] = 1
    type: Literal["LeadSold"]
    schema_version: Literal[1]
    payload: LeadSoldPayload


class LeadUnsoldPayload(LeadRef):
    reason: ExhaustionReason


class LeadUnsold(Event):
    TYPE: ClassVar[str] = "LeadUnsold"
    VERSION: ClassVar[int] = 1
    type: Literal["LeadUnsold"]
    schema_version: Literal[1]
    payload: LeadUnsoldPayload


# --- usage.incremented ----------------------------------------------------------------------


class UsageMetric(StrEnum):
    LEADS_RECEIVED = "leads_received"
    LEADS_SOLD = "leads_sold"
    DELIVERY_ATTEMPTS = "delivery_attempts"


class UsageIncrementedPayload(Frozen):
    metric: UsageMetric
    quantity: Annotated[int, Field(ge=1)] = 1
    # The lead (or other subject) this usage was for: lets billing dedupe and trace it.
    subject_id: uuid.UUID


class UsageIncremented(Event):
    TYPE: ClassVar[str] = "UsageIncremented"
    VERSION: ClassVar[int] = 1
    type: Literal["UsageIncremented"]
    schema_version: Literal[1]
    payload: UsageIncrementedPayload


ConfigEvent = AccountConfigured | CampaignConfigured | SourceConfigured | BuyerConfigured
LeadEvent = (
    LeadReceived | LeadRouted | LeadRoutingExhausted | DeliveryAttempted | LeadSold | LeadUnsold
)
FINAL_OUTCOMES = (LeadSold, LeadUnsold)
