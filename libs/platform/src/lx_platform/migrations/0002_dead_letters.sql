-- What each consumer sent to a dead-letter topic, by position: a redelivery of the same
-- record is not dead-lettered twice, while the event id stays unclaimed in
-- processed_events, so re-publishing the event after a fix applies it.
create table dead_letters (
    consumer         text        not null,
    topic            text        not null,
    partition        int         not null,
    "offset"         bigint      not null,
    event_id         uuid,
    error            text        not null,
    dead_lettered_at timestamptz not null default now(),
    primary key (consumer, topic, partition, "offset")
);
