-- Data subjects' access and erasure, and retention per campaign.

-- What a source posted, as it travelled (LeadContent: fields in clear, PII sealed under
-- the lead's data key), so an access export can give it back; shredding the key leaves
-- it unreadable, and erasure deletes it as well. Null for leads stored before this.
alter table leads add column content jsonb;
-- When the lead's data key was destroyed, and why ('erasure' or 'retention').
alter table leads add column pii_shredded_at timestamptz;
alter table leads add column shred_cause text;
create index leads_retention on leads (campaign_id, received_at) where pii_shredded_at is null;

-- The subject index: which leads (and refused posts) of an account came with an e-mail
-- or phone, by an HMAC-SHA256 of the normalised value under the hash key (scope
-- "subject", account bound in the message). Never the value itself.
create table subject_index (
    account_id  uuid        not null,
    kind        text        not null,  -- 'email' | 'phone'
    value_hash  bytea       not null,
    lead_id     uuid        not null,  -- a lead, or a refused post (rejected_leads)
    indexed_at  timestamptz not null,
    primary key (account_id, kind, value_hash, lead_id)
);
create index subject_index_by_lead on subject_index (lead_id);

-- Data subjects' requests: access (answered at once) and erasure (performed at once,
-- or by the pruner's round if that failed). The subject is kept as its keyed hash only.
create table privacy_requests (
    request_id   uuid primary key,
    kind         text        not null,  -- 'access' | 'erasure'
    account_id   uuid        not null,
    subject_kind text        not null,  -- 'email' | 'phone'
    value_hash   bytea       not null,
    received_at  timestamptz not null,
    due_at       timestamptz not null,  -- received_at + 30 days
    status       text        not null,  -- 'pending' | 'completed'
    completed_at timestamptz,
    leads        integer,               -- leads (and refused posts) the subject had
    keys_shredded integer               -- erasure: data keys destroyed
);
create index privacy_requests_pending on privacy_requests (due_at) where status <> 'completed';

-- Retention per campaign: PII of leads older than this is shredded by the pruner.
-- Ingest's own setting (an operator API), not part of CampaignConfigured: see privacy.py.
create table campaign_retention (
    campaign_id    uuid primary key,
    retention_days integer     not null check (retention_days between 1 and 3650),
    updated_at     timestamptz not null
);

-- What each retention round shredded, per campaign (counts, no ids).
create table retention_runs (
    run_at      timestamptz not null,
    campaign_id uuid        not null,
    leads       integer     not null,
    primary key (campaign_id, run_at)
);
