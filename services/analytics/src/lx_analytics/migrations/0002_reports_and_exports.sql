-- Reports: every metric lives at exactly one level, so summing rows over any grouping
-- counts each event once. Lead-level metrics (buyer_id = nil UUID): received (accepted
-- posts), refused, duplicates, pings, posts, auctions, won, unsold. Buyer-level: offered,
-- rejected, errors, bids, sold, returned and the money. (The v1 ``sold`` column is also
-- kept on the lead-level row, as /v1/stats/hourly shows it; reports read the buyer rows.)
alter table hourly_stats
    add column refused         bigint        not null default 0,
    add column duplicates      bigint        not null default 0,
    add column pings           bigint        not null default 0,
    add column posts           bigint        not null default 0,
    add column auctions        bigint        not null default 0,
    add column won             bigint        not null default 0,
    add column bids            bigint        not null default 0,
    add column returned        bigint        not null default 0,
    add column returned_amount numeric(16,2) not null default 0,
    add column payout          numeric(16,2) not null default 0,
    add column returned_payout numeric(16,2) not null default 0;

-- Why leads were refused (ingest: lead-level rows) or passed over (routing, auctions:
-- the buyer's row), by RejectionCode, per event hour.
create table rejections_hourly (
    hour        timestamptz not null,
    campaign_id uuid        not null,
    source_id   uuid        not null,
    buyer_id    uuid        not null,
    code        text        not null,
    n           bigint      not null,
    primary key (hour, campaign_id, source_id, buyer_id, code)
);

-- Buyer response latency as a mergeable histogram: fixed log-spaced buckets (see
-- lx_analytics.domain.latency_bucket), summed over any filter and period.
create table latency_hourly (
    hour        timestamptz not null,
    campaign_id uuid        not null,
    source_id   uuid        not null,
    buyer_id    uuid        not null,
    bucket      smallint    not null,
    n           bigint      not null,
    primary key (hour, campaign_id, source_id, buyer_id, bucket)
);

-- Scheduled exports as operators configured them (ExportConfigured): projection state.
create table exports (
    export_id      uuid        primary key,
    name           text        not null,
    status         text        not null,
    query          jsonb       not null,
    every_hours    int         not null,
    retention_days int         not null,
    configured_by  text        not null,
    configured_at  timestamptz not null
);

-- The audit of each export run. NOT projection state: it records what the scheduler did
-- (files written and deleted at wall-clock times), which no event holds, so a projection
-- rebuild (lxctl projection rebuild swaps only the projection's tables) leaves it alone.
create table export_runs (
    run_id         uuid        primary key,
    export_id      uuid        not null,
    name           text        not null,
    configured_by  text        not null,
    configured_at  timestamptz not null,
    query          jsonb       not null,
    period_from    timestamptz not null,
    period_to      timestamptz not null,
    run_at         timestamptz not null,
    file_name      text        not null,
    rows           int         not null,
    sha256         text        not null,
    expires_at     timestamptz not null,
    deleted_at     timestamptz
);
create index export_runs_by_export on export_runs (export_id, run_at);
create index export_runs_to_delete on export_runs (expires_at) where deleted_at is null;
