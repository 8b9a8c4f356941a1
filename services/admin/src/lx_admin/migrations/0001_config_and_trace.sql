-- Configuration owned by admin; each change is also published to config.changed.
create table accounts (
    account_id uuid primary key,
    state      jsonb       not null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
create table campaigns (
    campaign_id uuid primary key,
    account_id  uuid        not null references accounts,
    state       jsonb       not null,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);
create table sources (
    source_id   uuid primary key,
    account_id  uuid        not null references accounts,
    campaign_id uuid        not null references campaigns,
    state       jsonb       not null,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);
create table buyers (
    buyer_id    uuid primary key,
    account_id  uuid        not null references accounts,
    campaign_id uuid        not null references campaigns,
    state       jsonb       not null,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);

-- Lead trace read model: every lead event, in order, without PII.
create table lead_events (
    event_id    uuid primary key,
    lead_id     uuid        not null,
    account_id  uuid        not null,
    type        text        not null,
    occurred_at timestamptz not null,
    topic       text        not null,
    "offset"    bigint      not null,
    payload     jsonb       not null
);
create index lead_events_by_lead on lead_events (lead_id, occurred_at);
