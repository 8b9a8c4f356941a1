-- Buyer-scoped API tokens: shown once, kept as a SHA-256 (256 random bits need no slow
-- hash) with a prefix for display; revoked tokens stay listed, never accepted.
create table buyer_tokens (
    token_id     uuid primary key,
    buyer_id     uuid        not null references buyers,
    account_id   uuid        not null references accounts,
    name         text        not null,
    token_prefix text        not null,
    token_sha256 text        not null unique,
    created_at   timestamptz not null default now(),
    revoked_at   timestamptz
);
create index buyer_tokens_by_buyer on buyer_tokens (buyer_id);

-- Read model of sales (LeadSold on delivery.outcome): what a buyer may see and return.
create table sales (
    delivery_id   uuid primary key,
    lead_id       uuid          not null,
    account_id    uuid          not null,
    campaign_id   uuid          not null,
    source_id     uuid          not null,
    buyer_id      uuid          not null,
    price         numeric(14,2) not null,
    payout        numeric(14,2),
    sale          int           not null,
    buyer_lead_id text,
    sold_at       timestamptz   not null,
    event_id      uuid          not null
);
create index sales_by_lead on sales (lead_id);
create index sales_by_buyer on sales (buyer_id, sold_at desc, delivery_id desc);

-- One return per sale: the unique delivery id is what refuses a second one, even when
-- two arrive at once.
create table returns (
    return_id   uuid primary key,
    delivery_id uuid          not null unique,
    lead_id     uuid          not null,
    buyer_id    uuid          not null,
    price       numeric(14,2) not null,
    payout      numeric(14,2),
    reason_code text          not null,
    reason      text,
    returned_by text          not null,
    returned_at timestamptz   not null
);
create index returns_by_lead on returns (lead_id);

-- Auction events (lead.pinged, keyed by ping id) for the trace of the post that follows.
create table ping_events (
    event_id    uuid primary key,
    ping_id     uuid        not null,
    account_id  uuid        not null,
    type        text        not null,
    occurred_at timestamptz not null,
    topic       text        not null,
    "offset"    bigint      not null,
    payload     jsonb       not null
);
create index ping_events_by_ping on ping_events (ping_id, occurred_at);
