-- Plans, subscriptions, payments, prepaid buyers, invoices and limit states: all projected
-- from billing.operations (and, for limits and funds, derived from the ledger and usage).

-- Plans are immutable once defined (a new price is a new plan).
create table plans (
    plan_id        uuid primary key,
    name           text          not null,
    monthly_fee    numeric(14,2) not null,
    included_leads bigint        not null,
    overage_price  numeric(14,2) not null,
    hard_cap       bigint
);

-- A subscription covers whole UTC months [starts_on, ends_on); its plan per month is
-- the term with the latest effective_from on or before the month.
create table subscriptions (
    subscription_id uuid primary key,
    account_id      uuid not null,
    starts_on       date not null,
    ends_on         date
);
create index subscriptions_by_account on subscriptions (account_id, starts_on);
create table subscription_terms (
    subscription_id uuid not null references subscriptions,
    effective_from  date not null,
    plan_id         uuid not null,
    primary key (subscription_id, effective_from)
);

-- Payments by accounts to the platform, and prepaid buyers' deposits, with the
-- operator's reference and the payment provider's reference kept as data.
create table payments (
    payment_id   uuid primary key,
    account_id   uuid          not null,
    buyer_id     uuid,
    kind         text          not null,  -- 'payment' (account) or 'deposit' (buyer)
    amount       numeric(14,2) not null,
    method       text          not null,
    reference    text          not null,
    provider     text,
    provider_ref text,
    received_at  timestamptz   not null
);
create index payments_by_account on payments (account_id, received_at);

-- Prepaid buyers: those with a deposit or a credit limit. has_funds is the state last
-- published (BuyerFundsChanged); the balance itself is the ledger's.
create table prepaid_buyers (
    buyer_id     uuid primary key,
    account_id   uuid          not null,
    credit_limit numeric(14,2) not null default 0,
    has_funds    boolean       not null default true
);

-- Each account's limit state for its latest period with usage.
create table account_limits (
    account_id   uuid primary key,
    period_start date    not null,
    over_plan    boolean not null,
    plan_id      uuid,
    hard_cap     bigint
);

create table invoices (
    invoice_id   uuid primary key,
    account_id   uuid          not null,
    period_start date          not null,
    period_end   date          not null,
    plan_id      uuid,
    status       text          not null,  -- issued, paid, void
    amount_due   numeric(14,2) not null,
    issued_at    timestamptz   not null,
    paid_at      timestamptz,
    payment_id   uuid,
    voided_at    timestamptz,
    void_reason  text
);
create index invoices_by_account on invoices (account_id, period_start);
create table invoice_lines (
    invoice_id uuid          not null references invoices,
    line_no    int           not null,
    kind       text          not null,
    description text         not null,
    quantity   bigint        not null,
    unit_price numeric(14,2),
    amount     numeric(14,2) not null,
    buyer_id   uuid,
    reference  text,
    primary key (invoice_id, line_no)
);

-- A buyer's funds are the sum of its receivable's entries.
create index ledger_entries_by_account on ledger_entries (ledger_account);
