"""The router's pure decisions: planning a lead, what follows each delivery result,
reasons in words, keyed consumer hashes, and its settings."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest
from lx_router import domain
from lx_router.settings import RouterSettings
from lx_schemas.events import (
    Bid,
    BuyerState,
    DeliveryAttemptedPayload,
    DeliveryResult,
    ExhaustionReason,
    FieldSpec,
    FieldType,
    RejectionCode,
)
from lx_schemas.rules import Distribution, DistributionMode, Margin, Payout
from pydantic import ValidationError

A, B, C, D = (uuid.UUID(int=i) for i in range(1, 5))
LEAD = uuid.UUID(int=42)
NOW = dt.datetime(2026, 3, 10, 15, 0, tzinfo=dt.UTC)  # a Tuesday
PAYOUT = Payout(fixed=Decimal("10.00"))


def buyer(buyer_id: uuid.UUID, priority: int, price: str, **more: Any) -> BuyerState:
    return BuyerState.model_validate(
        {
            "buyer_id": buyer_id,
            "account_id": uuid.UUID(int=100),
            "campaign_id": uuid.UUID(int=200),
            "name": f"b{buyer_id.int}",
            "endpoint_url": "https://b.example/leads",
            "price": Decimal(price),
            "priority": priority,
            **more,
        }
    )


BUYERS = [
    buyer(A, 2, "20.00"),
    buyer(B, 1, "30.00"),
    buyer(C, 0, "99.00", status="paused"),
    buyer(D, 2, "25.00"),
]


def plan(buyers: list[BuyerState], **kw: Any) -> tuple[list[domain.PlannedOffer], list[Any]]:
    args: dict[str, Any] = {
        "values": {"state": "CA"},
        "pii": frozenset({"email"}),
        "pii_erased": False,
        "now": NOW,
        "distribution": Distribution(),
        "margin": Margin(),
        "payout": PAYOUT,
        "lead_id": LEAD,
    }
    return domain.plan_direct(buyers, **(args | kw))


def test_waterfall_plan_follows_priority_then_price_and_names_the_paused_buyer() -> None:
    offers, rejections = plan(BUYERS)
    assert [o.buyer_id for o in offers] == [B, D, A]
    assert [(r.code, r.buyer_id) for r in rejections] == [(RejectionCode.BUYER_PAUSED, C)]
    assert offers[0] == domain.PlannedOffer(B, Decimal("30.00"), PAYOUT)


def test_highest_price_plan_and_round_robin_rotation() -> None:
    highest = Distribution(mode=DistributionMode.HIGHEST_PRICE)
    assert [o.buyer_id for o in plan(BUYERS, distribution=highest)[0]] == [B, D, A]
    rr = Distribution(mode=DistributionMode.ROUND_ROBIN)
    assert [o.buyer_id for o in plan(BUYERS, distribution=rr, counter=1)[0]] == [D, A, B]


def test_a_buyer_whose_price_cannot_pay_the_source_and_margin_is_left_out() -> None:
    offers, rejections = plan(BUYERS, margin=Margin(fixed=Decimal("16.00")))
    assert [o.buyer_id for o in offers] == [B]  # 30 - 10 >= 16; 25 - 10 < 16
    below = [r for r in rejections if r.code is RejectionCode.PRICE_BELOW_PAYOUT]
    assert {r.buyer_id for r in below} == {A, D}
    assert any(
        r.detail == "buyer b4 pays 25.00, less than the source's payout 10.00 plus the margin 16.00"
        for r in below
    )


def test_price_from_response_buyers_are_offered_at_their_floor() -> None:
    (offer,), _ = plan([buyer(A, 1, "15.00", price_from_response=True)])
    assert offer.price_from_response and offer.price == Decimal("15.00")


def test_a_filter_on_erased_personal_data_says_so() -> None:
    picky = buyer(A, 1, "20.00", filters=[{"field": "email", "op": "exists"}])
    offers, (rejection,) = plan([picky], pii_erased=True)
    assert offers == []
    assert rejection.code is RejectionCode.FILTER and rejection.field == "email"
    assert "personal data is erased" in rejection.detail


def test_a_post_plan_is_its_bids_in_order_each_buyer_once_with_the_promised_payout() -> None:
    bids = (
        Bid(buyer_id=A, price=Decimal("40.00"), bid_ref="x"),
        Bid(buyer_id=B, price=Decimal("30.00")),
        Bid(buyer_id=A, price=Decimal("20.00")),
    )
    offers = domain.plan_post(bids, Decimal("12.00"))
    assert [(o.buyer_id, o.price, o.bid_ref) for o in offers] == [
        (A, Decimal("40.00"), "x"),
        (B, Decimal("30.00"), None),
    ]
    assert all(o.payout == Payout(fixed=Decimal("12.00")) for o in offers)
    short = domain.post_falls_short(
        BUYERS[1], offers[1], Decimal("28.01"), Margin(fixed=Decimal("2.00"))
    )
    assert short is not None and short.code is RejectionCode.PRICE_BELOW_PAYOUT
    fine = domain.post_falls_short(
        BUYERS[1], offers[1], Decimal("28.00"), Margin(fixed=Decimal("2.00"))
    )
    assert fine is None


def test_planned_offers_round_trip_and_old_plans_still_read() -> None:
    offer = domain.PlannedOffer(A, Decimal("30.00"), Payout(percent=Decimal("40")), True, "ref")
    assert domain.PlannedOffer.from_json(offer.to_json()) == offer
    old = domain.PlannedOffer.from_json({"buyer_id": str(A), "price": "30.00"})
    assert old == domain.PlannedOffer(A, Decimal("30.00"), Payout(fixed=Decimal("0.00")))


# --- after a delivery result ------------------------------------------------------------------


def result(
    r: DeliveryResult, *, attempt: int = 1, final: bool = True, **kw: Any
) -> DeliveryAttemptedPayload:
    return DeliveryAttemptedPayload.model_validate(
        {
            "lead_id": LEAD,
            "campaign_id": uuid.UUID(int=200),
            "source_id": uuid.UUID(int=300),
            "buyer_id": A,
            "delivery_id": uuid.UUID(int=400),
            "attempt": attempt,
            "final": final,
            "result": r,
            "latency_ms": 1.0,
            **kw,
        }
    )


def step(
    p: DeliveryAttemptedPayload,
    *,
    status: str = "routing",
    attempt: int = 1,
    sales: int = 0,
    max_sales: int = 1,
) -> domain.Step:
    return domain.after_result(
        status=status,
        current_attempt=attempt,
        sales=sales,
        max_sales=max_sales,
        result=p,
        buyer_name="Acme",
    )


def test_acceptance_finishes_an_exclusive_lead_and_continues_a_multi_sell_one() -> None:
    assert step(result(DeliveryResult.ACCEPTED)) == domain.Finished()
    assert step(result(DeliveryResult.ACCEPTED), max_sales=2) == domain.Continue(sold=True)
    assert step(result(DeliveryResult.ACCEPTED), sales=1, max_sales=2) == domain.Finished()


def test_a_final_refusal_continues_with_the_buyers_reason() -> None:
    got = step(result(DeliveryResult.REJECTED, reason="bad zip", reason_code="buyer_rejected"))
    assert isinstance(got, domain.Continue) and not got.sold and got.rejection is not None
    assert got.rejection.detail == "buyer Acme rejected the lead: bad zip"
    err = step(result(DeliveryResult.ERROR, http_status=503))
    assert isinstance(err, domain.Continue) and err.rejection is not None
    assert err.rejection.code is RejectionCode.BUYER_ERROR
    assert err.rejection.detail == "buyer Acme answered with an error (HTTP 503)"


def test_nothing_moves_on_unknown_outcomes_retries_stale_results_or_decided_leads() -> None:
    wait = domain.Wait()
    assert step(result(DeliveryResult.OUTCOME_UNKNOWN)) == wait
    assert step(result(DeliveryResult.ERROR, final=False)) == wait
    assert step(result(DeliveryResult.REJECTED), attempt=2) == wait
    assert step(result(DeliveryResult.REJECTED), status="sold") == wait
    assert step(result(DeliveryResult.REJECTED), status="exhausted") == wait


def test_only_final_refusals_release_a_reservation() -> None:
    assert domain.releases(result(DeliveryResult.REJECTED))
    assert domain.releases(result(DeliveryResult.ERROR))
    assert not domain.releases(result(DeliveryResult.ERROR, final=False))
    assert not domain.releases(result(DeliveryResult.ACCEPTED))
    assert not domain.releases(result(DeliveryResult.OUTCOME_UNKNOWN))
    # Unknown to the end: the buyer may have the lead, so its slot stays taken.
    unresolved = RejectionCode.OUTCOME_UNKNOWN_UNRESOLVED
    assert not domain.releases(result(DeliveryResult.ERROR, reason_code=unresolved))


@pytest.mark.parametrize(
    ("code", "detail"),
    [
        ("outcome_unknown_unresolved", "buyer Acme: outcome still unknown after every try: t/o"),
        ("price_below_floor", "buyer Acme answered a price below its floor: t/o"),
        ("circuit_open", "buyer Acme is paused by its circuit breaker: t/o"),
    ],
)
def test_delivery_reason_codes_read_as_words(code: str, detail: str) -> None:
    p = result(DeliveryResult.ERROR, reason="t/o", reason_code=code)
    assert domain.delivery_rejection("Acme", p).detail == detail


def test_exhaustion_reason() -> None:
    assert domain.exhaustion_reason(0) is ExhaustionReason.NO_ELIGIBLE_BUYERS
    assert domain.exhaustion_reason(3) is ExhaustionReason.ALL_BUYERS_DECLINED


# --- consumers, personal data -------------------------------------------------------------------

CONSUMER = (
    FieldSpec(name="email", type=FieldType.EMAIL, pii=True),
    FieldSpec(name="phone", type=FieldType.PHONE, pii=True),
)
KEY = b"k" * 32


def test_consumer_hashes_are_keyed_normalised_and_bound_to_the_buyer() -> None:
    one = domain.consumer_hashes(
        KEY, A, CONSUMER, {"email": "Ann@Example.com ", "phone": "+14155550100"}
    )
    same = domain.consumer_hashes(
        KEY, A, CONSUMER, {"email": "ann@example.com", "phone": "+14155550100"}
    )
    assert one == same and len(one) == 2 and one == sorted(one)
    assert domain.consumer_hashes(KEY, B, CONSUMER, {"email": "ann@example.com"})[0] not in one
    assert (
        domain.consumer_hashes(b"j" * 32, A, CONSUMER, {"email": "ann@example.com"})[0] not in one
    )
    assert domain.consumer_hashes(KEY, A, CONSUMER, {"email": None, "phone": ""}) == []


def test_personal_data_is_opened_only_when_a_buyer_needs_it() -> None:
    pii = frozenset({"email", "phone", "dob"})
    plain = [buyer(A, 1, "1.00", filters=[{"field": "state", "op": "in", "values": ["CA"]}])]
    assert not domain.needs_pii(plain, pii, CONSUMER)
    assert domain.needs_pii([buyer(A, 1, "1.00", dedupe_days=30)], pii, CONSUMER)
    assert not domain.needs_pii([buyer(A, 1, "1.00", dedupe_days=30)], pii, ())
    dob = [buyer(A, 1, "1.00", filters=[{"field": "dob", "op": "age_between", "min": 25}])]
    assert domain.needs_pii(dob, pii, CONSUMER)
    paused = [buyer(A, 1, "1.00", status="paused", dedupe_days=30)]
    assert not domain.needs_pii(paused, pii, CONSUMER)


def test_production_refuses_the_development_hash_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LX_PLATFORM_ENVIRONMENT", "production")
    monkeypatch.setenv("LX_PLATFORM_INTERNAL_TOKEN", "a-real-internal-token-0123456789")
    monkeypatch.setenv("LX_PLATFORM_OPERATOR_TOKEN", "a-real-operator-token-0123456789")
    with pytest.raises(ValidationError, match="LX_ROUTER_HASH_KEY"):
        RouterSettings()
    monkeypatch.setenv("LX_ROUTER_HASH_KEY", "x" * 40)
    assert RouterSettings().hash_key.get_secret_value() == "x" * 40
