-- Hourly counts by campaign × source × buyer, bucketed by event time.
-- buyer_id is the nil UUID on lead-level rows (received, sold, unsold of the lead).
create table hourly_stats (
    hour        timestamptz   not null,
    campaign_id uuid          not null,
    source_id   uuid          not null,
    buyer_id    uuid          not null,
    received    bigint        not null default 0,
    offered     bigint        not null default 0,
    sold        bigint        not null default 0,
    unsold      bigint        not null default 0,
    rejected    bigint        not null default 0,
    errors      bigint        not null default 0,
    revenue     numeric(16,2) not null default 0,
    primary key (hour, campaign_id, source_id, buyer_id)
);
