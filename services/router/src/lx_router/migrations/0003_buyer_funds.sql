-- Prepaid buyers' funds as billing last published them (billing.limits). A buyer with
-- no row is postpaid: it has funds until billing says otherwise.
create table buyer_funds (
    buyer_id    uuid primary key,
    has_funds   boolean       not null,
    balance     numeric(14,2) not null,
    occurred_at timestamptz   not null
);
