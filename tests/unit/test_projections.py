import datetime as dt
import uuid
from decimal import Decimal

from lx_analytics.domain import NO_BUYER, deltas
from lx_billing.domain import month_of, sale_entries
from lx_schemas import events as ev

ACC, CAMP, SRC, BUY, LEAD = (uuid.UUID(int=i) for i in range(1, 6))
AT = dt.datetime(2026, 11, 22, 10, 59, 59, tzinfo=dt.UTC)
REF = {"lead_id": LEAD, "campaign_id": CAMP, "source_id": SRC}


def _env(at: dt.datetime = AT) -> dict[str, object]:
    return {"account_id": ACC, "correlation_id": LEAD, "producer": "test", "occurred_at": at}


def test_a_sale_debits_the_buyer_and_credits_the_account_exactly() -> None:
    entries = sale_entries(ACC, BUY, Decimal("35.10"))
    assert sum(e.amount for e in entries) == 0
    assert {e.ledger_account: e.amount for e in entries} == {
        f"buyer:{BUY}:receivable": Decimal("35.10"),
        f"account:{ACC}:lead_revenue": Decimal("-35.10"),
    }


def test_usage_months_are_utc_calendar_months() -> None:
    late = dt.datetime(2026, 11, 30, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    assert month_of(late) == dt.date(2026, 12, 1)


def test_analytics_buckets_by_event_hour_and_counts_only_final_results() -> None:
    events = [
        ev.LeadReceived.new(
            **_env(), payload=ev.LeadReceivedPayload(**REF, lead=ev.LeadContent(fields={}))
        ),
        ev.DeliveryAttempted.new(
            **_env(),
            payload=ev.DeliveryAttemptedPayload(
                **REF,
                buyer_id=BUY,
                delivery_id=LEAD,
                attempt=1,
                final=False,
                result=ev.DeliveryResult.ERROR,
                latency_ms=5,
            ),
        ),
        ev.DeliveryAttempted.new(
            **_env(),
            payload=ev.DeliveryAttemptedPayload(
                **REF,
                buyer_id=BUY,
                delivery_id=LEAD,
                attempt=1,
                result=ev.DeliveryResult.ACCEPTED,
                latency_ms=5,
            ),
        ),
        ev.LeadSold.new(
            **_env(AT + dt.timedelta(seconds=2)),
            payload=ev.LeadSoldPayload(
                **REF, buyer_id=BUY, delivery_id=LEAD, price=Decimal("35.00"), payout=None
            ),
        ),
    ]
    out = deltas(events).stats
    ten, eleven = AT.replace(minute=0, second=0), AT.replace(hour=11, minute=0, second=0)
    assert out[(ten, CAMP, SRC, NO_BUYER)]["received"] == 1
    assert (ten, CAMP, SRC, BUY) not in out  # a non-final try is not an error yet
    assert out[(eleven, CAMP, SRC, BUY)]["sold"] == 1
    assert out[(eleven, CAMP, SRC, BUY)]["revenue"] == Decimal("35.00")
    assert out[(eleven, CAMP, SRC, NO_BUYER)]["sold"] == 1
