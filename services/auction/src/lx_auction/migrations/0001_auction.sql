-- The configuration an auction needs, each entity's full state from config.changed.
create table campaigns (
    campaign_id uuid primary key,
    account_id  uuid  not null,
    state       jsonb not null
);

create table sources (
    source_id   uuid primary key,
    campaign_id uuid  not null,
    state       jsonb not null
);

create table buyers (
    buyer_id    uuid primary key,
    campaign_id uuid  not null,
    state       jsonb not null
);
create index buyers_by_campaign on buyers (campaign_id);

-- One row per ping: claimed while its auction runs, closed with its result, then
-- claimed once more by the post that follows it (claimed_by).
create table auctions (
    ping_id         uuid primary key,
    account_id      uuid             not null,
    campaign_id     uuid             not null,
    source_id       uuid             not null,
    status          text             not null default 'running',  -- running | closed
    started_at      timestamptz      not null default now(),
    bids            jsonb            not null default '[]',  -- best first
    promised_payout numeric(14,2),
    expires_at      timestamptz,
    duration_ms     double precision,
    rejections      jsonb            not null default '[]',
    claimed_by      uuid,
    claimed_at      timestamptz
);
