"""Routing decisions, free of I/O: which buyers a lead is offered to, in what order, at
what price, and what follows each delivery result.

A lead's *plan* is fixed when it arrives: every buyer of the campaign is screened
(status, filters, schedule: ``lx_routing.eligibility``) and priced, those whose price
cannot pay the source and the margin are dropped, and the rest are ordered by the
campaign's distribution. A ping-post post's plan is its auction's bids, best first.

The plan is then walked one offer at a time. Caps and the buyer's duplicate window are
judged when a buyer's turn comes (they need the database: ``store``), and a direct
lead's buyer is screened once more then, since a buyer may have been paused or closed
since the lead arrived. Every buyer passed over leaves a ``Rejection``; together they
answer "why was my lead not sold?".
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from lx_routing import order
from lx_routing.eligibility import ScreenMemo, offer_price, screen
from lx_routing.money import covers, margin_for, source_payout
from lx_schemas.events import (
    Bid,
    BuyerState,
    CampaignState,
    DeliveryAttemptedPayload,
    DeliveryResult,
    ExhaustionReason,
    FieldSpec,
    FieldType,
    FieldValue,
    Rejection,
    RejectionCode,
    Status,
)
from lx_schemas.rules import Distribution, Margin, Payout

CONSUMER_TYPES = (FieldType.EMAIL, FieldType.PHONE)


@dataclass(frozen=True)
class PlannedOffer:
    """One buyer's place in a lead's plan: the terms it is offered the lead on."""

    buyer_id: uuid.UUID
    price: Decimal
    payout: Payout
    price_from_response: bool = False
    bid_ref: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "buyer_id": str(self.buyer_id),
            "price": str(self.price),
            "payout": self.payout.model_dump(mode="json"),
            "price_from_response": self.price_from_response,
            "bid_ref": self.bid_ref,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PlannedOffer:
        # Plans written before issue 3 held only the buyer and its fixed price.
        payout = data.get("payout") or {"fixed": "0.00"}
        return cls(
            buyer_id=uuid.UUID(data["buyer_id"]),
            price=Decimal(data["price"]),
            payout=Payout.model_validate(payout),
            price_from_response=bool(data.get("price_from_response", False)),
            bid_ref=data.get("bid_ref"),
        )


# --- what a lead's values are, and whose personal data routing needs -------------------------


def pii_fields(campaign: CampaignState | None, sealed_names: Iterable[str]) -> frozenset[str]:
    """The fields that are personal data: the campaign's, and whatever was sealed."""
    names = set(sealed_names)
    if campaign is not None:
        names.update(f.name for f in campaign.fields if f.pii)
    return frozenset(names)


def consumer_fields(campaign: CampaignState | None) -> tuple[FieldSpec, ...]:
    """The fields that identify a consumer for per-buyer duplicate windows."""
    if campaign is None:
        return ()
    return tuple(f for f in campaign.fields if f.type in CONSUMER_TYPES)


def needs_pii(
    buyers: Iterable[BuyerState], pii: Collection[str], consumer: Sequence[FieldSpec]
) -> bool:
    """Whether some buyer's filter or duplicate window reads a personal field (only then
    is the lead's data key fetched)."""
    consumer_is_pii = any(f.name in pii for f in consumer)
    for b in buyers:
        if b.status != Status.ACTIVE:
            continue
        if b.dedupe_days is not None and consumer_is_pii:
            return True
        if any(f.field in pii for f in b.filters):
            return True
    return False


def consumer_hashes(
    key: bytes,
    buyer_id: uuid.UUID,
    consumer: Sequence[FieldSpec],
    values: Mapping[str, FieldValue],
) -> list[bytes]:
    """Keyed hashes (HMAC-SHA256) of the lead's normalised e-mails and phones, bound to
    the buyer so that one consumer's hashes differ from buyer to buyer; sorted, so two
    leads claim them in one order and never wait on each other in a cycle."""
    hashes = set()
    for spec in consumer:
        value = values.get(spec.name)
        if not isinstance(value, str) or not value.strip():
            continue
        normal = value.strip().lower() if spec.type is FieldType.EMAIL else value.strip()
        message = f"buyer:{buyer_id}:{spec.type.value}:{normal}".encode()
        hashes.add(hmac.new(key, message, hashlib.sha256).digest())
    return sorted(hashes)


# --- screening and planning -----------------------------------------------------------------


def screen_buyer(
    buyer: BuyerState,
    values: Mapping[str, FieldValue],
    now: dt.datetime,
    *,
    pii: Collection[str],
    pii_erased: bool,
    memo: ScreenMemo | None = None,
) -> Rejection | None:
    """``lx_routing.eligibility.screen``, except that a filter on personal data of a lead
    whose data key is shredded fails with that reason rather than "is missing"."""
    if pii_erased and buyer.status == Status.ACTIVE:
        for f in buyer.filters:
            if f.field in pii:
                return Rejection(
                    code=RejectionCode.FILTER,
                    detail=(
                        f"filter '{f.describe()}' of buyer {buyer.name}: the lead's personal"
                        f" data is erased, so {f.field} cannot be checked"
                    )[:1000],
                    buyer_id=buyer.buyer_id,
                    field=f.field,
                )
    return screen(buyer, values, now, pii=pii, memo=memo)


def below_payout(buyer: BuyerState, price: Decimal, payout: Payout, margin: Margin) -> Rejection:
    owed, kept = payout.for_price(price), margin_for(margin, price)
    return Rejection(
        code=RejectionCode.PRICE_BELOW_PAYOUT,
        detail=(
            f"buyer {buyer.name} pays {price}, less than the source's payout {owed}"
            f" plus the margin {kept}"
        ),
        buyer_id=buyer.buyer_id,
    )


def plan_direct(
    buyers: Sequence[BuyerState],
    *,
    values: Mapping[str, FieldValue],
    pii: Collection[str],
    pii_erased: bool,
    now: dt.datetime,
    distribution: Distribution,
    margin: Margin,
    payout: Payout,
    lead_id: uuid.UUID,
    counter: int = 0,
    memo: ScreenMemo | None = None,
) -> tuple[list[PlannedOffer], list[Rejection]]:
    """The buyers a direct lead may be offered to, in order, and why the others may not."""
    rejections: list[Rejection] = []
    candidates: list[order.Candidate] = []
    terms: dict[uuid.UUID, PlannedOffer] = {}
    for b in buyers:
        rejection = screen_buyer(b, values, now, pii=pii, pii_erased=pii_erased, memo=memo)
        if rejection is not None:
            rejections.append(rejection)
            continue
        price = offer_price(b, now, memo)
        if source_payout(payout, margin, price) is None:
            rejections.append(below_payout(b, price, payout, margin))
            continue
        candidates.append(order.Candidate(b.buyer_id, b.priority, price, b.weight))
        terms[b.buyer_id] = PlannedOffer(b.buyer_id, price, payout, b.price_from_response)
    ordered = order.order(candidates, distribution.mode, lead_id=lead_id, counter=counter)
    return [terms[c.buyer_id] for c in ordered], rejections


def plan_post(bids: Sequence[Bid], promised: Decimal) -> list[PlannedOffer]:
    """A post's plan: its auction's bids in their order, each buyer once, the source
    paid the fixed amount it was promised whichever bid sells."""
    seen: set[uuid.UUID] = set()
    plan = []
    for bid in bids:
        if bid.buyer_id in seen:
            continue
        seen.add(bid.buyer_id)
        plan.append(
            PlannedOffer(bid.buyer_id, bid.price, Payout(fixed=promised), False, bid.bid_ref)
        )
    return plan


def unknown_buyer(buyer_id: uuid.UUID) -> Rejection:
    return Rejection(
        code=RejectionCode.BUYER_PAUSED,
        detail=f"buyer {buyer_id} is no longer configured for this campaign",
        buyer_id=buyer_id,
    )


def post_falls_short(
    buyer: BuyerState, offer: PlannedOffer, promised: Decimal, margin: Margin
) -> Rejection | None:
    """A post falls to a bid only while that bid still pays the promise and the margin."""
    if covers(offer.price, promised, margin):
        return None
    return Rejection(
        code=RejectionCode.PRICE_BELOW_PAYOUT,
        detail=(
            f"bid of buyer {buyer.name} ({offer.price}) does not cover the payout of"
            f" {promised} promised to the source plus the margin"
            f" {margin_for(margin, offer.price)}"
        ),
        buyer_id=buyer.buyer_id,
    )


# --- caps and duplicate windows, as reasons -------------------------------------------------


def cap_full(buyer: BuyerState, period: str, usd: bool) -> Rejection:
    if usd:
        return Rejection(
            code=RejectionCode.BUYER_BUDGET,
            detail=f"buyer {buyer.name} has spent its {period} budget",
            buyer_id=buyer.buyer_id,
        )
    return Rejection(
        code=RejectionCode.BUYER_CAP,
        detail=f"buyer {buyer.name} has reached its {period} cap",
        buyer_id=buyer.buyer_id,
    )


def no_funds(buyer: BuyerState) -> Rejection:
    return Rejection(
        code=RejectionCode.NO_FUNDS,
        detail=f"buyer {buyer.name} has no prepaid funds or credit left",
        buyer_id=buyer.buyer_id,
    )


def duplicate_for(buyer: BuyerState) -> Rejection:
    return Rejection(
        code=RejectionCode.BUYER_DUPLICATE,
        detail=(
            f"buyer {buyer.name} was offered this consumer within its"
            f" {buyer.dedupe_days}-day duplicate window"
        ),
        buyer_id=buyer.buyer_id,
    )


def duplicate_unknowable(buyer: BuyerState) -> Rejection:
    return Rejection(
        code=RejectionCode.BUYER_DUPLICATE,
        detail=(
            f"buyer {buyer.name}'s duplicate window cannot be checked: the lead's personal"
            " data is erased"
        ),
        buyer_id=buyer.buyer_id,
    )


# --- delivery results -----------------------------------------------------------------------


def result_code(p: DeliveryAttemptedPayload) -> RejectionCode:
    if p.reason_code is not None:
        return p.reason_code
    return (
        RejectionCode.BUYER_REJECTED
        if p.result is DeliveryResult.REJECTED
        else RejectionCode.BUYER_ERROR
    )


def delivery_rejection(buyer_name: str, p: DeliveryAttemptedPayload) -> Rejection:
    """The reason a final, non-accepted delivery result gives, in the buyer's words."""
    code = result_code(p)
    reason = (p.reason or "").strip()
    tail = f": {reason}" if reason else ""
    status = f" (HTTP {p.http_status})" if p.http_status is not None else ""
    match code:
        case RejectionCode.BUYER_REJECTED:
            detail = f"buyer {buyer_name} rejected the lead{tail}"
        case RejectionCode.OUTCOME_UNKNOWN_UNRESOLVED:
            detail = f"buyer {buyer_name}: outcome still unknown after every try{tail}"
        case RejectionCode.PRICE_BELOW_FLOOR:
            detail = f"buyer {buyer_name} answered a price below its floor{tail}"
        case RejectionCode.CIRCUIT_OPEN:
            detail = f"buyer {buyer_name} is paused by its circuit breaker{tail}"
        case RejectionCode.BUYER_ERROR:
            detail = f"buyer {buyer_name} answered with an error{status}{tail}"
        case _:
            detail = f"buyer {buyer_name}: {code.value}{tail}"
    return Rejection(code=code, detail=detail[:1000], buyer_id=p.buyer_id)


@dataclass(frozen=True)
class Wait:
    """Nothing to decide: a retry still coming, a stale result, or the lead is decided."""


@dataclass(frozen=True)
class Continue:
    """Walk on down the plan: after a sale (``sold``) or a final refusal (``rejection``)."""

    sold: bool
    rejection: Rejection | None = None


@dataclass(frozen=True)
class Finished:
    """The lead has all the sales it may have."""


Step = Wait | Continue | Finished


def after_result(
    *,
    status: str,
    current_attempt: int,
    sales: int,
    max_sales: int,
    result: DeliveryAttemptedPayload,
    buyer_name: str,
) -> Step:
    """What follows a delivery result for offer ``result.attempt`` of a lead."""
    if status != "routing" or result.attempt != current_attempt or not result.final:
        return Wait()
    if result.result is DeliveryResult.OUTCOME_UNKNOWN:
        # Unknown outcomes are never guessed: delivery retries them with the same id and
        # ends with an error (outcome_unknown_unresolved) if it never learns.
        return Wait()
    if result.result is DeliveryResult.ACCEPTED:
        return Finished() if sales + 1 >= max_sales else Continue(sold=True)
    return Continue(sold=False, rejection=delivery_rejection(buyer_name, result))


def releases(result: DeliveryAttemptedPayload) -> bool:
    """Whether this result gives the offer's cap reservation back: final and refused.
    An accepted lead keeps it; an outcome still unknown keeps it until known, and one
    never resolved keeps it for good (the buyer may have taken the lead: counting it
    may leave a cap one short, never one over)."""
    return (
        result.final
        and result.result in (DeliveryResult.REJECTED, DeliveryResult.ERROR)
        and result.reason_code is not RejectionCode.OUTCOME_UNKNOWN_UNRESOLVED
    )


def exhaustion_reason(attempts: int) -> ExhaustionReason:
    return (
        ExhaustionReason.NO_ELIGIBLE_BUYERS
        if attempts == 0
        else ExhaustionReason.ALL_BUYERS_DECLINED
    )


@dataclass
class Walk:
    """Where a lead stands on its plan; ``handlers`` moves it, ``store`` keeps it."""

    plan: list[PlannedOffer]
    position: int
    attempt: int
    sales: int
    max_sales: int
    rejections: list[Rejection] = field(default_factory=list)
