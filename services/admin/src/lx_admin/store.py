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


async def list_states(
    conn: AsyncConnection, kind: str, parent: str, parent_id: uuid.UUID
) -> list[dict[str, Any]]:
    rows = await conn.scalars(
        text(f"select state from {ENTITY_TABLES[kind]} where {parent}_id = :p order by created_at"),
        {"p": parent_id},
    )
    return [dict(r) for r in rows]


async def record_lead_events(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(
            text(
                "insert into lead_events (event_id, lead_id, account_id, type, occurred_at, topic,"
                ' "offset", payload) values (:event_id, :lead_id, :account_id, :type,'
                " :occurred_at, :topic, :offset, cast(:payload as jsonb))"
                " on conflict (event_id) do nothing"
            ),
            [{**r, "payload": json.dumps(r["payload"])} for r in rows],
        )


async def lead_events(conn: AsyncConnection, lead_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(
            'select event_id, type, occurred_at, topic, "offset", payload, account_id'
            ' from lead_events where lead_id = :l order by occurred_at, "offset"'
        ),
        {"l": lead_id},
    )
    return [dict(r._mapping) for r in rows]
