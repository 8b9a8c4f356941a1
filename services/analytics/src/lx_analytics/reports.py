"""Reports read from the hourly tables: sums over any filter, period and grouping, the
same for the query API and for scheduled exports."""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid
from collections import defaultdict
from decimal import Decimal
from typing import Any

from lx_schemas import events as ev
from lx_schemas.envelope import Frozen
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_analytics import domain

MAX_ROWS = 50_000
_DIMENSION_COLUMNS = {
    ev.ReportDimension.CAMPAIGN: "campaign_id",
    ev.ReportDimension.SOURCE: "source_id",
    ev.ReportDimension.BUYER: "buyer_id",
}


class ReportTooLargeError(ValueError):
    """More rows than a report may hold: narrow the period, filters or grouping."""


class ReportRow(Frozen):
    """One period and group. ``received`` = ``accepted`` + ``rejected`` (posts refused at
    ingest); ``rejections`` counts reasons by RejectionCode: ingest's per refused post,
    routing's and auctions' per buyer passed over. ``revenue`` is sale prices less
    returned prices (``gross_revenue``: sales only); ``payout`` less payouts clawed back;
    ``margin`` = revenue - payout. Latency: buyer answers (each post try, each ping)."""

    period: dt.datetime
    campaign_id: uuid.UUID | None = None
    source_id: uuid.UUID | None = None
    # On grouping by buyer, lead-level metrics (received, pings, unsold...) are on the
    # row without a buyer.
    buyer_id: uuid.UUID | None = None
    received: int
    accepted: int
    rejected: int
    rejections: dict[str, int]
    duplicates: int
    pings: int
    posts: int
    ping_to_post_ratio: float | None
    auctions: int
    bids: int
    won: int
    offered: int
    sold: int
    unsold: int
    returned: int
    gross_revenue: Decimal
    revenue: Decimal
    payout: Decimal
    margin: Decimal
    responses: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None


def _period_sql(granularity: ev.ReportGranularity) -> str:
    if granularity is ev.ReportGranularity.HOUR:
        return "hour"
    if granularity is ev.ReportGranularity.DAY:
        # UTC days whatever the session's time zone.
        return "(date_trunc('day', hour at time zone 'UTC') at time zone 'UTC')"
    return "cast(:since as timestamptz)"


# A tenant's rows: those of its own campaigns (campaign_accounts, from config.changed).
SCOPE_CLAUSE = (
    "campaign_id in (select campaign_id from campaign_accounts where account_id = :account)"
)


async def report(
    conn: AsyncConnection,
    query: ev.ExportQuery,
    since: dt.datetime,
    until: dt.datetime,
    account_id: uuid.UUID | None = None,
) -> list[ReportRow]:
    """Rows for [since, until) (whole UTC hours: an hour is in if it starts inside), of
    one account's campaigns only if ``account_id`` is given (a tenant's), else of all."""
    dims = [_DIMENSION_COLUMNS[d] for d in query.group_by]
    select_dims = "".join(
        ", nullif(buyer_id, :nil) as buyer_id" if d == "buyer_id" else f", {d}" for d in dims
    )
    group = ", ".join(str(i) for i in range(1, len(dims) + 2))
    clauses = ["hour >= :since", "hour < :until"]
    params: dict[str, Any] = {"since": since, "until": until, "nil": domain.NO_BUYER}
    for name in ("campaign_id", "source_id", "buyer_id"):
        value = getattr(query, name)
        if value is not None:
            clauses.append(f"{name} = :{name}")
            params[name] = value
    if account_id is not None:
        clauses.append(SCOPE_CLAUSE)
        params["account"] = account_id
    head = f"select {_period_sql(query.granularity)} as period{select_dims}"
    where = f"where {' and '.join(clauses)} group by {group}"
    # ``sold`` is read from the buyers' rows only (the lead-level row keeps v1's copy).
    sums = ", ".join(
        "sum(case when buyer_id = :nil then 0 else sold end) as sold"
        if c == "sold"
        else f"sum({c}) as {c}"
        for c in domain.COLUMNS
    )
    stats = await conn.execute(
        text(f"{head}, {sums} from hourly_stats {where} limit {MAX_ROWS + 1}"), params
    )
    width = 1 + len(dims)
    totals: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in stats:
        totals[tuple(r[:width])] = dict(zip(domain.COLUMNS, r[width:], strict=True))
    if len(totals) > MAX_ROWS:
        raise ReportTooLargeError(f"more than {MAX_ROWS} rows")
    reasons: dict[tuple[Any, ...], dict[str, int]] = defaultdict(dict)
    for r in await conn.execute(
        text(f"{head}, code, sum(n) from rejections_hourly {where}, code"), params
    ):
        reasons[tuple(r[:width])][r[width]] = int(r[width + 1])
    histograms: dict[tuple[Any, ...], dict[int, int]] = defaultdict(dict)
    for r in await conn.execute(
        text(f"{head}, bucket, sum(n) from latency_hourly {where}, bucket"), params
    ):
        histograms[tuple(r[:width])][int(r[width])] = int(r[width + 1])

    zero = dict.fromkeys(domain.COLUMNS, 0)
    rows = []
    for key in sorted(
        {*totals, *reasons, *histograms}, key=lambda k: tuple(str(v or "") for v in k)
    ):
        metrics = domain.report_metrics(
            totals.get(key, zero), reasons.get(key, {}), histograms.get(key, {})
        )
        # Periods are UTC instants whatever the database session's time zone.
        row: dict[str, Any] = {"period": key[0].astimezone(dt.UTC), **metrics}
        row.update(zip(dims, key[1:], strict=True))
        rows.append(ReportRow(**row))
    return rows


CSV_COLUMNS = [name for name in ReportRow.model_fields if name not in ("rejections",)] + [
    f"rejected_{code.value}" for code in ev.RejectionCode
]


def to_csv(rows: list[ReportRow]) -> bytes:
    """RFC 4180 CSV (the standard library's writer), one column per rejection code."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        data = row.model_dump(mode="json")
        reasons = data.pop("rejections")
        data.update({f"rejected_{c.value}": reasons.get(c.value, 0) for c in ev.RejectionCode})
        writer.writerow({k: "" if v is None else v for k, v in data.items()})
    return buffer.getvalue().encode()
