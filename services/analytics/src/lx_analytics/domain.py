"""Analytics' pure rules: what each event adds to which hourly bucket, and how reports
are read back (latency percentiles from summed histograms).

Every metric lives at exactly one level, so summing rows over any grouping counts each
event once: lead-level metrics on the row whose buyer is the nil UUID, buyer-level ones
on the buyer's row. Buckets are event-time UTC hours (``occurred_at``): a late or
out-of-order event lands in its own hour.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from lx_schemas import events as ev
from lx_schemas.envelope import Event

NO_BUYER = uuid.UUID(int=0)
# The v1 columns, kept with their meaning for /v1/stats/hourly.
V1_COUNTERS = ("received", "offered", "sold", "unsold", "rejected", "errors")
COUNTERS = (
    *V1_COUNTERS,
    "refused",
    "duplicates",
    "pings",
    "posts",
    "auctions",
    "won",
    "bids",
    "returned",
)
AMOUNTS = ("revenue", "returned_amount", "payout", "returned_payout")
COLUMNS = (*COUNTERS, *AMOUNTS)
Bucket = tuple[dt.datetime, uuid.UUID, uuid.UUID, uuid.UUID]

# Latency histogram: bucket 0 holds answers under 1 ms; bucket i >= 1 holds
# [2^((i-1)/8), 2^(i/8)) ms, eight buckets per doubling (each 9.05% wider than the last)
# up to 2^17 ms (131 s); the last bucket holds anything slower. A percentile is reported
# as its bucket's upper bound: never below the true value, at most 9.05% above it.
LATENCY_STEPS_PER_DOUBLING = 8
LATENCY_TOP_BUCKET = 17 * LATENCY_STEPS_PER_DOUBLING + 1
LATENCY_RESOLUTION = (
    "log-spaced buckets, 8 per doubling from 1 ms to 131 s: a percentile is its bucket's"
    " upper bound, at most 9.05% above the true value"
)


def latency_bucket(ms: float) -> int:
    if ms < 1.0:
        return 0
    return min(LATENCY_TOP_BUCKET, 1 + math.floor(math.log2(ms) * LATENCY_STEPS_PER_DOUBLING))


def bucket_upper_ms(bucket: int) -> float:
    if bucket >= LATENCY_TOP_BUCKET:
        return math.inf
    return float(2.0 ** (bucket / LATENCY_STEPS_PER_DOUBLING))


def percentile(histogram: Mapping[int, int], q: float) -> float | None:
    """The ``q`` quantile (0 < q <= 1) of a histogram summed over any rows: the upper
    bound of the bucket holding the rank-``ceil(q·n)`` answer; None if empty."""
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            upper = bucket_upper_ms(bucket)
            return round(upper, 3) if math.isfinite(upper) else None
    raise AssertionError("unreachable: rank <= total")


def hour_of(at: dt.datetime) -> dt.datetime:
    return at.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


def _zero() -> dict[str, Decimal | int]:
    return {**dict.fromkeys(COUNTERS, 0), **dict.fromkeys(AMOUNTS, Decimal("0.00"))}


@dataclass
class Deltas:
    """What a batch of events adds, summed per bucket (one upsert row each)."""

    stats: dict[Bucket, dict[str, Decimal | int]] = field(
        default_factory=lambda: defaultdict(_zero)
    )
    rejections: dict[tuple[Bucket, str], int] = field(default_factory=lambda: defaultdict(int))
    latency: dict[tuple[Bucket, int], int] = field(default_factory=lambda: defaultdict(int))


def deltas(events: Iterable[Event]) -> Deltas:
    out = Deltas()
    stats, rejections, latency = out.stats, out.rejections, out.latency
    hours: dict[dt.datetime, dt.datetime] = {}  # most events of a batch share a few hours

    def key(e: Event, campaign: uuid.UUID, source: uuid.UUID, buyer: uuid.UUID) -> Bucket:
        hour = hours.get(e.occurred_at)
        if hour is None:
            hour = hours[e.occurred_at] = hour_of(e.occurred_at)
        return (hour, campaign, source, buyer)

    def reasons(k: Bucket, found: Sequence[ev.Rejection], *, per_buyer: bool) -> None:
        if per_buyer:
            for r in found:
                rejections[((*k[:3], r.buyer_id or NO_BUYER), r.code.value)] += 1
        else:  # one refused post: each of its reasons once
            for code in {r.code.value for r in found}:
                rejections[(k, code)] += 1

    for e in events:
        p = e.payload
        if isinstance(e, ev.LeadReceived):
            row = stats[key(e, p.campaign_id, p.source_id, NO_BUYER)]
            row["received"] += 1
            if p.ping_id is not None:
                row["posts"] += 1
        elif isinstance(e, ev.DeliveryAttempted):
            k = key(e, p.campaign_id, p.source_id, p.buyer_id)
            # A try never sent (breaker open, buyer paused, data shredded) took no time
            # at the buyer: it is recorded with 0 ms and is no answer to time.
            if p.latency_ms > 0:
                latency[(k, latency_bucket(p.latency_ms))] += 1
            if p.final:
                if p.result is ev.DeliveryResult.REJECTED:
                    stats[k]["rejected"] += 1
                elif p.result is ev.DeliveryResult.ERROR:
                    stats[k]["errors"] += 1
        elif isinstance(e, ev.LeadRouted):
            stats[key(e, p.campaign_id, p.source_id, p.buyer_id)]["offered"] += 1
        elif isinstance(e, ev.LeadSold):
            row = stats[key(e, p.campaign_id, p.source_id, p.buyer_id)]
            row["sold"] += 1
            row["revenue"] += p.price
            row["payout"] += p.payout or 0
            # v1 kept the lead's sale on the lead-level row too (first sale only now).
            if p.sale == 1:
                stats[key(e, p.campaign_id, p.source_id, NO_BUYER)]["sold"] += 1
        elif isinstance(e, ev.LeadUnsold):
            stats[key(e, p.campaign_id, p.source_id, NO_BUYER)]["unsold"] += 1
        elif isinstance(e, ev.BuyerPinged):
            k = key(e, p.campaign_id, p.source_id, p.buyer_id)
            latency[(k, latency_bucket(p.latency_ms))] += 1
            if p.result is ev.PingResult.BID:
                stats[k]["bids"] += 1
        elif isinstance(e, ev.PingReceived):
            stats[key(e, p.campaign_id, p.source_id, NO_BUYER)]["pings"] += 1
        elif isinstance(e, ev.AuctionClosed):
            k = key(e, p.campaign_id, p.source_id, NO_BUYER)
            stats[k]["auctions"] += 1
            if p.bids:
                stats[k]["won"] += 1
            reasons(k, p.rejections, per_buyer=True)
        elif isinstance(e, ev.LeadRejected):
            k = key(e, p.campaign_id, p.source_id, NO_BUYER)
            row = stats[k]
            row["refused"] += 1
            if any(r.code is ev.RejectionCode.DUPLICATE for r in p.rejections):
                row["duplicates"] += 1
            reasons(k, p.rejections, per_buyer=False)
        elif isinstance(e, ev.LeadRoutingExhausted):
            # Its rejections are the buyers passed over, each with its reason (LeadUnsold
            # repeats the same list: counted here only).
            reasons(key(e, p.campaign_id, p.source_id, NO_BUYER), p.rejections, per_buyer=True)
        elif isinstance(e, ev.LeadReturned):
            row = stats[key(e, p.campaign_id, p.source_id, p.buyer_id)]
            row["returned"] += 1
            row["returned_amount"] += p.price
            row["returned_payout"] += p.payout or 0
    return out


# --- reports --------------------------------------------------------------------------------


def ratio(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def report_metrics(
    sums: Mapping[str, int | Decimal],
    rejections: Mapping[str, int],
    histogram: Mapping[int, int],
) -> dict[str, object]:
    """One report row's metrics from its summed columns (see the API's ReportRow).

    Revenue is the price of sales less the price of returns, each in the hour it
    happened; payout likewise less the payouts clawed back; margin is their difference.
    """
    revenue = Decimal(sums["revenue"]) - Decimal(sums["returned_amount"])
    payout = Decimal(sums["payout"]) - Decimal(sums["returned_payout"])
    accepted, refused = int(sums["received"]), int(sums["refused"])
    return {
        "received": accepted + refused,
        "accepted": accepted,
        "rejected": refused,
        "rejections": dict(sorted(rejections.items())),
        "duplicates": int(sums["duplicates"]),
        "pings": int(sums["pings"]),
        "posts": int(sums["posts"]),
        "ping_to_post_ratio": ratio(int(sums["pings"]), int(sums["posts"])),
        "auctions": int(sums["auctions"]),
        "bids": int(sums["bids"]),
        "won": int(sums["won"]),
        "offered": int(sums["offered"]),
        "sold": int(sums["sold"]),
        "unsold": int(sums["unsold"]),
        "returned": int(sums["returned"]),
        "gross_revenue": Decimal(sums["revenue"]).quantize(Decimal("0.01")),
        "revenue": revenue.quantize(Decimal("0.01")),
        "payout": payout.quantize(Decimal("0.01")),
        "margin": (revenue - payout).quantize(Decimal("0.01")),
        "responses": sum(histogram.values()),
        "latency_p50_ms": percentile(histogram, 0.50),
        "latency_p95_ms": percentile(histogram, 0.95),
        "latency_p99_ms": percentile(histogram, 0.99),
    }
