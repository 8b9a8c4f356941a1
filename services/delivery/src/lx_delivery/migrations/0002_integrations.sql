-- What an offer needs beyond its price (LeadRouted v2): whether the buyer names the
-- price, the source's payout rule, which sale of the lead it is, the auction it won.
alter table deliveries
    add column price_from_response boolean not null default false,
    add column payout              jsonb   not null default '{"fixed": "0.00", "percent": null}',
    add column sale                int     not null default 1,
    add column ping_id             uuid,
    add column bid_ref             text;

-- What each final try decided, for the trace: the price paid, the buyer's own lead id,
-- the reason code.
alter table delivery_tries
    add column reason_code   text,
    add column price         numeric(14,2),
    add column buyer_lead_id text;

-- One row per sale of a lead (multi-sell: up to the campaign's max_sales), so each sale
-- is booked once whatever is replayed. lead_outcomes keeps the lead's first final outcome.
create table lead_sales (
    lead_id     uuid not null,
    sale        int  not null,
    delivery_id uuid not null,
    sold_at     timestamptz not null default now(),
    primary key (lead_id, sale)
);
