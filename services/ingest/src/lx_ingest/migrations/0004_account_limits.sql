-- Accounts over their plan's cap, as billing publishes them (AccountLimitChanged on
-- billing.limits). A state holds until period_end: the next period starts within the
-- plan whether or not billing has said so yet.
create table account_limits (
    account_id  uuid primary key,
    over_plan   boolean     not null,
    reason      text        not null,
    plan_name   text,
    period_end  timestamptz not null
);
