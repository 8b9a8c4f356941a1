-- Transactional outbox: rows written in the same transaction as the state change,
-- published to Kafka by the relay, then deleted.
create table outbox (
    id          bigserial primary key,
    topic       text        not null,
    key         bytea,
    event_id    uuid,
    headers     jsonb       not null default '{}'::jsonb,
    value       bytea       not null,
    created_at  timestamptz not null default now()
);

-- Idempotent consumers: an event id recorded in the same transaction as its effect.
create table processed_events (
    consumer     text        not null,
    event_id     uuid        not null,
    topic        text        not null,
    partition    int         not null,
    "offset"     bigint      not null,
    processed_at timestamptz not null default now(),
    primary key (consumer, event_id)
);
