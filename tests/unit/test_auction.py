"""The auction's pure rules: ranking, the payout and margin a bid must cover, deadline
accounting, who a ping can screen, and why a post may not claim a ping."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest
from lx_auction import domain
from lx_auction.domain import Bidder, PingAnswer
from lx_schemas.events import BuyerState, PingResult, Rejection, RejectionCode
from lx_schemas.rules import Filter, FilterOp, Margin, Payout

P = PingResult
A, B, C, D = (uuid.UUID(int=n) for n in (0xA, 0xB, 0xC, 0xD))
BIDDERS = [
    Bidder(A, "Alpha", 3),
    Bidder(B, "Beta", 1),
    Bidder(C, "Gamma", 2),
    Bidder(D, "Delta", 1),
]
FIXED_10 = Payout(fixed=Decimal("10.00"))
NO_MARGIN = Margin()
NOW = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)


def bid(buyer: uuid.UUID, price: str, latency: float = 50.0, ref: str | None = None) -> PingAnswer:
    return PingAnswer(buyer, P.BID, latency, 500.0, price=Decimal(price), bid_ref=ref)


def answer(buyer: uuid.UUID, result: PingResult, latency: float, budget: float) -> PingAnswer:
    return PingAnswer(buyer, result, latency, budget)


# --- ranking --------------------------------------------------------------------------------


def test_bids_are_ranked_by_price_highest_first() -> None:
    result = domain.close(
        [bid(A, "20.00"), bid(B, "45.50", ref="b-1"), bid(C, "31.00")],
        BIDDERS,
        FIXED_10,
        NO_MARGIN,
    )
    assert [(b.buyer_id, b.price, b.bid_ref) for b in result.bids] == [
        (B, Decimal("45.50"), "b-1"),
        (C, Decimal("31.00"), None),
        (A, Decimal("20.00"), None),
    ]
    assert result.outcome == "bid"


def test_equal_prices_go_to_the_lower_priority_number_first() -> None:
    result = domain.close(
        [bid(A, "30.00"), bid(C, "30.00"), bid(B, "30.00")], BIDDERS, FIXED_10, NO_MARGIN
    )
    assert [b.buyer_id for b in result.bids] == [B, C, A]


def test_answers_without_a_bid_are_not_ranked() -> None:
    result = domain.close(
        [
            answer(A, P.NO_BID, 40.0, 500.0),
            answer(B, P.TIMEOUT, 500.0, 500.0),
            answer(C, P.ERROR, 3.0, 500.0),
            bid(D, "12.00"),
        ],
        BIDDERS,
        FIXED_10,
        NO_MARGIN,
    )
    assert [b.buyer_id for b in result.bids] == [D]


def test_no_bid_at_all_promises_nothing() -> None:
    result = domain.close([answer(A, P.NO_BID, 40.0, 500.0)], BIDDERS, FIXED_10, NO_MARGIN)
    assert result.bids == ()
    assert result.promised_payout is None
    assert result.outcome == "no_bid"


# --- payout and margin ----------------------------------------------------------------------


def test_the_source_is_promised_its_payout_on_the_best_bid() -> None:
    share = Payout(percent=Decimal("60.00"))
    result = domain.close([bid(A, "25.00"), bid(B, "40.00")], BIDDERS, share, NO_MARGIN)
    assert result.promised_payout == Decimal("24.00")  # 60 % of 40.00, not of 25.00


def test_a_bid_below_payout_plus_margin_is_excluded_with_its_reason() -> None:
    margin = Margin(fixed=Decimal("2.00"), percent=Decimal("10.00"))
    # 13.50: 13.50 - 10.00 = 3.50 >= 2.00 + 1.35 = 3.35: it covers.
    # 13.00: 13.00 - 10.00 = 3.00 < 2.00 + 1.30 = 3.30: excluded.
    result = domain.close(
        [bid(A, "13.00"), bid(B, "13.50"), bid(C, "9.00")], BIDDERS, FIXED_10, margin
    )
    assert [b.buyer_id for b in result.bids] == [B]
    assert result.promised_payout == Decimal("10.00")
    below = [r for r in result.rejections if r.code is RejectionCode.PRICE_BELOW_PAYOUT]
    assert sorted(str(r.buyer_id) for r in below) == sorted([str(A), str(C)])
    assert any("13.00" in r.detail and "Alpha" in r.detail for r in below)


def test_when_every_bid_is_below_payout_nothing_is_promised() -> None:
    result = domain.close([bid(A, "9.99")], BIDDERS, FIXED_10, NO_MARGIN)
    assert result.bids == ()
    assert result.promised_payout is None
    assert [r.code for r in result.rejections] == [RejectionCode.PRICE_BELOW_PAYOUT]


def test_buyers_not_pinged_keep_their_reasons_in_the_result() -> None:
    why = Rejection(code=RejectionCode.FILTER, detail="filter 'state in [TX]'", buyer_id=D)
    result = domain.close([bid(A, "30.00")], BIDDERS, FIXED_10, NO_MARGIN, not_pinged=[why])
    assert result.rejections == (why,)


# --- deadlines ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timeout_ms", "deadline_ms", "elapsed_ms", "budget"),
    [
        (300, 1000, 0.0, 300.0),  # the buyer's own timeout is the tighter
        (800, 1000, 400.0, 600.0),  # cut short by what remains of the auction
        (800, 1000, 1200.0, 0.0),  # the auction is already over
    ],
)
def test_a_buyers_budget_is_its_timeout_within_the_auctions_deadline(
    timeout_ms: int, deadline_ms: float, elapsed_ms: float, budget: float
) -> None:
    assert domain.budget_ms(timeout_ms, deadline_ms, elapsed_ms) == budget


def test_an_answer_after_its_budget_does_not_count_even_if_it_arrived() -> None:
    assert domain.counts(299.9, 300.0)
    assert domain.counts(300.0, 300.0)
    assert not domain.counts(300.1, 300.0)


def test_the_auctions_own_overhead_is_its_time_beyond_the_slowest_counted_answer() -> None:
    answers = [bid(A, "20.00", latency=120.0), answer(B, P.NO_BID, 80.0, 500.0)]
    assert domain.buyer_wait_ms(answers) == 120.0
    assert domain.overhead_ms(127.5, answers) == pytest.approx(7.5)


def test_a_timed_out_buyer_counts_as_its_whole_budget() -> None:
    answers = [bid(A, "20.00", latency=120.0), answer(B, P.TIMEOUT, 301.7, 300.0)]
    assert domain.buyer_wait_ms(answers) == 300.0
    assert domain.overhead_ms(304.0, answers) == pytest.approx(4.0)


def test_overhead_is_never_negative_and_an_auction_without_pings_is_all_overhead() -> None:
    assert domain.overhead_ms(100.0, [bid(A, "20.00", latency=120.0)]) == 0.0
    assert domain.overhead_ms(3.0, []) == 3.0


# --- what a ping can screen -----------------------------------------------------------------


def buyer(**changes: Any) -> BuyerState:
    base: dict[str, Any] = {
        "buyer_id": A,
        "account_id": uuid.UUID(int=1),
        "campaign_id": uuid.UUID(int=2),
        "name": "Alpha",
        "endpoint_url": "https://alpha.example/leads",
        "price": Decimal("30.00"),
        "priority": 1,
    }
    return BuyerState.model_validate(base | changes)


def test_filters_on_pii_fields_wait_for_the_post() -> None:
    on_state = Filter(field="state", op=FilterOp.IN, values=("CA",))
    on_email = Filter(field="email", op=FilterOp.EXISTS)
    b = buyer(filters=(on_state, on_email))
    assert domain.ping_screening(b, {"email", "phone"}).filters == (on_state,)
    assert domain.ping_screening(b, set()) is b


# --- claims ---------------------------------------------------------------------------------


def refusal(**changes: Any) -> tuple[int, str]:
    lead = uuid.UUID(int=99)
    base: dict[str, Any] = {
        "exists": True,
        "has_bids": True,
        "claimed_by": None,
        "expires_at": NOW + dt.timedelta(seconds=60),
        "lead_id": lead,
        "now": NOW,
    }
    status, code, _ = domain.claim_refusal(**(base | changes))
    return status, code


def test_claim_refusals_say_why_in_the_contracts_codes() -> None:
    assert refusal(exists=False) == (404, "ping_not_found")
    assert refusal(has_bids=False) == (422, "ping_without_bids")
    assert refusal(claimed_by=uuid.UUID(int=5)) == (409, "ping_already_posted")
    assert refusal(expires_at=NOW) == (410, "ping_expired")
    # another source's ping is reported as unknown, before anything else about it
    assert refusal(exists=False, has_bids=False, expires_at=NOW) == (404, "ping_not_found")
