-- SourceConfigured v2: a source's controls (caps, rates, IP allow-list).
alter table sources add column controls jsonb not null default '{}';
-- CampaignConfigured v3: the campaign's ping-post settings.
alter table campaigns add column ping_post jsonb;

-- A source's caps: one counter per (source, period, period start), UTC calendar periods.
-- A lead takes its counters in the transaction that stores it, with a conditional
-- INSERT ... ON CONFLICT DO UPDATE ... WHERE count < max: the row lock serialises
-- concurrent posts and the last unit of a cap goes to exactly one of them.
create table source_cap_counters (
    source_id    uuid        not null,
    period       text        not null,  -- 'hour', 'day', 'month'
    period_start timestamptz not null,
    count        integer     not null,
    primary key (source_id, period, period_start)
);
create index source_cap_counters_start on source_cap_counters (period_start);

-- A lead's outcome as its source may see it (consumed from delivery.outcome).
alter table leads add column sales integer not null default 0;
alter table leads add column returns integer not null default 0;
alter table leads add column payout numeric(14, 2);
alter table leads add column rejection_codes jsonb;  -- unsold: one code per buyer reason
alter table leads add column ping_id uuid;

-- Posts ingest refused once it knew their source: the source can ask why (GET
-- /v1/leads/{id}), and LeadRejected went out through the outbox with the same row.
create table rejected_leads (
    lead_id     uuid primary key,
    source_id   uuid        not null,
    campaign_id uuid        not null,
    account_id  uuid        not null,
    refused_at  timestamptz not null,
    http_status smallint    not null,
    code        text        not null,  -- the answer's error code (invalid_fields, source_cap...)
    rejections  jsonb       not null,  -- [{code, detail, field}], never a value
    ping_id     uuid
);
create index rejected_leads_refused_at on rejected_leads (refused_at);
