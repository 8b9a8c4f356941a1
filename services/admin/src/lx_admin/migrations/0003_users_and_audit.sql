-- The people of an account (its tenant) and the platform's own staff (superuser, no
-- account). Passwords as argon2id PHC strings; the TOTP secret sealed under the config
-- keys; the last accepted TOTP time step, so that a code is accepted once.
create table users (
    user_id        uuid primary key,
    account_id     uuid references accounts,
    email          text        not null,
    role           text        not null check (role in
                   ('owner', 'admin', 'operator', 'analyst', 'billing', 'read_only', 'superuser')),
    password_hash  text        not null,
    totp_secret    jsonb,
    totp_pending   jsonb,
    totp_last_step bigint,
    created_at     timestamptz not null default now(),
    disabled_at    timestamptz,
    constraint users_staff_have_no_account check ((role = 'superuser') = (account_id is null))
);
create unique index users_by_email on users (lower(email));
create index users_by_account on users (account_id, created_at);

-- Login sessions: bearer tokens kept as SHA-256 only; short-lived. ``mfa`` false: a
-- password alone, which may only enrol a second factor.
create table sessions (
    session_id   uuid primary key,
    user_id      uuid        not null references users,
    token_sha256 text        not null unique,
    mfa          boolean     not null,
    created_at   timestamptz not null default now(),
    expires_at   timestamptz not null,
    revoked_at   timestamptz
);
create index sessions_by_user on sessions (user_id);

-- API tokens for automation: a role in one account, shown once, kept as SHA-256.
create table api_tokens (
    token_id     uuid primary key,
    account_id   uuid        not null references accounts,
    name         text        not null,
    role         text        not null check (role in
                 ('owner', 'admin', 'operator', 'analyst', 'billing', 'read_only')),
    token_prefix text        not null,
    token_sha256 text        not null unique,
    created_by   text        not null,
    created_at   timestamptz not null default now(),
    revoked_at   timestamptz
);
create index api_tokens_by_account on api_tokens (account_id, created_at);

-- The audit log: append-only, each row chained to the one before by its hash
-- (lx_admin.audit). No foreign keys: an entry outlives whatever it names.
create table audit_log (
    seq         bigserial primary key,
    audit_id    uuid        not null unique,
    at          timestamptz not null,
    account_id  uuid,
    actor       text        not null,
    action      text        not null,
    entity_kind text        not null,
    entity_id   uuid,
    before      jsonb,
    after       jsonb,
    prev_hash   text        not null,
    hash        text        not null
);
create index audit_log_by_account on audit_log (account_id, seq);

create function audit_log_refuse_change() returns trigger language plpgsql as $$
begin
    raise exception 'audit_log is append-only' using errcode = 'insufficient_privilege';
end
$$;
create trigger audit_log_append_only before update or delete on audit_log
    for each row execute function audit_log_refuse_change();
create trigger audit_log_no_truncate before truncate on audit_log
    for each statement execute function audit_log_refuse_change();
