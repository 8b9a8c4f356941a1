"""Routing decisions, free of I/O: which buyer is offered a lead next.

A waterfall offers the lead to one buyer at a time, in priority order (lower number
first; a higher price breaks ties), until one accepts or none remain.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from lx_schemas.events import DeliveryResult, ExhaustionReason, Status


@dataclass(frozen=True)
class BuyerView:
    buyer_id: uuid.UUID
    status: Status
    price: Decimal
    priority: int


@dataclass(frozen=True)
class Offer:
    buyer_id: uuid.UUID
    price: Decimal


@dataclass(frozen=True)
class OfferNext:
    attempt: int
    offer: Offer


@dataclass(frozen=True)
class Exhausted:
    reason: ExhaustionReason
    attempts: int


@dataclass(frozen=True)
class Wait:
    """Nothing to do now (a stale or non-final result, or the lead is already decided)."""


Decision = OfferNext | Exhausted | Wait


def plan_waterfall(buyers: Iterable[BuyerView]) -> list[Offer]:
    eligible = [b for b in buyers if b.status == Status.ACTIVE]
    eligible.sort(key=lambda b: (b.priority, -b.price, str(b.buyer_id)))
    return [Offer(b.buyer_id, b.price) for b in eligible]


def first_step(plan: list[Offer]) -> Decision:
    if not plan:
        return Exhausted(ExhaustionReason.NO_ELIGIBLE_BUYERS, attempts=0)
    return OfferNext(1, plan[0])


def after_result(
    plan: list[Offer],
    current_attempt: int,
    decided: bool,
    attempt: int,
    result: DeliveryResult,
    final: bool,
) -> Decision:
    """What follows a delivery result for offer ``attempt`` of a lead."""
    if decided or attempt != current_attempt or not final:
        return Wait()
    if result in (DeliveryResult.ACCEPTED, DeliveryResult.OUTCOME_UNKNOWN):
        # Unknown outcomes are never guessed: delivery retries them with the same id.
        return Wait()
    if current_attempt < len(plan):
        return OfferNext(current_attempt + 1, plan[current_attempt])
    return Exhausted(ExhaustionReason.ALL_BUYERS_DECLINED, attempts=current_attempt)
