-- API tokens expire (OWASP API2:2023: a leaked automation credential must not work
-- forever). Tokens made before this get the default lifetime from now, not from their
-- creation: automation already running is given time to rotate, never cut off at deploy.
alter table api_tokens add column expires_at timestamptz;
update api_tokens set expires_at = greatest(created_at, now()) + interval '90 days';
alter table api_tokens alter column expires_at set not null;
