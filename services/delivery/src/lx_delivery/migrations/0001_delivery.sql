create table buyers (
    buyer_id uuid primary key,
    state    jsonb not null
);

-- One row per offer of a lead to a buyer (a routing decision): a durable job.
create table deliveries (
    delivery_id uuid primary key,
    lead_id     uuid          not null,
    account_id  uuid          not null,
    campaign_id uuid          not null,
    source_id   uuid          not null,
    buyer_id    uuid          not null,
    attempt     int           not null,
    price       numeric(14,2) not null,
    lead        jsonb         not null,
    status      text          not null default 'pending',  -- pending | sending | done
    tries       int           not null default 0,
    next_try_at timestamptz   not null default now(),
    lease_until timestamptz,
    result      text,
    created_at  timestamptz   not null default now(),
    updated_at  timestamptz   not null default now()
);
create index deliveries_due on deliveries (next_try_at) where status <> 'done';
create index deliveries_by_lead on deliveries (lead_id);

-- Every try with its request and response, sealed under the lead's data key.
create table delivery_tries (
    delivery_id     uuid             not null references deliveries,
    try_number      int              not null,
    started_at      timestamptz      not null,
    latency_ms      double precision not null,
    result          text             not null,
    http_status     int,
    reason          text,
    key_id          uuid,
    request_sealed  bytea,
    response_sealed bytea,
    primary key (delivery_id, try_number)
);

-- Exactly one final outcome per lead.
create table lead_outcomes (
    lead_id    uuid primary key,
    outcome    text        not null,
    decided_at timestamptz not null default now()
);
