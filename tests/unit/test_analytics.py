"""Analytics' pure rules: metric levels, reasons, latency histograms, export schedules."""

import datetime as dt
import math
import uuid
from decimal import Decimal

import pytest
from lx_analytics import domain
from lx_analytics.domain import NO_BUYER, deltas, latency_bucket, percentile
from lx_analytics.exports import is_due, window_for
from lx_schemas import events as ev

ACC, CAMP, SRC, B1, B2, LEAD, PING = (uuid.UUID(int=i) for i in range(1, 8))
AT = dt.datetime(2026, 11, 22, 10, 30, tzinfo=dt.UTC)
TEN = AT.replace(minute=0)
REF = {"lead_id": LEAD, "campaign_id": CAMP, "source_id": SRC}


def env(at: dt.datetime = AT) -> dict[str, object]:
    return {"account_id": ACC, "correlation_id": LEAD, "producer": "test", "occurred_at": at}


def test_each_latency_bucket_holds_one_eighth_of_a_doubling() -> None:
    assert latency_bucket(0.2) == 0
    assert latency_bucket(1.0) == 1
    assert latency_bucket(2.0) == 9  # [2, 2^(9/8))
    assert latency_bucket(1e9) == domain.LATENCY_TOP_BUCKET
    for ms in (1.0, 3.7, 40.0, 999.9, 4321.0, 60_000.0):
        upper = domain.bucket_upper_ms(latency_bucket(ms))
        assert ms < upper <= ms * 2 ** (1 / 8) * (1 + 1e-12)


def test_percentiles_of_summed_histograms_equal_those_of_all_the_answers() -> None:
    early = [5.0] * 90 + [50.0] * 9
    late = [500.0]
    merged: dict[int, int] = {}
    for ms in early + late:
        merged[latency_bucket(ms)] = merged.get(latency_bucket(ms), 0) + 1
    assert percentile(merged, 0.5) == round(domain.bucket_upper_ms(latency_bucket(5.0)), 3)
    assert percentile(merged, 0.95) == round(domain.bucket_upper_ms(latency_bucket(50.0)), 3)
    assert percentile(merged, 0.99) == round(domain.bucket_upper_ms(latency_bucket(50.0)), 3)
    assert percentile(merged, 1.0) == round(domain.bucket_upper_ms(latency_bucket(500.0)), 3)
    assert percentile({}, 0.5) is None
    assert math.isclose(percentile({1: 1}, 0.5) or 0, 2 ** (1 / 8), rel_tol=1e-3)


def test_a_refused_post_counts_each_reason_once_and_a_duplicate_as_a_duplicate() -> None:
    refused = ev.LeadRejected.new(
        **env(),
        payload=ev.LeadRejectedPayload(
            **REF,
            http_status=409,
            rejections=(
                ev.Rejection(code=ev.RejectionCode.DUPLICATE, detail="email"),
                ev.Rejection(code=ev.RejectionCode.DUPLICATE, detail="phone"),
                ev.Rejection(code=ev.RejectionCode.VALIDATION, detail="zip", field="zip"),
            ),
        ),
    )
    out = deltas([refused])
    lead_row = out.stats[(TEN, CAMP, SRC, NO_BUYER)]
    assert (lead_row["refused"], lead_row["duplicates"], lead_row["received"]) == (1, 1, 0)
    assert dict(out.rejections) == {
        ((TEN, CAMP, SRC, NO_BUYER), "duplicate"): 1,
        ((TEN, CAMP, SRC, NO_BUYER), "validation"): 1,
    }


def test_routing_exhaustion_counts_each_buyer_passed_over_on_its_own_row() -> None:
    exhausted = ev.LeadRoutingExhausted.new(
        **env(),
        payload=ev.LeadRoutingExhaustedPayload(
            **REF,
            reason=ev.ExhaustionReason.NO_ELIGIBLE_BUYERS,
            attempts=0,
            rejections=(
                ev.Rejection(code=ev.RejectionCode.BUYER_CAP, detail="day", buyer_id=B1),
                ev.Rejection(code=ev.RejectionCode.FILTER, detail="state", buyer_id=B2),
            ),
        ),
    )
    unsold = ev.LeadUnsold.new(
        **env(),
        payload=ev.LeadUnsoldPayload(
            **REF,
            reason=ev.ExhaustionReason.NO_ELIGIBLE_BUYERS,
            rejections=exhausted.payload.rejections,
        ),
    )
    out = deltas([exhausted, unsold])
    assert dict(out.rejections) == {  # the unsold's copy of the list is not counted again
        ((TEN, CAMP, SRC, B1), "buyer_cap"): 1,
        ((TEN, CAMP, SRC, B2), "filter"): 1,
    }
    assert out.stats[(TEN, CAMP, SRC, NO_BUYER)]["unsold"] == 1


def test_a_return_lands_in_its_own_hour_with_its_price_and_payout() -> None:
    sold = ev.LeadSold.new(
        **env(),
        payload=ev.LeadSoldPayload(
            **REF, buyer_id=B1, delivery_id=LEAD, price=Decimal("30.00"), payout=Decimal("18.00")
        ),
    )
    returned = ev.LeadReturned.new(
        **env(AT + dt.timedelta(days=2)),
        payload=ev.LeadReturnedPayload(
            **REF,
            buyer_id=B1,
            delivery_id=LEAD,
            return_id=uuid.uuid4(),
            price=Decimal("30.00"),
            payout=Decimal("18.00"),
            reason_code=ev.ReturnReason.FRAUD,
            returned_by="operator:dana",
        ),
    )
    out = deltas([returned, sold])
    sale = out.stats[(TEN, CAMP, SRC, B1)]
    back = out.stats[(TEN + dt.timedelta(days=2), CAMP, SRC, B1)]
    assert (sale["sold"], sale["revenue"], sale["payout"]) == (1, Decimal("30.00"), 18)
    assert (back["returned"], back["returned_amount"], back["returned_payout"]) == (
        1,
        Decimal("30.00"),
        Decimal("18.00"),
    )
    both = {c: sale[c] + back[c] for c in domain.COLUMNS}
    metrics = domain.report_metrics(both, {}, {})
    assert (metrics["revenue"], metrics["payout"], metrics["margin"]) == (0, 0, 0)
    assert metrics["gross_revenue"] == Decimal("30.00")


def test_pings_bids_auctions_and_posts_make_the_ping_to_post_ratio() -> None:
    pref = {"ping_id": PING, "campaign_id": CAMP, "source_id": SRC}
    events: list[ev.Event] = [
        ev.PingReceived.new(**env(), payload=ev.PingReceivedPayload(**pref, fields={}))
        for _ in range(3)
    ]
    events.append(
        ev.BuyerPinged.new(
            **env(),
            payload=ev.BuyerPingedPayload(
                **pref, buyer_id=B1, result=ev.PingResult.BID, price=Decimal(9), latency_ms=12
            ),
        )
    )
    events.append(
        ev.BuyerPinged.new(
            **env(),
            payload=ev.BuyerPingedPayload(
                **pref, buyer_id=B2, result=ev.PingResult.TIMEOUT, latency_ms=300
            ),
        )
    )
    events.append(
        ev.LeadReceived.new(
            **env(),
            payload=ev.LeadReceivedPayload(**REF, lead=ev.LeadContent(fields={}), ping_id=PING),
        )
    )
    out = deltas(events)
    lead_row = out.stats[(TEN, CAMP, SRC, NO_BUYER)]
    assert (lead_row["pings"], lead_row["posts"], lead_row["received"]) == (3, 1, 1)
    assert out.stats[(TEN, CAMP, SRC, B1)]["bids"] == 1
    assert out.stats[(TEN, CAMP, SRC, B2)]["bids"] == 0
    assert sum(out.latency.values()) == 2
    metrics = domain.report_metrics(lead_row, {}, {})
    assert metrics["ping_to_post_ratio"] == 3.0


def test_an_export_covers_whole_hours_and_is_due_every_n_hours() -> None:
    now = dt.datetime(2026, 11, 22, 10, 17, tzinfo=dt.UTC)
    assert window_for(now, 24) == (
        dt.datetime(2026, 11, 21, 10, tzinfo=dt.UTC),
        dt.datetime(2026, 11, 22, 10, tzinfo=dt.UTC),
    )
    assert is_due(None, 24, now)
    assert not is_due(now - dt.timedelta(hours=23, minutes=59), 24, now)
    assert is_due(now - dt.timedelta(hours=24), 24, now)


@pytest.mark.parametrize("group_by", [("buyer", "buyer")])
def test_a_report_names_each_dimension_once(group_by: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="once"):
        ev.ExportQuery.model_validate({"group_by": group_by})


def test_a_try_never_sent_is_no_answer_to_time() -> None:
    def attempt(latency_ms: float, reason_code: ev.RejectionCode | None) -> ev.DeliveryAttempted:
        return ev.DeliveryAttempted.new(
            **env(),
            payload=ev.DeliveryAttemptedPayload(
                **REF,
                buyer_id=B1,
                delivery_id=uuid.uuid4(),
                attempt=1,
                result=ev.DeliveryResult.ERROR,
                latency_ms=latency_ms,
                reason_code=reason_code,
            ),
        )

    out = deltas([attempt(0.0, ev.RejectionCode.CIRCUIT_OPEN), attempt(40.0, None)])
    assert dict(out.latency) == {((TEN, CAMP, SRC, B1), latency_bucket(40.0)): 1}
    assert out.stats[(TEN, CAMP, SRC, B1)]["errors"] == 2  # both still count as errors
