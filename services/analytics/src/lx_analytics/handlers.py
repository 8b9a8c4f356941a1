"""Analytics' projection: per batch, one upsert of summed deltas per table, plus the
operators' export configurations and each campaign's account (for tenants' scope)."""

from __future__ import annotations

from collections.abc import Sequence

from lx_platform.consumer import Consumed
from lx_schemas import events as ev
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_analytics import domain

_KEY = "hour, campaign_id, source_id, buyer_id"
_KEY_ARRAYS = (
    "cast(:hour as timestamptz[]), cast(:campaign_id as uuid[]),"
    " cast(:source_id as uuid[]), cast(:buyer_id as uuid[])"
)
# One statement per batch whatever its size: arrays unnested server-side (the deltas are
# already summed per key, so no key repeats within the statement).
_UPSERT_STATS = text(
    f"insert into hourly_stats ({_KEY}, {', '.join(domain.COLUMNS)})"
    f" select * from unnest({_KEY_ARRAYS}, "
    + ", ".join(f"cast(:{c} as bigint[])" for c in domain.COUNTERS)
    + ", "
    + ", ".join(f"cast(:{c} as numeric[])" for c in domain.AMOUNTS)
    + f") on conflict ({_KEY}) do update set"
    + ",".join(f" {c} = hourly_stats.{c} + excluded.{c}" for c in domain.COLUMNS)
)
_UPSERT_REJECTIONS = text(
    f"insert into rejections_hourly ({_KEY}, code, n) select * from unnest({_KEY_ARRAYS},"
    " cast(:code as text[]), cast(:n as bigint[]))"
    f" on conflict ({_KEY}, code) do update set n = rejections_hourly.n + excluded.n"
)
_UPSERT_LATENCY = text(
    f"insert into latency_hourly ({_KEY}, bucket, n) select * from unnest({_KEY_ARRAYS},"
    " cast(:bucket as smallint[]), cast(:n as bigint[]))"
    f" on conflict ({_KEY}, bucket) do update set n = latency_hourly.n + excluded.n"
)
_UPSERT_EXPORT = text(
    "insert into exports (export_id, name, status, query, every_hours, retention_days,"
    " configured_by, configured_at, account_id) values (:export_id, :name, :status,"
    " cast(:query as jsonb), :every_hours, :retention_days, :configured_by, :configured_at,"
    " :account_id)"
    " on conflict (export_id) do update set name = excluded.name, status = excluded.status,"
    " query = excluded.query, every_hours = excluded.every_hours,"
    " retention_days = excluded.retention_days, configured_by = excluded.configured_by,"
    " configured_at = excluded.configured_at"
    # The last configuration by event time wins, whatever order the log replays them in;
    # an export stays its first account's (another's command with its id changes nothing).
    " where exports.configured_at <= excluded.configured_at"
    " and exports.account_id is not distinct from excluded.account_id"
)
# A campaign never moves to another account; the latest state wins all the same.
_UPSERT_CAMPAIGN = text(
    "insert into campaign_accounts (campaign_id, account_id)"
    " select * from unnest(cast(:campaign_id as uuid[]), cast(:account_id as uuid[]))"
    " on conflict (campaign_id) do update set account_id = excluded.account_id"
)


def _columns(keys: Sequence[domain.Bucket]) -> dict[str, list[object]]:
    return {
        "hour": [k[0] for k in keys],
        "campaign_id": [k[1] for k in keys],
        "source_id": [k[2] for k in keys],
        "buyer_id": [k[3] for k in keys],
    }


async def project(conn: AsyncConnection, batch: Sequence[Consumed]) -> None:
    exports = [i.event for i in batch if isinstance(i.event, ev.ExportConfigured)]
    campaigns = {
        i.event.payload.campaign_id: i.event.payload.account_id
        for i in batch
        if isinstance(i.event, ev.CampaignConfigured)
    }
    if campaigns:
        ids = sorted(campaigns)
        await conn.execute(
            _UPSERT_CAMPAIGN, {"campaign_id": ids, "account_id": [campaigns[c] for c in ids]}
        )
    d = domain.deltas(i.event for i in batch)
    # Sorted keys: concurrent batches lock rows in the same order (no deadlocks).
    if d.stats:
        keys = sorted(d.stats)
        rows = [d.stats[k] for k in keys]
        params = _columns(keys)
        for c in domain.COLUMNS:
            params[c] = [r[c] for r in rows]
        await conn.execute(_UPSERT_STATS, params)
    if d.rejections:
        pairs = sorted(d.rejections)
        params = _columns([k for k, _ in pairs])
        params["code"] = [code for _, code in pairs]
        params["n"] = [d.rejections[p] for p in pairs]
        await conn.execute(_UPSERT_REJECTIONS, params)
    if d.latency:
        cells = sorted(d.latency)
        params = _columns([k for k, _ in cells])
        params["bucket"] = [b for _, b in cells]
        params["n"] = [d.latency[c] for c in cells]
        await conn.execute(_UPSERT_LATENCY, params)
    for e in exports:
        s = e.payload
        await conn.execute(
            _UPSERT_EXPORT,
            {
                "export_id": s.export_id,
                "name": s.name,
                "status": s.status.value,
                "query": s.query.model_dump_json(),
                "every_hours": s.every_hours,
                "retention_days": s.retention_days,
                "configured_by": s.configured_by,
                "configured_at": e.occurred_at,
                # The nil account: the platform's staff, over every account.
                "account_id": None if e.account_id == domain.NO_BUYER else e.account_id,
            },
        )
