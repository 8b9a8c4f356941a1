"""Ingest's tables: config read models, the PII key vault and lead status."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lx_platform.crypto import KeyWrapper, new_data_key
from lx_schemas.events import CampaignState, FieldSpec, SourceState
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection


@dataclass(frozen=True)
class SourceContext:
    source_id: uuid.UUID
    account_id: uuid.UUID
    campaign_id: uuid.UUID
    source_status: str
    campaign_status: str | None
    fields: tuple[FieldSpec, ...]


async def source_by_key_hash(conn: AsyncConnection, key_sha256: str) -> SourceContext | None:
    row = (
        await conn.execute(
            text(
                "select s.source_id, s.account_id, s.campaign_id, s.status as source_status,"
                " c.status as campaign_status, c.fields"
                " from sources s left join campaigns c using (campaign_id)"
                " where s.api_key_sha256 = :h"
            ),
            {"h": key_sha256},
        )
    ).first()
    if row is None:
        return None
    fields = tuple(FieldSpec.model_validate(f) for f in (row.fields or []))
    return SourceContext(
        row.source_id,
        row.account_id,
        row.campaign_id,
        row.source_status,
        row.campaign_status,
        fields,
    )


async def upsert_campaign(conn: AsyncConnection, c: CampaignState) -> None:
    await conn.execute(
        text(
            "insert into campaigns (campaign_id, account_id, status, fields)"
            " values (:id, :a, :s, cast(:f as jsonb)) on conflict (campaign_id) do update"
            " set account_id = excluded.account_id, status = excluded.status,"
            " fields = excluded.fields"
        ),
        {
            "id": c.campaign_id,
            "a": c.account_id,
            "s": c.status,
            "f": json.dumps([f.model_dump(mode="json") for f in c.fields]),
        },
    )


async def upsert_source(conn: AsyncConnection, s: SourceState) -> None:
    await conn.execute(
        text(
            "insert into sources (source_id, account_id, campaign_id, status, api_key_sha256)"
            " values (:id, :a, :c, :s, :h) on conflict (source_id) do update"
            " set account_id = excluded.account_id, campaign_id = excluded.campaign_id,"
            " status = excluded.status, api_key_sha256 = excluded.api_key_sha256"
        ),
        {
            "id": s.source_id,
            "a": s.account_id,
            "c": s.campaign_id,
            "s": s.status,
            "h": s.api_key_sha256,
        },
    )


class KeyVault:
    """Per-lead data keys, stored wrapped by the vault's key-encryption key."""

    def __init__(self, wrapper: KeyWrapper) -> None:
        self.wrapper = wrapper

    async def create(self, conn: AsyncConnection, key_id: uuid.UUID) -> bytes:
        key = new_data_key()
        await conn.execute(
            text("insert into lead_keys (key_id, wrapped_key) values (:k, :w)"),
            {"k": key_id, "w": self.wrapper.wrap(key)},
        )
        return key

    async def get(self, conn: AsyncConnection, key_id: uuid.UUID) -> bytes | None:
        wrapped = await conn.scalar(
            text("select wrapped_key from lead_keys where key_id = :k"), {"k": key_id}
        )
        return self.wrapper.unwrap(wrapped) if wrapped else None


async def insert_lead(
    conn: AsyncConnection, lead_id: uuid.UUID, ctx: SourceContext, received_at: dt.datetime
) -> None:
    await conn.execute(
        text(
            "insert into leads (lead_id, source_id, campaign_id, account_id, received_at)"
            " values (:l, :s, :c, :a, :r)"
        ),
        {
            "l": lead_id,
            "s": ctx.source_id,
            "c": ctx.campaign_id,
            "a": ctx.account_id,
            "r": received_at,
        },
    )


async def forget_lead(conn: AsyncConnection, lead_id: uuid.UUID) -> None:
    """Undo an accepted-but-unpublished lead: nothing stays of a request that failed."""
    await conn.execute(text("delete from leads where lead_id = :l"), {"l": lead_id})
    await conn.execute(text("delete from lead_keys where key_id = :l"), {"l": lead_id})


async def lead_status(
    conn: AsyncConnection, lead_id: uuid.UUID, source_id: uuid.UUID
) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            text(
                "select lead_id, status, received_at, outcome_at, reason from leads"
                " where lead_id = :l and source_id = :s"
            ),
            {"l": lead_id, "s": source_id},
        )
    ).first()
    return dict(row._mapping) if row else None


async def record_outcomes(conn: AsyncConnection, outcomes: Sequence[dict[str, Any]]) -> None:
    if outcomes:
        await conn.execute(
            text(
                "update leads set status = :status, outcome_at = :at, reason = :reason"
                " where lead_id = :lead_id"
            ),
            outcomes,
        )
