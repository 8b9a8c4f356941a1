-- What an operator decided about each dead letter. Kafka cannot delete a record, so a
-- dead letter's status lives here: no row = pending; the audit table keeps the history.
create table dead_letter_actions (
    dlq_topic     text        not null,
    dlq_partition int         not null,
    dlq_offset    bigint      not null,
    action        text        not null check (action in ('retried', 'dropped')),
    replay_id     uuid,
    reason        text,
    at            timestamptz not null default now(),
    actor         text        not null,
    primary key (dlq_topic, dlq_partition, dlq_offset)
);
