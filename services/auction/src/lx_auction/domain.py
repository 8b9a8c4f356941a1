"""The auction's pure rules: who is pinged, how long each may take, which bids count,
their order, what the source is promised, and how much of the time was the auction's own.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from decimal import Decimal

from lx_routing.money import source_payout
from lx_schemas.events import Bid, BuyerState, PingResult, Rejection, RejectionCode
from lx_schemas.rules import Margin, Payout


def ping_screening(buyer: BuyerState, pii: Collection[str]) -> BuyerState:
    """The buyer as a ping can judge it: without its filters on PII fields.

    A ping carries no PII, so such a filter would fail on every ping as "missing"; it
    is judged at the post, where the router sees the whole lead.
    """
    kept = tuple(f for f in buyer.filters if f.field not in pii)
    if len(kept) == len(buyer.filters):
        return buyer
    return buyer.model_copy(update={"filters": kept})


def budget_ms(timeout_ms: int, deadline_ms: float, elapsed_ms: float) -> float:
    """How long a buyer pinged ``elapsed_ms`` into the auction may take to answer: its
    own timeout, cut short by what remains of the auction's deadline."""
    return max(0.0, min(float(timeout_ms), deadline_ms - elapsed_ms))


def counts(latency_ms: float, budget: float) -> bool:
    """Whether a whole answer after ``latency_ms`` is in time; a late one is ignored
    even when it did arrive (a busy event loop may deliver it past the cut-off)."""
    return latency_ms <= budget


@dataclass(frozen=True)
class PingAnswer:
    """What one buyer's ping came to (a ``BuyerPinged``)."""

    buyer_id: uuid.UUID
    result: PingResult
    latency_ms: float
    budget_ms: float
    price: Decimal | None = None
    bid_ref: str | None = None
    http_status: int | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Bidder:
    """What ranking needs to know of a buyer."""

    buyer_id: uuid.UUID
    name: str
    priority: int


@dataclass(frozen=True)
class Result:
    """The auction's result: valid bids best first, what the source is promised, and
    why other buyers are not in ``bids``."""

    bids: tuple[Bid, ...]
    promised_payout: Decimal | None
    rejections: tuple[Rejection, ...]

    @property
    def outcome(self) -> str:
        return "bid" if self.bids else "no_bid"


def close(
    answers: Sequence[PingAnswer],
    bidders: Sequence[Bidder],
    payout: Payout,
    margin: Margin,
    not_pinged: Sequence[Rejection] = (),
) -> Result:
    """Rank the bids by price (ties: the lower priority number first, then buyer id),
    leaving out those whose price does not cover the source's payout plus the margin."""
    by_id = {b.buyer_id: b for b in bidders}
    valid: list[tuple[Bid, Bidder]] = []
    rejections = list(not_pinged)
    for a in answers:
        if a.result is not PingResult.BID or a.price is None:
            continue
        bidder = by_id[a.buyer_id]
        if source_payout(payout, margin, a.price) is None:
            rejections.append(
                Rejection(
                    code=RejectionCode.PRICE_BELOW_PAYOUT,
                    detail=(
                        f"bid {a.price} of buyer {bidder.name} does not cover the source's"
                        " payout and the margin"
                    )[:1000],
                    buyer_id=a.buyer_id,
                )
            )
            continue
        valid.append((Bid(buyer_id=a.buyer_id, price=a.price, bid_ref=a.bid_ref), bidder))
    valid.sort(key=lambda pair: (-pair[0].price, pair[1].priority, str(pair[1].buyer_id)))
    bids = tuple(bid for bid, _ in valid)
    promised = source_payout(payout, margin, bids[0].price) if bids else None
    return Result(bids, promised, tuple(rejections))


def buyer_wait_ms(answers: Sequence[PingAnswer]) -> float:
    """How long the auction had to wait for its buyers: the slowest answer that counted,
    or the whole budget of a buyer that did not answer in time."""
    waits = [a.budget_ms if a.result is PingResult.TIMEOUT else a.latency_ms for a in answers]
    return max(waits, default=0.0)


def overhead_ms(duration_ms: float, answers: Sequence[PingAnswer]) -> float:
    """The auction's own time: its duration beyond what it waited for buyers."""
    return max(0.0, duration_ms - buyer_wait_ms(answers))


def claim_refusal(
    *,
    exists: bool,
    has_bids: bool,
    claimed_by: uuid.UUID | None,
    expires_at: dt.datetime | None,
    lead_id: uuid.UUID,
    now: dt.datetime,
) -> tuple[int, str, str]:
    """Why a post may not claim a ping: ``(http status, code, detail)``.

    ``exists`` is False for another source's ping too: no one learns of pings not theirs.
    """
    if not exists:
        return 404, "ping_not_found", "no such ping"
    if not has_bids:
        return 422, "ping_without_bids", "the ping's auction had no bid: nothing to post to"
    if claimed_by is not None and claimed_by != lead_id:
        return 409, "ping_already_posted", "the ping was posted with another lead"
    if expires_at is None or expires_at <= now:
        return 410, "ping_expired", "the ping's time to post has passed"
    # Unreachable after a failed claim, unless the ping changed in between.
    return 409, "ping_already_posted", "the ping changed while it was claimed; retry"
