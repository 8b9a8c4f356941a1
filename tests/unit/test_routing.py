import uuid
from decimal import Decimal

from lx_router.domain import (
    BuyerView,
    Exhausted,
    OfferNext,
    Wait,
    after_result,
    first_step,
    plan_waterfall,
)
from lx_schemas.events import DeliveryResult, ExhaustionReason, Status

A, B, C, D = (uuid.UUID(int=i) for i in range(1, 5))
BUYERS = [
    BuyerView(A, Status.ACTIVE, Decimal("20.00"), priority=2),
    BuyerView(B, Status.ACTIVE, Decimal("30.00"), priority=1),
    BuyerView(C, Status.PAUSED, Decimal("99.00"), priority=0),
    BuyerView(D, Status.ACTIVE, Decimal("25.00"), priority=2),
]


def test_waterfall_follows_priority_then_price_and_skips_paused_buyers() -> None:
    assert [o.buyer_id for o in plan_waterfall(BUYERS)] == [B, D, A]


def test_a_campaign_without_eligible_buyers_is_exhausted_at_once() -> None:
    assert first_step(plan_waterfall(BUYERS[2:3])) == Exhausted(
        ExhaustionReason.NO_ELIGIBLE_BUYERS, attempts=0
    )


def test_a_rejection_falls_through_to_the_next_buyer_and_then_exhausts() -> None:
    plan = plan_waterfall(BUYERS)
    step = after_result(plan, 1, False, 1, DeliveryResult.REJECTED, final=True)
    assert step == OfferNext(2, plan[1])
    step = after_result(plan, 3, False, 3, DeliveryResult.ERROR, final=True)
    assert step == Exhausted(ExhaustionReason.ALL_BUYERS_DECLINED, attempts=3)


def test_nothing_moves_on_acceptance_unknown_outcome_retries_or_stale_results() -> None:
    plan = plan_waterfall(BUYERS)
    assert after_result(plan, 1, False, 1, DeliveryResult.ACCEPTED, final=True) == Wait()
    assert after_result(plan, 1, False, 1, DeliveryResult.OUTCOME_UNKNOWN, final=True) == Wait()
    assert after_result(plan, 1, False, 1, DeliveryResult.ERROR, final=False) == Wait()
    assert after_result(plan, 2, False, 1, DeliveryResult.REJECTED, final=True) == Wait()
    assert after_result(plan, 1, True, 1, DeliveryResult.REJECTED, final=True) == Wait()
