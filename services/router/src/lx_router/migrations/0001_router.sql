create table buyers (
    buyer_id    uuid primary key,
    campaign_id uuid          not null,
    status      text          not null,
    price       numeric(14,2) not null,
    priority    int           not null
);
create index buyers_by_campaign on buyers (campaign_id);

-- One row per lead: its waterfall, the offer in flight and whether it is decided.
create table routings (
    lead_id     uuid primary key,
    account_id  uuid        not null,
    campaign_id uuid        not null,
    source_id   uuid        not null,
    lead        jsonb       not null,
    plan        jsonb       not null,
    attempt     int         not null,
    status      text        not null,  -- routing | sold | exhausted
    updated_at  timestamptz not null default now()
);
