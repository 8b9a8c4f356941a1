-- Metered usage per account and calendar month (UTC), from usage.incremented.
create table usage_monthly (
    account_id uuid   not null,
    month      date   not null,
    metric     text   not null,
    quantity   bigint not null,
    primary key (account_id, month, metric)
);

-- Double-entry ledger in USD: every transaction's entries sum to zero
-- (debits positive, credits negative).
create table ledger_transactions (
    txn_id          uuid primary key,
    account_id      uuid        not null,
    kind            text        not null,
    lead_id         uuid,
    buyer_id        uuid,
    amount          numeric(14,2) not null,
    occurred_at     timestamptz not null,
    source_event_id uuid        not null unique
);
create table ledger_entries (
    txn_id         uuid          not null references ledger_transactions,
    ledger_account text          not null,
    amount         numeric(14,2) not null,
    primary key (txn_id, ledger_account)
);
create index ledger_by_account on ledger_transactions (account_id, occurred_at);
