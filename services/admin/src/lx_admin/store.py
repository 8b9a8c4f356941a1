"""Admin's tables: configuration entities (full state as JSON) and the trace model."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from lx_schemas.envelope import Frozen
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

ENTITY_TABLES = {
    "account": "accounts",
    "campaign": "campaigns",
    "source": "sources",
    "buyer": "buyers",
}


async def insert_entity(
    conn: AsyncConnection, kind: str, entity_id: uuid.UUID, state: Frozen, **parents: uuid.UUID
) -> None:
    table = ENTITY_TABLES[kind]
    cols = [f"{kind}_id", *parents, "state"]
    params: dict[str, Any] = {f"{kind}_id": entity_id, **parents, "state": state.model_dump_json()}
    values = ", ".join(f"cast(:{c} as jsonb)" if c == "state" else f":{c}" for c in cols)
    await conn.execute(text(f"insert into {table} ({', '.join(cols)}) values ({values})"), params)


async def update_entity(
    conn: AsyncConnection, kind: str, entity_id: uuid.UUID, state: Frozen
) -> None:
    await conn.execute(
        text(
            f"update {ENTITY_TABLES[kind]} set state = cast(:s as jsonb), updated_at = now()"
            f" where {kind}_id = :id"
        ),
        {"s": state.model_dump_json(), "id": entity_id},
    )


async def get_state(
    conn: AsyncConnection, kind: str, entity_id: uuid.UUID, *, for_update: bool = False
) -> dict[str, Any] | None:
    lock = " for update" if for_update else ""
    row = await conn.scalar(
        text(f"select state from {ENTITY_TABLES[kind]} where {kind}_id = :id{lock}"),
        {"id": entity_id},
    )
    return dict(row) if row is not None else None


async def entity_ids(conn: AsyncConnection, kind: str) -> list[uuid.UUID]:
    rows = await conn.scalars(
        text(f"select {kind}_id from {ENTITY_TABLES[kind]} order by created_at")
    )
    return list(rows)


async def list_states(
    conn: AsyncConnection, kind: str, parent: str, parent_id: uuid.UUID
) -> list[dict[str, Any]]:
    rows = await conn.scalars(
        text(f"select state from {ENTITY_TABLES[kind]} where {parent}_id = :p order by created_at"),
        {"p": parent_id},
    )
    return [dict(r) for r in rows]


async def _record_events(
    conn: AsyncConnection, table: str, key: str, rows: Sequence[dict[str, Any]]
) -> None:
    if rows:
        await conn.execute(
            text(
                f"insert into {table} (event_id, {key}, account_id, type, occurred_at, topic,"
                f' "offset", payload) values (:event_id, :{key}, :account_id, :type,'
                " :occurred_at, :topic, :offset, cast(:payload as jsonb))"
                " on conflict (event_id) do nothing"
            ),
            [{**r, "payload": json.dumps(r["payload"])} for r in rows],
        )


async def _events_of(
    conn: AsyncConnection, table: str, key: str, value: uuid.UUID
) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(
            'select event_id, type, occurred_at, topic, "offset", payload, account_id'
            f' from {table} where {key} = :v order by occurred_at, "offset"'
        ),
        {"v": value},
    )
    return [dict(r._mapping) for r in rows]


async def record_lead_events(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    await _record_events(conn, "lead_events", "lead_id", rows)


async def lead_events(conn: AsyncConnection, lead_id: uuid.UUID) -> list[dict[str, Any]]:
    return await _events_of(conn, "lead_events", "lead_id", lead_id)


async def record_ping_events(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    await _record_events(conn, "ping_events", "ping_id", rows)


async def ping_events(conn: AsyncConnection, ping_id: uuid.UUID) -> list[dict[str, Any]]:
    return await _events_of(conn, "ping_events", "ping_id", ping_id)


async def entity_names(
    conn: AsyncConnection, kind: str, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, str]:
    if not ids:
        return {}
    rows = await conn.execute(
        text(
            f"select {kind}_id as id, state->>'name' as name from {ENTITY_TABLES[kind]}"
            f" where {kind}_id = any(:ids)"
        ),
        {"ids": list(ids)},
    )
    return {r.id: r.name for r in rows}


# --- buyer tokens ---------------------------------------------------------------------------


async def insert_token(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(
        text(
            "insert into buyer_tokens (token_id, buyer_id, account_id, name, token_prefix,"
            " token_sha256) values (:token_id, :buyer_id, :account_id, :name, :token_prefix,"
            " :token_sha256)"
        ),
        row,
    )


async def list_tokens(conn: AsyncConnection, buyer_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(
            "select token_id, buyer_id, name, token_prefix, created_at, revoked_at"
            " from buyer_tokens where buyer_id = :b order by created_at"
        ),
        {"b": buyer_id},
    )
    return [dict(r._mapping) for r in rows]


async def revoke_token(
    conn: AsyncConnection, buyer_id: uuid.UUID, token_id: uuid.UUID
) -> dict[str, Any] | None:
    """Revoke (idempotently); None when the buyer has no such token."""
    row = (
        await conn.execute(
            text(
                "update buyer_tokens set revoked_at = coalesce(revoked_at, now())"
                " where buyer_id = :b and token_id = :t"
                " returning token_id, buyer_id, name, token_prefix, created_at, revoked_at"
            ),
            {"b": buyer_id, "t": token_id},
        )
    ).first()
    return dict(row._mapping) if row else None


async def buyer_of_token(conn: AsyncConnection, sha256: str) -> uuid.UUID | None:
    buyer: uuid.UUID | None = await conn.scalar(
        text("select buyer_id from buyer_tokens where token_sha256 = :h and revoked_at is null"),
        {"h": sha256},
    )
    return buyer


# --- sales and returns ----------------------------------------------------------------------

_SALE_COLUMNS = (
    "s.delivery_id, s.lead_id, s.account_id, s.campaign_id, s.source_id, s.buyer_id, s.price,"
    " s.payout, s.sale, s.buyer_lead_id, s.sold_at, r.return_id, r.reason_code as return_reason,"
    " r.returned_at"
)


async def record_sales(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(
            text(
                "insert into sales (delivery_id, lead_id, account_id, campaign_id, source_id,"
                " buyer_id, price, payout, sale, buyer_lead_id, sold_at, event_id) values"
                " (:delivery_id, :lead_id, :account_id, :campaign_id, :source_id, :buyer_id,"
                " :price, :payout, :sale, :buyer_lead_id, :sold_at, :event_id)"
                " on conflict (delivery_id) do nothing"
            ),
            rows,
        )


async def record_returns(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> list[Any]:
    """Insert returns not recorded yet; returns the ids inserted (a sale already returned,
    by this return or another, inserts nothing)."""
    if not rows:
        return []
    inserted = []
    for row in rows:
        result = await conn.scalar(
            text(
                "insert into returns (return_id, delivery_id, lead_id, buyer_id, price, payout,"
                " reason_code, reason, returned_by, returned_at) values (:return_id,"
                " :delivery_id, :lead_id, :buyer_id, :price, :payout, :reason_code, :reason,"
                " :returned_by, :returned_at) on conflict do nothing returning return_id"
            ),
            row,
        )
        if result is not None:
            inserted.append(result)
    return inserted


async def sales_of_lead(
    conn: AsyncConnection,
    lead_id: uuid.UUID,
    buyer_id: uuid.UUID | None = None,
    *,
    for_update: bool = False,
) -> list[dict[str, Any]]:
    by_buyer = " and s.buyer_id = :b" if buyer_id else ""
    lock = " for update of s" if for_update else ""
    rows = await conn.execute(
        text(
            f"select {_SALE_COLUMNS} from sales s left join returns r using (delivery_id)"
            f" where s.lead_id = :l{by_buyer} order by s.sale, s.sold_at{lock}"
        ),
        {"l": lead_id, "b": buyer_id},
    )
    return [dict(r._mapping) for r in rows]


async def sales_of_buyer(
    conn: AsyncConnection,
    buyer_id: uuid.UUID,
    *,
    limit: int,
    before: tuple[Any, uuid.UUID] | None = None,
) -> list[dict[str, Any]]:
    """A buyer's sales, newest first, keyset-paginated on (sold_at, delivery_id)."""
    after = " and (s.sold_at, s.delivery_id) < (:at, :d)" if before else ""
    rows = await conn.execute(
        text(
            f"select {_SALE_COLUMNS} from sales s left join returns r using (delivery_id)"
            f" where s.buyer_id = :b{after}"
            " order by s.sold_at desc, s.delivery_id desc limit :n"
        ),
        {
            "b": buyer_id,
            "n": limit,
            "at": before[0] if before else None,
            "d": before[1] if before else None,
        },
    )
    return [dict(r._mapping) for r in rows]


async def returns_of_lead(conn: AsyncConnection, lead_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text("select * from returns where lead_id = :l order by returned_at"), {"l": lead_id}
    )
    return [dict(r._mapping) for r in rows]


# --- users, sessions, API tokens --------------------------------------------------------------

_USER_COLUMNS = (
    "user_id, account_id, email, role, password_hash, totp_secret, totp_pending,"
    " totp_last_step, created_at, disabled_at"
)


async def insert_user(conn: AsyncConnection, row: dict[str, Any]) -> bool:
    """False when the e-mail address is taken (by a live or a disabled user)."""
    inserted = await conn.scalar(
        text(
            "insert into users (user_id, account_id, email, role, password_hash) values"
            " (:user_id, :account_id, :email, :role, :password_hash)"
            " on conflict do nothing returning user_id"
        ),
        row,
    )
    return inserted is not None


async def user(conn: AsyncConnection, user_id: uuid.UUID) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            text(f"select {_USER_COLUMNS} from users where user_id = :u"), {"u": user_id}
        )
    ).first()
    return dict(row._mapping) if row else None


async def user_by_email(conn: AsyncConnection, email: str) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            text(
                f"select {_USER_COLUMNS} from users where lower(email) = lower(:e)"
                " and disabled_at is null"
            ),
            {"e": email},
        )
    ).first()
    return dict(row._mapping) if row else None


async def users_of(conn: AsyncConnection, account_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(f"select {_USER_COLUMNS} from users where account_id = :a order by created_at"),
        {"a": account_id},
    )
    return [dict(r._mapping) for r in rows]


async def set_password_hash(conn: AsyncConnection, user_id: uuid.UUID, hashed: str) -> None:
    await conn.execute(
        text("update users set password_hash = :h where user_id = :u"), {"h": hashed, "u": user_id}
    )


async def use_totp_step(conn: AsyncConnection, user_id: uuid.UUID, step: int) -> bool:
    """Record ``step`` as the user's last used one; False when it (or a later one) was
    used already, by a request racing this one included."""
    done = await conn.scalar(
        text(
            "update users set totp_last_step = :s where user_id = :u"
            " and coalesce(totp_last_step, -1) < :s returning user_id"
        ),
        {"s": step, "u": user_id},
    )
    return done is not None


async def set_totp_pending(conn: AsyncConnection, user_id: uuid.UUID, sealed: str) -> None:
    await conn.execute(
        text("update users set totp_pending = cast(:p as jsonb) where user_id = :u"),
        {"p": sealed, "u": user_id},
    )


async def confirm_totp(conn: AsyncConnection, user_id: uuid.UUID, step: int) -> None:
    await conn.execute(
        text(
            "update users set totp_secret = totp_pending, totp_pending = null,"
            " totp_last_step = :s where user_id = :u"
        ),
        {"s": step, "u": user_id},
    )


async def disable_user(conn: AsyncConnection, user_id: uuid.UUID) -> None:
    await conn.execute(
        text("update users set disabled_at = coalesce(disabled_at, now()) where user_id = :u"),
        {"u": user_id},
    )
    await conn.execute(
        text("update sessions set revoked_at = coalesce(revoked_at, now()) where user_id = :u"),
        {"u": user_id},
    )


async def insert_session(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(
        text(
            "insert into sessions (session_id, user_id, token_sha256, mfa, expires_at) values"
            " (:session_id, :user_id, :token_sha256, :mfa, :expires_at)"
        ),
        row,
    )


async def session_principal(conn: AsyncConnection, sha256: str) -> dict[str, Any] | None:
    """The live session with this token hash, and its user (enabled)."""
    row = (
        await conn.execute(
            text(
                "select s.session_id, s.mfa, u.user_id, u.role, u.account_id from sessions s"
                " join users u using (user_id) where s.token_sha256 = :h"
                " and s.revoked_at is null and s.expires_at > now() and u.disabled_at is null"
            ),
            {"h": sha256},
        )
    ).first()
    return dict(row._mapping) if row else None


async def upgrade_session(conn: AsyncConnection, session_id: uuid.UUID) -> None:
    await conn.execute(
        text("update sessions set mfa = true where session_id = :s"), {"s": session_id}
    )


async def revoke_session(conn: AsyncConnection, session_id: uuid.UUID) -> None:
    await conn.execute(
        text("update sessions set revoked_at = coalesce(revoked_at, now()) where session_id = :s"),
        {"s": session_id},
    )


_AUTOMATION_COLUMNS = (
    "token_id, account_id, name, role, token_prefix, created_by, created_at, expires_at, revoked_at"
)


async def insert_api_token(conn: AsyncConnection, row: dict[str, Any]) -> dict[str, Any]:
    created = (
        await conn.execute(
            text(
                "insert into api_tokens (token_id, account_id, name, role, token_prefix,"
                " token_sha256, created_by, expires_at) values (:token_id, :account_id, :name,"
                " :role, :token_prefix, :token_sha256, :created_by, :expires_at)"
                f" returning {_AUTOMATION_COLUMNS}"
            ),
            row,
        )
    ).one()
    return dict(created._mapping)


async def api_token(conn: AsyncConnection, token_id: uuid.UUID) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            text(f"select {_AUTOMATION_COLUMNS} from api_tokens where token_id = :t"),
            {"t": token_id},
        )
    ).first()
    return dict(row._mapping) if row else None


async def api_tokens_of(conn: AsyncConnection, account_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(
            f"select {_AUTOMATION_COLUMNS} from api_tokens where account_id = :a"
            " order by created_at"
        ),
        {"a": account_id},
    )
    return [dict(r._mapping) for r in rows]


async def revoke_api_token(conn: AsyncConnection, token_id: uuid.UUID) -> None:
    await conn.execute(
        text("update api_tokens set revoked_at = coalesce(revoked_at, now()) where token_id = :t"),
        {"t": token_id},
    )


async def api_token_principal(conn: AsyncConnection, sha256: str) -> dict[str, Any] | None:
    """The live token of this hash; ``expired`` true once past its expiry (the database's
    clock decides, as for sessions)."""
    row = (
        await conn.execute(
            text(
                "select token_id, role, account_id, expires_at <= now() as expired"
                " from api_tokens where token_sha256 = :h and revoked_at is null"
            ),
            {"h": sha256},
        )
    ).first()
    return dict(row._mapping) if row else None


async def sale_account(conn: AsyncConnection, lead_id: uuid.UUID) -> uuid.UUID | None:
    account: uuid.UUID | None = await conn.scalar(
        text("select account_id from sales where lead_id = :l limit 1"), {"l": lead_id}
    )
    return account


_USER_SECRET_COLUMNS = ("totp_secret", "totp_pending")


async def sealed_user_secrets(conn: AsyncConnection) -> list[tuple[uuid.UUID, str, Any]]:
    """Every sealed TOTP secret (enrolled or pending) as (user, column, sealed), locked."""
    rows = await conn.execute(
        text("select user_id, totp_secret, totp_pending from users for update")
    )
    return [
        (row.user_id, column, getattr(row, column))
        for row in rows
        for column in _USER_SECRET_COLUMNS
        if getattr(row, column) is not None
    ]


async def set_user_secret(
    conn: AsyncConnection, user_id: uuid.UUID, column: str, sealed: Any
) -> None:
    assert column in _USER_SECRET_COLUMNS
    await conn.execute(
        text(f"update users set {column} = cast(:s as jsonb) where user_id = :u"),
        {"s": sealed.model_dump_json(), "u": user_id},
    )
