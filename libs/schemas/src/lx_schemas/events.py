"""Version 1 of every event on the platform's topics.

Names are past tense. Money is ``Decimal`` USD with cents, serialised as a string.
``config.changed`` events carry an entity's full state (the topic is compacted).
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import AnyHttpUrl, Field

from lx_schemas.envelope import Event, Frozen

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


class CampaignState(Frozen):
    campaign_id: uuid.UUID
    account_id: uuid.UUID
    name: str
    vertical: str
    status: Status = Status.ACTIVE
    fields: tuple[FieldSpec, ...]


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


class CampaignConfigured(Event):
    TYPE: ClassVar[str] = "CampaignConfigured"
    VERSION: ClassVar[int] = 1
    type: Literal["CampaignConfigured"]
    schema_version: Literal[1]
    payload: CampaignState


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
