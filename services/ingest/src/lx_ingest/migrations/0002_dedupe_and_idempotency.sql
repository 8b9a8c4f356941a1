-- A campaign's duplicate check (CampaignConfigured v2); null: no check.
alter table campaigns add column dedupe jsonb;

-- The duplicate index: one row per (scope, field, keyed hash of the normalised value),
-- naming the last lead accepted with that value in that scope. The primary key is the
-- check itself: a lead claims its values with INSERT ... ON CONFLICT in the transaction
-- that inserts it, so of two identical leads only one can hold a value at a time.
create table dedupe_index (
    scope      text        not null,  -- 'campaign' or 'account'
    scope_id   uuid        not null,  -- the campaign's or the account's id
    field      text        not null,
    value_hash bytea       not null,  -- HMAC-SHA256, never the value
    lead_id    uuid        not null,
    seen_at    timestamptz not null,
    expires_at timestamptz not null,  -- seen_at + the window it was accepted under
    primary key (scope, scope_id, field, value_hash)
);
create index dedupe_index_expiry on dedupe_index (expires_at);
create index dedupe_index_by_lead on dedupe_index (lead_id);

-- Idempotency-Key per source: in flight while lease_until is set and status_code null,
-- answered once status_code is set. Kept for LX_INGEST_IDEMPOTENCY_TTL_HOURS after
-- created_at, then pruned.
create table idempotency_keys (
    source_id    uuid        not null,
    key          text        not null,
    fingerprint  bytea       not null,  -- HMAC-SHA256 of the canonical JSON body
    claim_id     uuid        not null,  -- the request holding the key right now
    lead_id      uuid,                  -- set in the transaction that inserts the lead
    created_at   timestamptz not null,
    lease_until  timestamptz,
    status_code  smallint,
    response     bytea,                 -- the answer's body, byte for byte
    completed_at timestamptz,
    primary key (source_id, key)
);
create index idempotency_keys_created on idempotency_keys (created_at);
