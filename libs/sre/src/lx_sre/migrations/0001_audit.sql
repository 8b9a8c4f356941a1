-- Every executed lxctl action that changes something: who, when, what, with what result.
create table audit (
    id         bigserial primary key,
    at         timestamptz not null default now(),
    actor      text        not null,
    command    text        not null,
    params     jsonb       not null,
    result     jsonb       not null
);
