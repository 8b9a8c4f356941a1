-- Which account each campaign belongs to (CampaignConfigured on config.changed): a
-- tenant's reports and stats are its campaigns' rows only. Projection state.
create table campaign_accounts (
    campaign_id uuid primary key,
    account_id  uuid not null
);
create index campaign_accounts_by_account on campaign_accounts (account_id);

-- The account a scheduled export belongs to (the ExportConfigured envelope's account);
-- null: the platform's staff made it, over every account.
alter table exports add column account_id uuid;
