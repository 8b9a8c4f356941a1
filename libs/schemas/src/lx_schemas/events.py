"""Every event on the platform's topics, each version a class of its own.

Names are past tense. Money is ``Decimal`` USD with cents, serialised as a string.
``config.changed`` events carry an entity's full state (the topic is compacted).
The newest version of an event has the plain name; a superseded one keeps its class
under a ``V<n>`` suffix, unchanged, with an upcaster to the next version.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import AnyHttpUrl, ConfigDict, Field, field_validator

from lx_schemas.envelope import Event, Frozen, JsonDict, register_upcaster
from lx_schemas.integration import CircuitBreaker, Integration, PingConfig, SealedSecret
from lx_schemas.rules import (
    Cap,
    Distribution,
    Filter,
    Margin,
    Payout,
    PingPost,
    Schedule,
    SourceControls,
    valid_timezone,
)

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
    IP = "ip"
    URL = "url"
    # A TrustedForm / Jornaya style consent certificate: a token or a certificate URL.
    CONSENT = "consent"


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


class CampaignStateV2(Frozen):
    # A campaign as CampaignConfigured v2 published it: frozen, never edit.
    model_config = ConfigDict(title="CampaignState")

    campaign_id: uuid.UUID
    account_id: uuid.UUID
    name: str
    vertical: str
    status: Status = Status.ACTIVE
    fields: tuple[FieldSpec, ...]
    dedupe: DedupeRule | None = None


class CampaignState(Frozen):
    """A campaign's full state (``CampaignConfigured`` v3): its fields, duplicate check,
    how leads are distributed among its buyers, the platform's margin and auctions."""

    campaign_id: uuid.UUID
    account_id: uuid.UUID
    name: str
    vertical: str
    status: Status = Status.ACTIVE
    fields: tuple[FieldSpec, ...]
    dedupe: DedupeRule | None = None
    distribution: Distribution = Distribution()
    margin: Margin = Margin()
    ping_post: PingPost = PingPost()


class SourceStateV1(Frozen):
    # A source as SourceConfigured v1 published it: frozen, never edit.
    model_config = ConfigDict(title="SourceState")

    source_id: uuid.UUID
    account_id: uuid.UUID
    campaign_id: uuid.UUID
    name: str
    status: Status = Status.ACTIVE
    api_key_prefix: str
    # SHA-256 of the whole key; the key itself is shown once and never stored.
    api_key_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    payout: Usd


class SourceState(Frozen):
    """A source's full state (``SourceConfigured`` v2): v1 with a payout that may be a
    share of the price, and its controls (caps, rate limits, IP allow-list)."""

    source_id: uuid.UUID
    account_id: uuid.UUID
    campaign_id: uuid.UUID
    name: str
    status: Status = Status.ACTIVE
    api_key_prefix: str
    # SHA-256 of the whole key; the key itself is shown once and never stored.
    api_key_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    payout: Payout
    controls: SourceControls = SourceControls()


class AcceptanceRule(Frozen):
    """How a buyer's answer is read: a 2xx whose JSON ``field`` is one of ``accepted``."""

    field: str = "status"
    accepted: tuple[str, ...] = ("accepted",)
    reason_field: str = "reason"


class BuyerStateV1(Frozen):
    # A buyer as BuyerConfigured v1 published it: frozen, never edit.
    model_config = ConfigDict(title="BuyerState")

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


MAX_BUYER_DEDUPE_DAYS = 365


class BuyerState(Frozen):
    """A buyer's full state (``BuyerConfigured`` v2).

    Eligibility: ``status``, ``filters`` (all must hold), ``schedule`` and ``caps`` in
    the buyer's ``timezone``, ``dedupe_days`` (never the same consumer twice within it).
    Order: ``priority`` and ``weight`` per the campaign's distribution. Price: ``price``,
    a schedule window's price, or the buyer's answer (``price_from_response``, where
    ``price`` is then the least it is expected to pay). Delivery: ``integration``,
    ``timeout_ms``, the ``breaker``, requests signed with ``signing_secret``.
    """

    buyer_id: uuid.UUID
    account_id: uuid.UUID
    campaign_id: uuid.UUID
    name: str
    status: Status = Status.ACTIVE
    endpoint_url: AnyHttpUrl
    price: Usd
    price_from_response: bool = False
    priority: Annotated[int, Field(ge=0)]
    weight: Annotated[int, Field(ge=1, le=10_000)] = 100
    timeout_ms: Annotated[int, Field(ge=50, le=60_000)] = 5_000
    timezone: Annotated[str, Field(max_length=64)] = "UTC"
    filters: Annotated[tuple[Filter, ...], Field(max_length=100)] = ()
    schedule: Schedule | None = None
    caps: Annotated[tuple[Cap, ...], Field(max_length=10)] = ()
    dedupe_days: Annotated[int, Field(ge=1, le=MAX_BUYER_DEDUPE_DAYS)] | None = None
    return_window_days: Annotated[int, Field(ge=0, le=365)] = 0
    integration: Integration = Integration()
    ping: PingConfig | None = None
    breaker: CircuitBreaker = CircuitBreaker()
    # HMAC-SHA256 key of the X-LeadExchange-Signature header (Standard Webhooks style).
    signing_secret: SealedSecret | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        return valid_timezone(name)


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


class CampaignConfiguredV2(Event):
    # Superseded by v3; its records are upcast on read (decode_event).
    model_config = ConfigDict(title="CampaignConfigured")

    TYPE: ClassVar[str] = "CampaignConfigured"
    VERSION: ClassVar[int] = 2
    type: Literal["CampaignConfigured"]
    schema_version: Literal[2]
    payload: CampaignStateV2


class CampaignConfigured(Event):
    TYPE: ClassVar[str] = "CampaignConfigured"
    VERSION: ClassVar[int] = 3
    type: Literal["CampaignConfigured"]
    schema_version: Literal[3]
    payload: CampaignState


@register_upcaster("CampaignConfigured", 1)
def _campaign_configured_v1_to_v2(data: JsonDict) -> JsonDict:
    # v1 campaigns had no duplicate check.
    return {**data, "schema_version": 2, "payload": {**data["payload"], "dedupe": None}}


@register_upcaster("CampaignConfigured", 2)
def _campaign_configured_v2_to_v3(data: JsonDict) -> JsonDict:
    # v2 campaigns were exclusive waterfalls, without margin or auctions.
    payload = {
        **data["payload"],
        "distribution": Distribution().model_dump(mode="json"),
        "margin": Margin().model_dump(mode="json"),
        "ping_post": PingPost().model_dump(mode="json"),
    }
    return {**data, "schema_version": 3, "payload": payload}


class SourceConfiguredV1(Event):
    # Superseded by v2; its records are upcast on read (decode_event).
    model_config = ConfigDict(title="SourceConfigured")

    TYPE: ClassVar[str] = "SourceConfigured"
    VERSION: ClassVar[int] = 1
    type: Literal["SourceConfigured"]
    schema_version: Literal[1]
    payload: SourceStateV1


class SourceConfigured(Event):
    TYPE: ClassVar[str] = "SourceConfigured"
    VERSION: ClassVar[int] = 2
    type: Literal["SourceConfigured"]
    schema_version: Literal[2]
    payload: SourceState


@register_upcaster("SourceConfigured", 1)
def _source_configured_v1_to_v2(data: JsonDict) -> JsonDict:
    # v1 payouts were a fixed amount; v1 sources had no controls.
    payload = {
        **data["payload"],
        "payout": {"fixed": data["payload"]["payout"], "percent": None},
        "controls": SourceControls().model_dump(mode="json"),
    }
    return {**data, "schema_version": 2, "payload": payload}


class BuyerConfiguredV1(Event):
    # Superseded by v2; its records are upcast on read (decode_event).
    model_config = ConfigDict(title="BuyerConfigured")

    TYPE: ClassVar[str] = "BuyerConfigured"
    VERSION: ClassVar[int] = 1
    type: Literal["BuyerConfigured"]
    schema_version: Literal[1]
    payload: BuyerStateV1


class BuyerConfigured(Event):
    TYPE: ClassVar[str] = "BuyerConfigured"
    VERSION: ClassVar[int] = 2
    type: Literal["BuyerConfigured"]
    schema_version: Literal[2]
    payload: BuyerState


@register_upcaster("BuyerConfigured", 1)
def _buyer_configured_v1_to_v2(data: JsonDict) -> JsonDict:
    # v1's acceptance rule becomes the same response rule of an integration: a 2xx whose
    # JSON field is one of the accepted words is accepted, its reason read from a field.
    payload = dict(data["payload"])
    rule = payload.pop("acceptance", None) or AcceptanceRule().model_dump(mode="json")
    field = json.dumps(rule["field"])
    reason = json.dumps(rule["reason_field"])
    integration = {
        "rules": [
            {
                "probe": {"kind": "json_path", "path": f"$[{field}]"},
                "equals": list(rule["accepted"]),
                "outcome": "accepted",
            }
        ],
        "captures": {"reason": {"kind": "json_path", "path": f"$[{reason}]"}},
    }
    payload["integration"] = Integration.model_validate(integration).model_dump(mode="json")
    upcast = BuyerState.model_validate(payload).model_dump(mode="json")
    return {**data, "schema_version": 2, "payload": upcast}


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


class Bid(Frozen):
    buyer_id: uuid.UUID
    price: Usd
    bid_ref: Annotated[str, Field(max_length=256)] | None = None


class LeadReceivedPayloadV1(Frozen):
    model_config = ConfigDict(title="LeadReceivedPayload")

    lead_id: uuid.UUID
    campaign_id: uuid.UUID
    source_id: uuid.UUID
    lead: LeadContent


class LeadReceivedV1(Event):
    # Superseded by v2; its records are upcast on read (decode_event).
    model_config = ConfigDict(title="LeadReceived")

    TYPE: ClassVar[str] = "LeadReceived"
    VERSION: ClassVar[int] = 1
    type: Literal["LeadReceived"]
    schema_version: Literal[1]
    payload: LeadReceivedPayloadV1


class LeadReceivedPayload(Frozen):
    lead_id: uuid.UUID
    campaign_id: uuid.UUID
    source_id: uuid.UUID
    lead: LeadContent
    # The post of an auction: the lead is offered to that auction's bids, best first,
    # and falls to the next bid only while it still pays the source what was promised.
    ping_id: uuid.UUID | None = None
    bids: Annotated[tuple[Bid, ...], Field(max_length=200)] = ()
    promised_payout: Usd | None = None


class LeadReceived(Event):
    TYPE: ClassVar[str] = "LeadReceived"
    VERSION: ClassVar[int] = 2
    type: Literal["LeadReceived"]
    schema_version: Literal[2]
    payload: LeadReceivedPayload


@register_upcaster("LeadReceived", 1)
def _lead_received_v1_to_v2(data: JsonDict) -> JsonDict:
    payload = {**data["payload"], "ping_id": None, "bids": [], "promised_payout": None}
    return {**data, "schema_version": 2, "payload": payload}


class RejectionCode(StrEnum):
    """Why a lead was refused, or why a buyer did not get it: one vocabulary for the
    source's answer, the lead trace and the reports."""

    # at ingest, answered to the source
    VALIDATION = "validation"
    DUPLICATE = "duplicate"
    SOURCE_PAUSED = "source_paused"
    SOURCE_CAP = "source_cap"
    RATE_LIMITED = "rate_limited"
    IP_NOT_ALLOWED = "ip_not_allowed"
    PING_EXPIRED = "ping_expired"
    ACCOUNT_OVER_PLAN = "account_over_plan"
    # per buyer, at routing
    BUYER_PAUSED = "buyer_paused"
    FILTER = "filter"
    SCHEDULE_CLOSED = "schedule_closed"
    BUYER_CAP = "buyer_cap"
    BUYER_BUDGET = "buyer_budget"
    BUYER_DUPLICATE = "buyer_duplicate"
    PRICE_BELOW_PAYOUT = "price_below_payout"
    CIRCUIT_OPEN = "circuit_open"
    NO_FUNDS = "no_funds"
    ALREADY_SOLD_TO_BUYER = "already_sold_to_buyer"
    # per buyer, at delivery
    BUYER_REJECTED = "buyer_rejected"
    BUYER_ERROR = "buyer_error"
    OUTCOME_UNKNOWN_UNRESOLVED = "outcome_unknown_unresolved"
    PRICE_BELOW_FLOOR = "price_below_floor"


class Rejection(Frozen):
    """One reason in words and a code: who (a buyer, or none for the lead as a whole)."""

    code: RejectionCode
    detail: Annotated[str, Field(max_length=1000)]
    buyer_id: uuid.UUID | None = None
    field: str | None = None


class LeadRejectedPayload(Frozen):
    """A post ingest refused after knowing its source: no PII, only why."""

    lead_id: uuid.UUID
    campaign_id: uuid.UUID
    source_id: uuid.UUID
    http_status: int
    rejections: Annotated[tuple[Rejection, ...], Field(min_length=1, max_length=200)]
    ping_id: uuid.UUID | None = None


class LeadRejected(Event):
    TYPE: ClassVar[str] = "LeadRejected"
    VERSION: ClassVar[int] = 1
    type: Literal["LeadRejected"]
    schema_version: Literal[1]
    payload: LeadRejectedPayload


# --- lead.pinged ----------------------------------------------------------------------------


class PingReceivedPayload(Frozen):
    ping_id: uuid.UUID
    campaign_id: uuid.UUID
    source_id: uuid.UUID
    fields: dict[str, FieldValue]  # the campaign's non-PII fields only


class PingReceived(Event):
    TYPE: ClassVar[str] = "PingReceived"
    VERSION: ClassVar[int] = 1
    type: Literal["PingReceived"]
    schema_version: Literal[1]
    payload: PingReceivedPayload


class PingResult(StrEnum):
    BID = "bid"
    NO_BID = "no_bid"  # answered, declined or bid nothing usable
    TIMEOUT = "timeout"  # no whole answer in the buyer's time: its bid, if any, is ignored
    ERROR = "error"


class BuyerPingedPayload(Frozen):
    ping_id: uuid.UUID
    campaign_id: uuid.UUID
    source_id: uuid.UUID
    buyer_id: uuid.UUID
    result: PingResult
    price: Usd | None = None
    bid_ref: Annotated[str, Field(max_length=256)] | None = None
    http_status: int | None = None
    latency_ms: Annotated[float, Field(ge=0)]
    reason: Annotated[str, Field(max_length=1000)] | None = None


class BuyerPinged(Event):
    TYPE: ClassVar[str] = "BuyerPinged"
    VERSION: ClassVar[int] = 1
    type: Literal["BuyerPinged"]
    schema_version: Literal[1]
    payload: BuyerPingedPayload


class AuctionClosedPayload(Frozen):
    """The auction's result: bids best first, and what the source was promised."""

    ping_id: uuid.UUID
    campaign_id: uuid.UUID
    source_id: uuid.UUID
    bids: tuple[Bid, ...]
    # What the source earns if the post is sold (None: no bid, nothing promised).
    payout: Usd | None
    expires_at: dt.datetime
    duration_ms: Annotated[float, Field(ge=0)]
    rejections: tuple[Rejection, ...] = ()  # buyers not pinged, and why


class AuctionClosed(Event):
    TYPE: ClassVar[str] = "AuctionClosed"
    VERSION: ClassVar[int] = 1
    type: Literal["AuctionClosed"]
    schema_version: Literal[1]
    payload: AuctionClosedPayload


# --- lead.routed ----------------------------------------------------------------------------


class LeadRef(Frozen):
    lead_id: uuid.UUID
    campaign_id: uuid.UUID
    source_id: uuid.UUID


class LeadRoutedPayloadV1(LeadRef):
    model_config = ConfigDict(title="LeadRoutedPayload")

    buyer_id: uuid.UUID
    attempt: Annotated[int, Field(ge=1)]
    # Stable across retries of this offer: buyers dedupe on it.
    delivery_id: uuid.UUID
    price: Usd
    lead: LeadContent


class LeadRoutedV1(Event):
    # Superseded by v2; its records are upcast on read (decode_event).
    model_config = ConfigDict(title="LeadRouted")

    TYPE: ClassVar[str] = "LeadRouted"
    VERSION: ClassVar[int] = 1
    type: Literal["LeadRouted"]
    schema_version: Literal[1]
    payload: LeadRoutedPayloadV1


class LeadRoutedPayload(LeadRef):
    buyer_id: uuid.UUID
    attempt: Annotated[int, Field(ge=1)]
    # Stable across retries of this offer: buyers dedupe on it.
    delivery_id: uuid.UUID
    # The price if fixed; with ``price_from_response`` the least the answer may name.
    price: Usd
    price_from_response: bool = False
    # What the source earns if this offer is sold (taken on the price actually paid).
    payout: Payout
    # Which sale of the lead this offer is for (multi-sell campaigns: up to max_sales).
    sale: Annotated[int, Field(ge=1)] = 1
    ping_id: uuid.UUID | None = None
    bid_ref: Annotated[str, Field(max_length=256)] | None = None
    lead: LeadContent


class LeadRouted(Event):
    TYPE: ClassVar[str] = "LeadRouted"
    VERSION: ClassVar[int] = 2
    type: Literal["LeadRouted"]
    schema_version: Literal[2]
    payload: LeadRoutedPayload


@register_upcaster("LeadRouted", 1)
def _lead_routed_v1_to_v2(data: JsonDict) -> JsonDict:
    # v1 offers were fixed-price first sales; their payout was not recorded (zero).
    payload = {
        **data["payload"],
        "price_from_response": False,
        "payout": {"fixed": "0.00", "percent": None},
        "sale": 1,
        "ping_id": None,
        "bid_ref": None,
    }
    return {**data, "schema_version": 2, "payload": payload}


class ExhaustionReason(StrEnum):
    NO_ELIGIBLE_BUYERS = "no_eligible_buyers"
    ALL_BUYERS_DECLINED = "all_buyers_declined"


class LeadRoutingExhaustedPayloadV1(LeadRef):
    model_config = ConfigDict(title="LeadRoutingExhaustedPayload")

    reason: ExhaustionReason
    attempts: Annotated[int, Field(ge=0)]


class LeadRoutingExhaustedV1(Event):
    # Superseded by v2; its records are upcast on read (decode_event).
    model_config = ConfigDict(title="LeadRoutingExhausted")

    TYPE: ClassVar[str] = "LeadRoutingExhausted"
    VERSION: ClassVar[int] = 1
    type: Literal["LeadRoutingExhausted"]
    schema_version: Literal[1]
    payload: LeadRoutingExhaustedPayloadV1


class LeadRoutingExhaustedPayload(LeadRef):
    """No buyer (or no further buyer) takes the lead; ``rejections`` say why, buyer by
    buyer. With ``sales`` above zero the lead was sold before (multi-sell)."""

    reason: ExhaustionReason
    attempts: Annotated[int, Field(ge=0)]
    sales: Annotated[int, Field(ge=0)] = 0
    rejections: Annotated[tuple[Rejection, ...], Field(max_length=1000)] = ()


class LeadRoutingExhausted(Event):
    TYPE: ClassVar[str] = "LeadRoutingExhausted"
    VERSION: ClassVar[int] = 2
    type: Literal["LeadRoutingExhausted"]
    schema_version: Literal[2]
    payload: LeadRoutingExhaustedPayload


@register_upcaster("LeadRoutingExhausted", 1)
def _lead_routing_exhausted_v1_to_v2(data: JsonDict) -> JsonDict:
    payload = {**data["payload"], "sales": 0, "rejections": []}
    return {**data, "schema_version": 2, "payload": payload}


# --- delivery.outcome -----------------------------------------------------------------------


class DeliveryResult(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    ERROR = "error"
    # Sent, but no answer (timeout or crash after sending): retried with the same delivery id.
    OUTCOME_UNKNOWN = "outcome_unknown"


class DeliveryAttemptedPayloadV1(LeadRef):
    model_config = ConfigDict(title="DeliveryAttemptedPayload")

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


class DeliveryAttemptedV1(Event):
    # Superseded by v2; its records are upcast on read (decode_event).
    model_config = ConfigDict(title="DeliveryAttempted")

    TYPE: ClassVar[str] = "DeliveryAttempted"
    VERSION: ClassVar[int] = 1
    type: Literal["DeliveryAttempted"]
    schema_version: Literal[1]
    payload: DeliveryAttemptedPayloadV1


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
    # Why, as a code (buyer_rejected, buyer_error, price_below_floor...); None if accepted.
    reason_code: RejectionCode | None = None
    price: Usd | None = None
    buyer_lead_id: Annotated[str, Field(max_length=256)] | None = None


class DeliveryAttempted(Event):
    TYPE: ClassVar[str] = "DeliveryAttempted"
    VERSION: ClassVar[int] = 2
    type: Literal["DeliveryAttempted"]
    schema_version: Literal[2]
    payload: DeliveryAttemptedPayload


def _v1_reason_code(payload: JsonDict) -> str | None:
    result, reason = payload.get("result"), payload.get("reason") or ""
    if result == DeliveryResult.ACCEPTED:
        return None
    if result == DeliveryResult.REJECTED:
        return RejectionCode.BUYER_REJECTED.value
    if reason.startswith("outcome_unknown_unresolved"):
        return RejectionCode.OUTCOME_UNKNOWN_UNRESOLVED.value
    return RejectionCode.BUYER_ERROR.value


@register_upcaster("DeliveryAttempted", 1)
def _delivery_attempted_v1_to_v2(data: JsonDict) -> JsonDict:
    payload = {
        **data["payload"],
        "reason_code": _v1_reason_code(data["payload"]),
        "buyer_lead_id": None,
    }
    return {**data, "schema_version": 2, "payload": payload}


class LeadSoldPayloadV1(LeadRef):
    model_config = ConfigDict(title="LeadSoldPayload")

    buyer_id: uuid.UUID
    delivery_id: uuid.UUID
    price: Usd


class LeadSoldV1(Event):
    # Superseded by v2; its records are upcast on read (decode_event).
    model_config = ConfigDict(title="LeadSold")

    TYPE: ClassVar[str] = "LeadSold"
    VERSION: ClassVar[int] = 1
    type: Literal["LeadSold"]
    schema_version: Literal[1]
    payload: LeadSoldPayloadV1


class LeadSoldPayload(LeadRef):
    """One sale of the lead: the price the buyer pays and what the source earns."""

    buyer_id: uuid.UUID
    delivery_id: uuid.UUID
    price: Usd
    # None on sales recorded before payouts were (v1).
    payout: Usd | None
    sale: Annotated[int, Field(ge=1)] = 1
    buyer_lead_id: Annotated[str, Field(max_length=256)] | None = None


class LeadSold(Event):
    TYPE: ClassVar[str] = "LeadSold"
    VERSION: ClassVar[int] = 2
    type: Literal["LeadSold"]
    schema_version: Literal[2]
    payload: LeadSoldPayload


@register_upcaster("LeadSold", 1)
def _lead_sold_v1_to_v2(data: JsonDict) -> JsonDict:
    payload = {**data["payload"], "payout": None, "sale": 1, "buyer_lead_id": None}
    return {**data, "schema_version": 2, "payload": payload}


class LeadUnsoldPayloadV1(LeadRef):
    model_config = ConfigDict(title="LeadUnsoldPayload")

    reason: ExhaustionReason


class LeadUnsoldV1(Event):
    # Superseded by v2; its records are upcast on read (decode_event).
    model_config = ConfigDict(title="LeadUnsold")

    TYPE: ClassVar[str] = "LeadUnsold"
    VERSION: ClassVar[int] = 1
    type: Literal["LeadUnsold"]
    schema_version: Literal[1]
    payload: LeadUnsoldPayloadV1


class LeadUnsoldPayload(LeadRef):
    reason: ExhaustionReason
    rejections: Annotated[tuple[Rejection, ...], Field(max_length=1000)] = ()


class LeadUnsold(Event):
    TYPE: ClassVar[str] = "LeadUnsold"
    VERSION: ClassVar[int] = 2
    type: Literal["LeadUnsold"]
    schema_version: Literal[2]
    payload: LeadUnsoldPayload


@register_upcaster("LeadUnsold", 1)
def _lead_unsold_v1_to_v2(data: JsonDict) -> JsonDict:
    return {**data, "schema_version": 2, "payload": {**data["payload"], "rejections": []}}


class ReturnReason(StrEnum):
    INVALID_CONTACT = "invalid_contact"
    DUPLICATE = "duplicate"
    NOT_INTERESTED = "not_interested"
    WRONG_AREA = "wrong_area"
    FRAUD = "fraud"
    OTHER = "other"


class LeadReturnedPayload(LeadRef):
    """A sale sent back: the buyer is credited ``price``, the source's ``payout`` is
    clawed back (``None`` where the sale recorded no payout)."""

    buyer_id: uuid.UUID
    delivery_id: uuid.UUID
    return_id: uuid.UUID
    price: Usd
    payout: Usd | None
    reason_code: ReturnReason
    reason: Annotated[str, Field(max_length=1000)] | None = None
    returned_by: Annotated[str, Field(max_length=200)]  # "buyer:<id>" or "operator:<name>"


class LeadReturned(Event):
    TYPE: ClassVar[str] = "LeadReturned"
    VERSION: ClassVar[int] = 1
    type: Literal["LeadReturned"]
    schema_version: Literal[1]
    payload: LeadReturnedPayload


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


# --- billing.operations ---------------------------------------------------------------------
# Operators' billing decisions, validated by billing's command API and published through its
# outbox; billing's projection builds plans, subscriptions, payments and invoices from them.

SignedUsd = Annotated[Decimal, Field(max_digits=14, decimal_places=2)]
PositiveUsd = Annotated[Decimal, Field(max_digits=14, decimal_places=2, gt=0)]
Text200 = Annotated[str, Field(min_length=1, max_length=200)]


def _first_of_month(day: dt.date | None) -> dt.date | None:
    if day is not None and day.day != 1:
        raise ValueError("billing periods are UTC calendar months: give the 1st of a month")
    return day


class PlanDefinedPayload(Frozen):
    """A plan, immutable once defined (a new price is a new plan). ``hard_cap``: leads
    received per period beyond which ingest refuses the account's posts (None: no cap)."""

    plan_id: uuid.UUID
    name: Text200
    monthly_fee: Usd
    included_leads: Annotated[int, Field(ge=0)]
    overage_price: Usd
    hard_cap: Annotated[int, Field(ge=0)] | None = None


class PlanDefined(Event):
    """Plans are platform-wide: the envelope's ``account_id`` is the nil UUID."""

    TYPE: ClassVar[str] = "PlanDefined"
    VERSION: ClassVar[int] = 1
    type: Literal["PlanDefined"]
    schema_version: Literal[1]
    payload: PlanDefinedPayload


class SubscriptionStartedPayload(Frozen):
    """The account on ``plan_id`` from ``starts_on`` until ``ends_on`` (exclusive; None:
    open), both the 1st of a month."""

    subscription_id: uuid.UUID
    plan_id: uuid.UUID
    starts_on: dt.date
    ends_on: dt.date | None = None

    _months = field_validator("starts_on", "ends_on")(_first_of_month)


class SubscriptionStarted(Event):
    TYPE: ClassVar[str] = "SubscriptionStarted"
    VERSION: ClassVar[int] = 1
    type: Literal["SubscriptionStarted"]
    schema_version: Literal[1]
    payload: SubscriptionStartedPayload


class SubscriptionChangedPayload(Frozen):
    """The subscription moves to ``plan_id`` from the period starting ``effective_from``."""

    subscription_id: uuid.UUID
    plan_id: uuid.UUID
    effective_from: dt.date

    _months = field_validator("effective_from")(_first_of_month)


class SubscriptionChanged(Event):
    TYPE: ClassVar[str] = "SubscriptionChanged"
    VERSION: ClassVar[int] = 1
    type: Literal["SubscriptionChanged"]
    schema_version: Literal[1]
    payload: SubscriptionChangedPayload


class SubscriptionEndedPayload(Frozen):
    subscription_id: uuid.UUID
    ends_on: dt.date  # exclusive: the first period no longer covered

    _months = field_validator("ends_on")(_first_of_month)


class SubscriptionEnded(Event):
    TYPE: ClassVar[str] = "SubscriptionEnded"
    VERSION: ClassVar[int] = 1
    type: Literal["SubscriptionEnded"]
    schema_version: Literal[1]
    payload: SubscriptionEndedPayload


class PaymentMethod(StrEnum):
    CARD = "card"
    ACH = "ach"
    WIRE = "wire"
    CHECK = "check"
    CASH = "cash"
    OTHER = "other"


class PaymentRecordedPayload(Frozen):
    """A payment the account made to the platform, recorded by an operator: its own
    reference, and the payment provider's (e.g. a card processor's charge id) as data."""

    payment_id: uuid.UUID
    amount: PositiveUsd
    method: PaymentMethod
    reference: Text200
    provider: Annotated[str, Field(max_length=100)] | None = None
    provider_ref: Annotated[str, Field(max_length=200)] | None = None


class PaymentRecorded(Event):
    TYPE: ClassVar[str] = "PaymentRecorded"
    VERSION: ClassVar[int] = 1
    type: Literal["PaymentRecorded"]
    schema_version: Literal[1]
    payload: PaymentRecordedPayload


class FundsDepositedPayload(Frozen):
    """Money a buyer paid the account in advance: its sales draw on it (prepaid buyer)."""

    deposit_id: uuid.UUID
    buyer_id: uuid.UUID
    amount: PositiveUsd
    method: PaymentMethod
    reference: Text200
    provider: Annotated[str, Field(max_length=100)] | None = None
    provider_ref: Annotated[str, Field(max_length=200)] | None = None


class FundsDeposited(Event):
    TYPE: ClassVar[str] = "FundsDeposited"
    VERSION: ClassVar[int] = 1
    type: Literal["FundsDeposited"]
    schema_version: Literal[1]
    payload: FundsDepositedPayload


class BuyerCreditLimitSetPayload(Frozen):
    """A prepaid buyer may run its balance down to ``-credit_limit``."""

    buyer_id: uuid.UUID
    credit_limit: Usd


class BuyerCreditLimitSet(Event):
    TYPE: ClassVar[str] = "BuyerCreditLimitSet"
    VERSION: ClassVar[int] = 1
    type: Literal["BuyerCreditLimitSet"]
    schema_version: Literal[1]
    payload: BuyerCreditLimitSetPayload


class InvoiceLineKind(StrEnum):
    PLAN_FEE = "plan_fee"
    OVERAGE = "overage"
    LEAD_CHARGES = "lead_charges"  # what the account's buyers were charged, per buyer
    RETURNS = "returns"  # credited back to buyers, per buyer
    PAYMENT = "payment"


class InvoiceLine(Frozen):
    kind: InvoiceLineKind
    description: Annotated[str, Field(max_length=500)]
    quantity: Annotated[int, Field(ge=0)]
    unit_price: Usd | None = None
    amount: SignedUsd
    buyer_id: uuid.UUID | None = None
    reference: Annotated[str, Field(max_length=200)] | None = None


class InvoiceIssuedPayload(Frozen):
    """An account's invoice for one period, its lines computed from the ledger when it
    was issued (carried here, so a replay books exactly what was issued)."""

    invoice_id: uuid.UUID
    period_start: dt.date
    period_end: dt.date
    plan_id: uuid.UUID | None = None
    lines: Annotated[tuple[InvoiceLine, ...], Field(max_length=10_000)]
    amount_due: SignedUsd

    _months = field_validator("period_start", "period_end")(_first_of_month)


class InvoiceIssued(Event):
    TYPE: ClassVar[str] = "InvoiceIssued"
    VERSION: ClassVar[int] = 1
    type: Literal["InvoiceIssued"]
    schema_version: Literal[1]
    payload: InvoiceIssuedPayload


class InvoicePaidPayload(Frozen):
    invoice_id: uuid.UUID
    payment_id: uuid.UUID | None = None


class InvoicePaid(Event):
    TYPE: ClassVar[str] = "InvoicePaid"
    VERSION: ClassVar[int] = 1
    type: Literal["InvoicePaid"]
    schema_version: Literal[1]
    payload: InvoicePaidPayload


class InvoiceVoidedPayload(Frozen):
    invoice_id: uuid.UUID
    reason: Annotated[str, Field(min_length=1, max_length=1000)]


class InvoiceVoided(Event):
    TYPE: ClassVar[str] = "InvoiceVoided"
    VERSION: ClassVar[int] = 1
    type: Literal["InvoiceVoided"]
    schema_version: Literal[1]
    payload: InvoiceVoidedPayload


# --- billing.limits -------------------------------------------------------------------------
# What billing derives for the services that enforce it: ingest (and router).


class AccountLimitChangedPayload(Frozen):
    """The account reached (or no longer is at) its plan's hard cap for the period that
    ends ``period_end``; after ``period_end`` it no longer holds, whatever follows."""

    over_plan: bool
    reason: Annotated[str, Field(max_length=1000)]
    plan_id: uuid.UUID | None = None
    plan_name: Annotated[str, Field(max_length=200)] | None = None
    hard_cap: Annotated[int, Field(ge=0)] | None = None
    period_start: dt.date
    period_end: dt.datetime


class AccountLimitChanged(Event):
    TYPE: ClassVar[str] = "AccountLimitChanged"
    VERSION: ClassVar[int] = 1
    type: Literal["AccountLimitChanged"]
    schema_version: Literal[1]
    payload: AccountLimitChangedPayload


class BuyerFundsChangedPayload(Frozen):
    """A prepaid buyer ran out of funds (balance at or below ``-credit_limit``) or was
    topped up. ``balance``: deposits less sales plus returns; negative when in credit."""

    buyer_id: uuid.UUID
    has_funds: bool
    balance: SignedUsd
    credit_limit: Usd


class BuyerFundsChanged(Event):
    TYPE: ClassVar[str] = "BuyerFundsChanged"
    VERSION: ClassVar[int] = 1
    type: Literal["BuyerFundsChanged"]
    schema_version: Literal[1]
    payload: BuyerFundsChangedPayload


ConfigEvent = AccountConfigured | CampaignConfigured | SourceConfigured | BuyerConfigured
LeadEvent = (
    LeadReceived
    | LeadRejected
    | LeadRouted
    | LeadRoutingExhausted
    | DeliveryAttempted
    | LeadSold
    | LeadUnsold
    | LeadReturned
)
PingEvent = PingReceived | BuyerPinged | AuctionClosed
FINAL_OUTCOMES = (LeadSold, LeadUnsold)


# --- export.configured ----------------------------------------------------------------------


class ReportGranularity(StrEnum):
    HOUR = "hour"
    DAY = "day"  # UTC days
    ALL = "all"  # the whole period as one row


class ReportDimension(StrEnum):
    CAMPAIGN = "campaign"
    SOURCE = "source"
    BUYER = "buyer"


class ExportQuery(Frozen):
    """An analytics report over the ``window_hours`` whole UTC hours before each run."""

    granularity: ReportGranularity = ReportGranularity.HOUR
    group_by: Annotated[tuple[ReportDimension, ...], Field(max_length=3)] = ()
    campaign_id: uuid.UUID | None = None
    source_id: uuid.UUID | None = None
    buyer_id: uuid.UUID | None = None
    window_hours: Annotated[int, Field(ge=1, le=24 * 366)] = 24

    @field_validator("group_by")
    @classmethod
    def _distinct_dimensions(
        cls, group_by: tuple[ReportDimension, ...]
    ) -> tuple[ReportDimension, ...]:
        if len(set(group_by)) != len(group_by):
            raise ValueError("each dimension may be named once")
        return group_by


class ExportState(Frozen):
    """A scheduled CSV export's full state (``ExportConfigured``): run every
    ``every_hours``; each file is deleted ``retention_days`` after its run."""

    export_id: uuid.UUID
    name: Annotated[str, Field(min_length=1, max_length=200)]
    status: Status = Status.ACTIVE
    format: Literal["csv"] = "csv"
    query: ExportQuery
    every_hours: Annotated[int, Field(ge=1, le=24 * 31)]
    retention_days: Annotated[int, Field(ge=1, le=3650)]
    configured_by: Annotated[str, Field(min_length=1, max_length=200)]


class ExportConfigured(Event):
    """A command, validated by analytics and published. The envelope's ``account_id``
    is the account whose campaigns the export covers when a tenant configured it, and
    the nil UUID for a platform-wide export configured by staff."""

    TYPE: ClassVar[str] = "ExportConfigured"
    VERSION: ClassVar[int] = 1
    type: Literal["ExportConfigured"]
    schema_version: Literal[1]
    payload: ExportState


# --- audit.recorded -------------------------------------------------------------------------
# Actions taken in other services that admin's hash-chained audit log keeps (admin's own
# are written there directly, in the transaction of the change).

AuditValue = str | int | bool | None


class AuditRecordedPayload(Frozen):
    """Who did what to which entity. Never PII: a data subject is named by the id of
    their privacy request, never by an e-mail address or a phone number."""

    # "user:<id>", "api_token:<id>", "operator_token:operator" (as admin's Principal.actor)
    actor: Annotated[str, Field(min_length=1, max_length=200)]
    action: Annotated[str, Field(pattern=r"^[a-z_]+(\.[a-z_]+)+$", max_length=100)]
    entity_kind: Annotated[str, Field(pattern=r"^[a-z_]+$", max_length=50)]
    entity_id: uuid.UUID | None = None
    # Ids, counts and settings only (kept as the audit row's ``after``).
    detail: Annotated[
        dict[Annotated[str, Field(max_length=64)], AuditValue], Field(max_length=50)
    ] = {}


class AuditRecorded(Event):
    TYPE: ClassVar[str] = "AuditRecorded"
    VERSION: ClassVar[int] = 1
    type: Literal["AuditRecorded"]
    schema_version: Literal[1]
    payload: AuditRecordedPayload


# --- privacy.erasures -----------------------------------------------------------------------


MAX_ERASED_LEADS = 1000  # per event: a subject with more is told in several


class LeadsErasedPayload(Frozen):
    """Leads whose personal data ingest destroyed (their data keys shredded): a data
    subject's leads (and refused posts) erased at their request, or leads whose
    campaign's retention ran out. A service holding anything else that links these
    leads to a person (a keyed hash of their e-mail or phone) deletes it."""

    # The privacy request; for a retention run, an id derived from the run and campaign.
    request_id: uuid.UUID
    lead_ids: Annotated[tuple[uuid.UUID, ...], Field(min_length=1, max_length=MAX_ERASED_LEADS)]


class LeadsErased(Event):
    TYPE: ClassVar[str] = "LeadsErased"
    VERSION: ClassVar[int] = 1
    type: Literal["LeadsErased"]
    schema_version: Literal[1]
    payload: LeadsErasedPayload
