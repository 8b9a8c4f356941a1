-- Read models of config.changed that ingest needs to accept leads.
create table campaigns (
    campaign_id uuid primary key,
    account_id  uuid  not null,
    status      text  not null,
    fields      jsonb not null
);
create table sources (
    source_id      uuid primary key,
    account_id     uuid  not null,
    campaign_id    uuid  not null,
    status         text  not null,
    api_key_sha256 text  not null unique
);

-- The PII key vault: one data key per lead, wrapped by a key-encryption key.
-- Deleting a row (crypto-shredding) makes that lead's PII unreadable everywhere.
create table lead_keys (
    key_id      uuid primary key,
    wrapped_key text        not null,
    created_at  timestamptz not null default now()
);

-- What a source can ask about its own leads.
create table leads (
    lead_id     uuid primary key,
    source_id   uuid        not null,
    campaign_id uuid        not null,
    account_id  uuid        not null,
    received_at timestamptz not null,
    status      text        not null default 'received',
    outcome_at  timestamptz,
    reason      text
);
