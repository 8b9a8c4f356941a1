-- Issue 3: buyers' full state, campaigns and sources, caps as reservations, per-buyer
-- duplicate windows, multi-sell and ping-post plans.

alter table buyers add column name text;
alter table buyers add column state jsonb;  -- BuyerState (BuyerConfigured v2); null: v1 row

create table campaigns (
    campaign_id uuid primary key,
    state       jsonb not null  -- CampaignState (CampaignConfigured v3)
);

create table sources (
    source_id   uuid primary key,
    campaign_id uuid  not null,
    state       jsonb not null  -- SourceState (SourceConfigured v2)
);

-- A routing now walks a plan (each entry a PlannedOffer) from ``position``, skipping
-- buyers whose caps or duplicate window refuse, and may sell up to ``max_sales`` times.
alter table routings add column position  int;
update routings set position = attempt;
alter table routings alter column position set not null;
alter table routings add column sales      int   not null default 0;
alter table routings add column max_sales  int   not null default 1;
alter table routings add column ping_id    uuid;
alter table routings add column margin     jsonb not null default '{"fixed": "0.00", "percent": "0.00"}';
alter table routings add column promised   numeric(14,2);
alter table routings add column rejections jsonb not null default '[]';

-- Cap counters: one row per buyer, period, unit (leads or usd) and bucket (the period's
-- start, UTC). ``used`` only grows by a conditional update that keeps it <= the cap,
-- under the row lock, so concurrent routers can never take the last slot twice.
create table cap_counters (
    buyer_id uuid          not null,
    period   text          not null,
    unit     text          not null,  -- leads | usd
    bucket   timestamptz   not null,
    used     numeric(14,2) not null,
    primary key (buyer_id, period, unit, bucket)
);

-- Every offer made, with the cap buckets it reserved: a final non-accepted result
-- releases exactly these (once: status moves from pending), even after the hour rolled.
create table offers (
    delivery_id  uuid primary key,
    lead_id      uuid          not null,
    buyer_id     uuid          not null,
    attempt      int           not null,
    sale         int           not null,
    price        numeric(14,2) not null,
    status       text          not null,  -- pending | accepted | released
    reservations jsonb         not null,
    created_at   timestamptz   not null default now()
);
create index offers_by_lead on offers (lead_id);

-- Per-buyer duplicate window: the consumers (keyed hashes of e-mail / phone) a buyer
-- was offered, and when. The primary key admits one claimant per consumer.
create table buyer_consumers (
    buyer_id      uuid        not null,
    consumer_hash bytea       not null,
    lead_id       uuid        not null,
    seen_at       timestamptz not null,
    primary key (buyer_id, consumer_hash)
);

-- Round-robin: each lead of a campaign takes the next counter value.
create table round_robin (
    campaign_id uuid   primary key,
    counter     bigint not null
);
