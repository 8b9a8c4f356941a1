"""Ingest's tables: config read models, the PII key vault, lead status (accepted and
refused), the duplicate index, source cap counters and idempotency keys."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lx_platform.crypto import KeyWrapper, new_data_key
from lx_schemas.events import (
    AccountLimitChangedPayload,
    CampaignState,
    DedupeRule,
    FieldSpec,
    LeadContent,
    Rejection,
    SourceState,
)
from lx_schemas.rules import PingPost, SourceCap, SourceCapPeriod, SourceControls
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_ingest import domain


@dataclass(frozen=True)
class SourceContext:
    source_id: uuid.UUID
    account_id: uuid.UUID
    campaign_id: uuid.UUID
    source_status: str
    campaign_status: str | None
    fields: tuple[FieldSpec, ...]
    dedupe: DedupeRule | None = None
    controls: SourceControls = field(default_factory=SourceControls)
    ping_post: PingPost = field(default_factory=PingPost)
    # Over its plan's cap until this instant (billing's AccountLimitChanged), and why.
    over_plan_until: dt.datetime | None = None
    over_plan_reason: str | None = None


async def source_by_key_hash(conn: AsyncConnection, key_sha256: str) -> SourceContext | None:
    row = (
        await conn.execute(
            text(
                "select s.source_id, s.account_id, s.campaign_id, s.status as source_status,"
                " s.controls, c.status as campaign_status, c.fields, c.dedupe, c.ping_post,"
                " l.period_end as over_plan_until, l.reason as over_plan_reason"
                " from sources s left join campaigns c using (campaign_id)"
                " left join account_limits l on l.account_id = s.account_id and l.over_plan"
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
        DedupeRule.model_validate(row.dedupe) if row.dedupe else None,
        SourceControls.model_validate(row.controls or {}),
        PingPost.model_validate(row.ping_post) if row.ping_post else PingPost(),
        row.over_plan_until,
        row.over_plan_reason,
    )


async def set_account_limit(
    conn: AsyncConnection, account_id: uuid.UUID, limit: AccountLimitChangedPayload
) -> None:
    """Keep billing's latest word on the account (``AccountLimitChangedPayload``); its
    topic is ordered per account, and a state of an earlier period never replaces one of
    a later."""
    await conn.execute(
        text(
            "insert into account_limits (account_id, over_plan, reason, plan_name, period_end)"
            " values (:a, :o, :r, :p, :e) on conflict (account_id) do update"
            " set over_plan = excluded.over_plan, reason = excluded.reason,"
            " plan_name = excluded.plan_name, period_end = excluded.period_end"
            " where account_limits.period_end <= excluded.period_end"
        ),
        {
            "a": account_id,
            "o": limit.over_plan,
            "r": limit.reason,
            "p": limit.plan_name,
            "e": limit.period_end,
        },
    )


async def upsert_campaign(conn: AsyncConnection, c: CampaignState) -> None:
    await conn.execute(
        text(
            "insert into campaigns (campaign_id, account_id, status, fields, dedupe, ping_post)"
            " values (:id, :a, :s, cast(:f as jsonb), cast(:d as jsonb), cast(:p as jsonb))"
            " on conflict (campaign_id) do update"
            " set account_id = excluded.account_id, status = excluded.status,"
            " fields = excluded.fields, dedupe = excluded.dedupe, ping_post = excluded.ping_post"
        ),
        {
            "id": c.campaign_id,
            "a": c.account_id,
            "s": c.status,
            "f": json.dumps([f.model_dump(mode="json") for f in c.fields]),
            "d": c.dedupe.model_dump_json() if c.dedupe else None,
            "p": c.ping_post.model_dump_json(),
        },
    )


async def upsert_source(conn: AsyncConnection, s: SourceState) -> None:
    await conn.execute(
        text(
            "insert into sources"
            " (source_id, account_id, campaign_id, status, api_key_sha256, controls)"
            " values (:id, :a, :c, :s, :h, cast(:ctl as jsonb)) on conflict (source_id) do update"
            " set account_id = excluded.account_id, campaign_id = excluded.campaign_id,"
            " status = excluded.status, api_key_sha256 = excluded.api_key_sha256,"
            " controls = excluded.controls"
        ),
        {
            "id": s.source_id,
            "a": s.account_id,
            "c": s.campaign_id,
            "s": s.status,
            "h": s.api_key_sha256,
            "ctl": s.controls.model_dump_json(),
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

    async def get_many(
        self, conn: AsyncConnection, key_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, bytes]:
        """The keys that exist among ``key_ids`` (shredded or unknown ones are left out)."""
        rows = await conn.execute(
            text("select key_id, wrapped_key from lead_keys where key_id = any(:ks)"),
            {"ks": list(key_ids)},
        )
        return {r.key_id: self.wrapper.unwrap(r.wrapped_key) for r in rows}

    async def get_or_create(self, conn: AsyncConnection, key_id: uuid.UUID) -> bytes:
        """A retry that continues a dead request's lead keeps that lead's key."""
        return await self.get(conn, key_id) or await self.create(conn, key_id)


async def insert_lead(
    conn: AsyncConnection,
    lead_id: uuid.UUID,
    ctx: SourceContext,
    received_at: dt.datetime,
    ping_id: uuid.UUID | None = None,
    content: LeadContent | None = None,
) -> bool:
    """Insert the lead's status row; False if it was there already (a retry taking over
    an idempotency key may find its lead stored by the request that died). ``content``:
    the lead as it travels (PII sealed), for the subject's access export."""
    inserted = await conn.scalar(
        text(
            "insert into leads"
            " (lead_id, source_id, campaign_id, account_id, received_at, ping_id, content)"
            " values (:l, :s, :c, :a, :r, :p, cast(:content as jsonb))"
            " on conflict (lead_id) do nothing returning true"
        ),
        {
            "l": lead_id,
            "s": ctx.source_id,
            "c": ctx.campaign_id,
            "a": ctx.account_id,
            "r": received_at,
            "p": ping_id,
            "content": content.model_dump_json() if content is not None else None,
        },
    )
    return bool(inserted)


@dataclass(frozen=True)
class CapTaken:
    """One unit of a source's cap counter, taken by a lead (and given back if undone)."""

    period: SourceCapPeriod
    period_start: dt.datetime


@dataclass(frozen=True)
class CapFull:
    period: SourceCapPeriod
    max_leads: int
    period_end: dt.datetime


async def take_caps(
    conn: AsyncConnection, source_id: uuid.UUID, caps: Sequence[SourceCap], now: dt.datetime
) -> tuple[list[CapTaken], list[CapFull]]:
    """Count the lead against each of the source's caps; return what it took and which
    caps were full. The caller rolls back its whole transaction when any was full.

    Exact under any concurrency, like the duplicate check: the check is the write.
    ``INSERT ... ON CONFLICT DO UPDATE ... WHERE count < max`` locks the period's row; a
    concurrent post waits on it and then evaluates the condition against the committed
    count. Counters are taken in one order (hour, day, month), after the duplicate
    index, so two posts never wait on each other in a cycle. Every cap is tried even
    after a full one, so the answer can name the latest moment to retry.
    """
    order = list(SourceCapPeriod)
    taken: list[CapTaken] = []
    full: list[CapFull] = []
    for cap in sorted(caps, key=lambda c: order.index(c.period)):
        start, end = domain.cap_period(cap.period, now)
        won = await conn.scalar(
            text(
                "insert into source_cap_counters as c (source_id, period, period_start, count)"
                " values (:s, :p, :start, 1)"
                " on conflict (source_id, period, period_start) do update"
                " set count = c.count + 1 where c.count < :max returning true"
            ),
            {"s": source_id, "p": cap.period.value, "start": start, "max": cap.max_leads},
        )
        if won:
            taken.append(CapTaken(cap.period, start))
        else:
            full.append(CapFull(cap.period, cap.max_leads, end))
    return taken, full


async def forget_lead(
    conn: AsyncConnection,
    lead_id: uuid.UUID,
    source_id: uuid.UUID | None = None,
    caps: Sequence[CapTaken] = (),
) -> None:
    """Undo an accepted-but-unpublished lead: nothing stays of a request that failed,
    and the cap units it took are given back."""
    await conn.execute(text("delete from leads where lead_id = :l"), {"l": lead_id})
    await conn.execute(text("delete from lead_keys where key_id = :l"), {"l": lead_id})
    await conn.execute(text("delete from dedupe_index where lead_id = :l"), {"l": lead_id})
    await conn.execute(text("delete from subject_index where lead_id = :l"), {"l": lead_id})
    for cap in caps:
        await conn.execute(
            text(
                "update source_cap_counters set count = count - 1"
                " where source_id = :s and period = :p and period_start = :start and count > 0"
            ),
            {"s": source_id, "p": cap.period.value, "start": cap.period_start},
        )


async def record_rejection(
    conn: AsyncConnection,
    *,
    lead_id: uuid.UUID,
    ctx: SourceContext,
    refused_at: dt.datetime,
    http_status: int,
    code: str,
    rejections: Sequence[Rejection],
    ping_id: uuid.UUID | None,
) -> None:
    await conn.execute(
        text(
            "insert into rejected_leads (lead_id, source_id, campaign_id, account_id,"
            " refused_at, http_status, code, rejections, ping_id)"
            " values (:l, :s, :c, :a, :at, :status, :code, cast(:r as jsonb), :p)"
            " on conflict (lead_id) do nothing"
        ),
        {
            "l": lead_id,
            "s": ctx.source_id,
            "c": ctx.campaign_id,
            "a": ctx.account_id,
            "at": refused_at,
            "status": http_status,
            "code": code,
            "r": json.dumps([r.model_dump(mode="json", exclude={"buyer_id"}) for r in rejections]),
            "p": ping_id,
        },
    )


async def lead_status(
    conn: AsyncConnection, lead_id: uuid.UUID, source_id: uuid.UUID
) -> dict[str, Any] | None:
    """One of the source's leads as stored: accepted (``kind`` "lead") or refused
    (``kind`` "rejected")."""
    row = (
        await conn.execute(
            text(
                "select 'lead' as kind, lead_id, status, received_at, outcome_at, reason,"
                " sales, returns, payout, rejection_codes, ping_id,"
                " null::text as code, null::jsonb as rejections from leads"
                " where lead_id = :l and source_id = :s"
                " union all"
                " select 'rejected', lead_id, 'rejected', refused_at, refused_at, null,"
                " 0, 0, null, null, ping_id, code, rejections from rejected_leads"
                " where lead_id = :l and source_id = :s"
            ),
            {"l": lead_id, "s": source_id},
        )
    ).first()
    return dict(row._mapping) if row else None


async def record_sales(conn: AsyncConnection, sales: Sequence[dict[str, Any]]) -> None:
    """Each sale once (the consumer dedupes events): a lead sold stays sold."""
    if sales:
        await conn.execute(
            text(
                "update leads set status = 'sold', outcome_at = coalesce(outcome_at, :at),"
                " reason = null, sales = sales + 1,"
                " payout = case when cast(:payout as numeric) is null then payout"
                " else coalesce(payout, 0) + cast(:payout as numeric) end"
                " where lead_id = :lead_id"
            ),
            sales,
        )


async def record_unsold(conn: AsyncConnection, unsold: Sequence[dict[str, Any]]) -> None:
    """No (further) buyer: unsold, unless an earlier sale made it sold (multi-sell)."""
    if unsold:
        await conn.execute(
            text(
                "update leads set rejection_codes = cast(:codes as jsonb),"
                " status = case when sales > 0 then status else 'unsold' end,"
                " outcome_at = case when sales > 0 then outcome_at else :at end,"
                " reason = case when sales > 0 then reason else :reason end"
                " where lead_id = :lead_id"
            ),
            unsold,
        )


async def record_returns(conn: AsyncConnection, returns: Sequence[dict[str, Any]]) -> None:
    if returns:
        await conn.execute(
            text(
                "update leads set returns = returns + 1,"
                " payout = case when cast(:payout as numeric) is null then payout"
                " else payout - cast(:payout as numeric) end"
                " where lead_id = :lead_id"
            ),
            returns,
        )


# --- the duplicate index --------------------------------------------------------------------


async def claim_dedupe_keys(
    conn: AsyncConnection,
    keys: Sequence[domain.DedupeKey],
    lead_id: uuid.UUID,
    *,
    seen_at: dt.datetime,
    window: dt.timedelta,
) -> set[str]:
    """Take ``keys`` for ``lead_id``; return the fields whose value another lead holds.

    Race-free because the check is the write: ``INSERT ... ON CONFLICT`` on the primary
    key. Of two transactions inserting the same key, the second waits on the first's
    uncommitted row; once the first commits, the second's ``DO UPDATE ... WHERE`` is
    evaluated against that committed row (still in the window: no row returned, a
    duplicate), and if the first rolled back, the second simply inserts. An entry
    outside the window (or expired, or left by this very lead on an earlier try) is
    taken over. The caller rolls back its whole transaction when any field is taken.
    Keys come sorted, so every transaction locks entries in the same order.
    """
    duplicated: set[str] = set()
    for key in keys:
        won = await conn.scalar(
            text(
                "insert into dedupe_index as d"
                " (scope, scope_id, field, value_hash, lead_id, seen_at, expires_at)"
                " values (:scope, :scope_id, :field, :hash, :lead, :seen, :expires)"
                " on conflict (scope, scope_id, field, value_hash) do update"
                " set lead_id = excluded.lead_id, seen_at = excluded.seen_at,"
                " expires_at = excluded.expires_at"
                " where d.lead_id = excluded.lead_id or d.seen_at <= :window_start"
                " or d.expires_at <= excluded.seen_at"
                " returning true"
            ),
            {
                "scope": key.scope.value,
                "scope_id": key.scope_id,
                "field": key.field,
                "hash": key.value_hash,
                "lead": lead_id,
                "seen": seen_at,
                "expires": seen_at + window,
                "window_start": seen_at - window,
            },
        )
        if not won:
            duplicated.add(key.field)
    return duplicated


# --- idempotency keys -----------------------------------------------------------------------


@dataclass(frozen=True)
class KeyClaim:
    """What ``claim_idempotency_key`` decided, and what the request needs to go on."""

    verdict: domain.KeyVerdict
    claim_id: uuid.UUID
    lead_id: uuid.UUID | None = None  # the lead a dead request had begun (take-over)
    status_code: int | None = None  # a replay's answer
    response: bytes | None = None


async def claim_idempotency_key(
    conn: AsyncConnection,
    source_id: uuid.UUID,
    key: str,
    fingerprint: bytes,
    *,
    now: dt.datetime,
    lease: dt.timedelta,
    ttl: dt.timedelta,
) -> KeyClaim:
    """Claim ``key`` for this request, or say why not. Commit right after, so that a
    concurrent request with the same key sees the claim.

    The unique key admits one inserter; everyone else reads the row ``FOR UPDATE``, so
    a take-over of a dead claim is decided by one request at a time.
    """
    claim_id = uuid.uuid4()
    params = {
        "src": source_id,
        "key": key,
        "fp": fingerprint,
        "claim": claim_id,
        "now": now,
        "lease": now + lease,
    }
    for _ in range(5):  # the row may vanish between the insert and the select (pruned)
        inserted = await conn.scalar(
            text(
                "insert into idempotency_keys"
                " (source_id, key, fingerprint, claim_id, created_at, lease_until)"
                " values (:src, :key, :fp, :claim, :now, :lease)"
                " on conflict (source_id, key) do nothing returning true"
            ),
            params,
        )
        if inserted:
            return KeyClaim(domain.KeyVerdict.NEW, claim_id)
        row = (
            await conn.execute(
                text(
                    "select fingerprint, created_at, lease_until, status_code, lead_id, response"
                    " from idempotency_keys where source_id = :src and key = :key for update"
                ),
                params,
            )
        ).first()
        if row is None:
            continue
        stored = domain.StoredKey(
            fingerprint=bytes(row.fingerprint),
            created_at=row.created_at,
            lease_until=row.lease_until,
            status_code=row.status_code,
            lead_id=row.lead_id,
        )
        verdict = domain.judge_key(stored, fingerprint, now=now, ttl=ttl)
        if verdict is domain.KeyVerdict.NEW:
            await conn.execute(
                text(
                    "update idempotency_keys set fingerprint = :fp, claim_id = :claim,"
                    " created_at = :now, lease_until = :lease, lead_id = null,"
                    " status_code = null, response = null, completed_at = null"
                    " where source_id = :src and key = :key"
                ),
                params,
            )
            return KeyClaim(verdict, claim_id)
        if verdict is domain.KeyVerdict.TAKE_OVER:
            await conn.execute(
                text(
                    "update idempotency_keys set claim_id = :claim, lease_until = :lease"
                    " where source_id = :src and key = :key"
                ),
                params,
            )
            return KeyClaim(verdict, claim_id, lead_id=stored.lead_id)
        if verdict is domain.KeyVerdict.REPLAY:
            return KeyClaim(
                verdict,
                claim_id,
                lead_id=stored.lead_id,
                status_code=stored.status_code,
                response=bytes(row.response),
            )
        return KeyClaim(verdict, claim_id)
    raise RuntimeError(f"idempotency key of source {source_id} kept vanishing")


async def record_key_lead(
    conn: AsyncConnection, source_id: uuid.UUID, key: str, claim_id: uuid.UUID, lead_id: uuid.UUID
) -> None:
    """In the lead's own transaction: a retry after a crash continues with this lead id."""
    await conn.execute(
        text(
            "update idempotency_keys set lead_id = :lead"
            " where source_id = :src and key = :key and claim_id = :claim"
        ),
        {"lead": lead_id, "src": source_id, "key": key, "claim": claim_id},
    )


async def answer_key(
    conn: AsyncConnection,
    source_id: uuid.UUID,
    key: str,
    claim_id: uuid.UUID,
    *,
    status_code: int,
    response: bytes,
    now: dt.datetime,
) -> None:
    """Remember the answer for the key's retries (only if this request still holds it)."""
    await conn.execute(
        text(
            "update idempotency_keys set status_code = :status, response = :body,"
            " completed_at = :now, lease_until = null"
            " where source_id = :src and key = :key and claim_id = :claim"
        ),
        {
            "status": status_code,
            "body": response,
            "now": now,
            "src": source_id,
            "key": key,
            "claim": claim_id,
        },
    )


async def release_key(
    conn: AsyncConnection, source_id: uuid.UUID, key: str, claim_id: uuid.UUID
) -> None:
    """Forget a claim whose request failed (5xx): the retry starts afresh."""
    await conn.execute(
        text(
            "delete from idempotency_keys"
            " where source_id = :src and key = :key and claim_id = :claim"
        ),
        {"src": source_id, "key": key, "claim": claim_id},
    )


async def hand_on_key(
    conn: AsyncConnection,
    source_id: uuid.UUID,
    key: str,
    claim_id: uuid.UUID,
    *,
    now: dt.datetime,
) -> None:
    """End this request's lease at once: the next retry takes the key (and its lead) over."""
    await conn.execute(
        text(
            "update idempotency_keys set lease_until = :now"
            " where source_id = :src and key = :key and claim_id = :claim"
        ),
        {"now": now, "src": source_id, "key": key, "claim": claim_id},
    )


# --- expiry ---------------------------------------------------------------------------------


async def _prune(
    conn: AsyncConnection, table: str, expired: str, params: dict[str, Any], limit: int
) -> int:
    """Delete up to ``limit`` rows of ``table`` matching ``expired`` (a fixed SQL
    condition of this module, never input), skipping rows another transaction holds."""
    result = await conn.execute(
        text(
            f"delete from {table} where ctid = any(array("
            f" select ctid from {table} where {expired}"
            " limit :n for update skip locked))"
        ),
        {**params, "n": limit},
    )
    return int(result.rowcount)


async def prune_idempotency_keys(
    conn: AsyncConnection, *, created_before: dt.datetime, now: dt.datetime, limit: int
) -> int:
    """Delete up to ``limit`` expired keys (never one a live request holds)."""
    return await _prune(
        conn,
        "idempotency_keys",
        "created_at < :before and (lease_until is null or lease_until < :now)",
        {"before": created_before, "now": now},
        limit,
    )


async def prune_cap_counters(conn: AsyncConnection, *, before: dt.datetime, limit: int) -> int:
    """Delete up to ``limit`` counters of periods that began before ``before``."""
    return await _prune(
        conn, "source_cap_counters", "period_start < :before", {"before": before}, limit
    )


async def prune_rejected_leads(conn: AsyncConnection, *, before: dt.datetime, limit: int) -> int:
    return await _prune(conn, "rejected_leads", "refused_at < :before", {"before": before}, limit)


async def prune_dedupe_index(conn: AsyncConnection, *, now: dt.datetime, limit: int) -> int:
    """Delete up to ``limit`` duplicate-index entries whose window has passed."""
    return await _prune(conn, "dedupe_index", "expires_at < :now", {"now": now}, limit)


# --- data subjects: the subject index, requests, shredding, retention -----------------------


async def index_subjects(
    conn: AsyncConnection,
    account_id: uuid.UUID,
    keys: Sequence[domain.SubjectKey],
    lead_id: uuid.UUID,
    now: dt.datetime,
) -> None:
    """Link a lead (or a refused post) to its subject's keyed hashes."""
    if keys:
        await conn.execute(
            text(
                "insert into subject_index (account_id, kind, value_hash, lead_id, indexed_at)"
                " values (:a, :k, :h, :l, :now) on conflict do nothing"
            ),
            [
                {"a": account_id, "k": k.kind.value, "h": k.value_hash, "l": lead_id, "now": now}
                for k in keys
            ],
        )


async def subject_lead_ids(
    conn: AsyncConnection, account_id: uuid.UUID, kind: domain.SubjectKind, value_hash: bytes
) -> list[uuid.UUID]:
    rows = await conn.execute(
        text(
            "select lead_id from subject_index where account_id = :a and kind = :k"
            " and value_hash = :h order by indexed_at, lead_id"
        ),
        {"a": account_id, "k": kind.value, "h": value_hash},
    )
    return [r.lead_id for r in rows]


async def leads_held(conn: AsyncConnection, lead_ids: Sequence[uuid.UUID]) -> list[dict[str, Any]]:
    """The leads among ``lead_ids`` as ingest holds them, oldest first."""
    rows = await conn.execute(
        text(
            "select lead_id, source_id, campaign_id, account_id, received_at, status,"
            " outcome_at, reason, sales, returns, payout, rejection_codes, ping_id, content,"
            " pii_shredded_at, shred_cause from leads where lead_id = any(:ids)"
            " order by received_at, lead_id"
        ),
        {"ids": list(lead_ids)},
    )
    return [dict(r._mapping) for r in rows]


async def refusals_held(
    conn: AsyncConnection, lead_ids: Sequence[uuid.UUID]
) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(
            "select lead_id, source_id, campaign_id, refused_at, http_status, code, rejections,"
            " ping_id from rejected_leads where lead_id = any(:ids) order by refused_at, lead_id"
        ),
        {"ids": list(lead_ids)},
    )
    return [dict(r._mapping) for r in rows]


async def shred_leads(
    conn: AsyncConnection, lead_ids: Sequence[uuid.UUID], *, cause: str, now: dt.datetime
) -> int:
    """Crypto-shred ``lead_ids``: destroy their data keys (their PII, sealed wherever it
    was copied, can no longer be opened), drop the sealed copy ingest kept, and delete
    every keyed hash that links them to their subject (subject and duplicate index).
    Returns how many data keys were destroyed."""
    ids = list(lead_ids)
    if not ids:
        return 0
    result = await conn.execute(
        text("delete from lead_keys where key_id = any(:ids)"), {"ids": ids}
    )
    await conn.execute(text("delete from subject_index where lead_id = any(:ids)"), {"ids": ids})
    await conn.execute(text("delete from dedupe_index where lead_id = any(:ids)"), {"ids": ids})
    await conn.execute(
        text(
            "update leads set content = null, pii_shredded_at = coalesce(pii_shredded_at, :now),"
            " shred_cause = coalesce(shred_cause, :cause) where lead_id = any(:ids)"
        ),
        {"ids": ids, "now": now, "cause": cause},
    )
    return int(result.rowcount)


async def insert_privacy_request(
    conn: AsyncConnection,
    *,
    request_id: uuid.UUID,
    kind: str,
    account_id: uuid.UUID,
    subject_kind: domain.SubjectKind,
    value_hash: bytes,
    received_at: dt.datetime,
) -> None:
    await conn.execute(
        text(
            "insert into privacy_requests (request_id, kind, account_id, subject_kind,"
            " value_hash, received_at, due_at, status)"
            " values (:id, :kind, :a, :sk, :h, :at, :due, 'pending')"
        ),
        {
            "id": request_id,
            "kind": kind,
            "a": account_id,
            "sk": subject_kind.value,
            "h": value_hash,
            "at": received_at,
            "due": received_at + domain.PRIVACY_DEADLINE,
        },
    )


async def complete_privacy_request(
    conn: AsyncConnection,
    request_id: uuid.UUID,
    *,
    now: dt.datetime,
    leads: int,
    keys_shredded: int | None = None,
) -> None:
    await conn.execute(
        text(
            "update privacy_requests set status = 'completed', completed_at = :now,"
            " leads = :leads, keys_shredded = :keys where request_id = :id"
        ),
        {"id": request_id, "now": now, "leads": leads, "keys": keys_shredded},
    )


_REQUEST_COLUMNS = (
    "request_id, kind, account_id, subject_kind, received_at, due_at, status, completed_at,"
    " leads, keys_shredded"
)


async def privacy_request(conn: AsyncConnection, request_id: uuid.UUID) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            text(f"select {_REQUEST_COLUMNS} from privacy_requests where request_id = :id"),
            {"id": request_id},
        )
    ).first()
    return dict(row._mapping) if row else None


async def privacy_requests(
    conn: AsyncConnection,
    *,
    account_id: uuid.UUID | None,
    status: str | None,
    overdue_at: dt.datetime | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Requests, the most urgent first; ``overdue_at``: only those not completed by then."""
    rows = await conn.execute(
        text(
            f"select {_REQUEST_COLUMNS} from privacy_requests"
            " where (cast(:a as uuid) is null or account_id = :a)"
            " and (cast(:s as text) is null or status = :s)"
            " and (cast(:od as timestamptz) is null or (status <> 'completed' and due_at <= :od))"
            " order by (status = 'completed'), due_at, request_id limit :n"
        ),
        {"a": account_id, "s": status, "od": overdue_at, "n": limit},
    )
    return [dict(r._mapping) for r in rows]


async def pending_erasures(conn: AsyncConnection, limit: int) -> list[dict[str, Any]]:
    """Erasures not performed yet (the first try failed), locked for this round."""
    rows = await conn.execute(
        text(
            "select request_id, account_id, subject_kind, value_hash from privacy_requests"
            " where kind = 'erasure' and status = 'pending' order by due_at"
            " limit :n for update skip locked"
        ),
        {"n": limit},
    )
    return [dict(r._mapping) for r in rows]


async def set_retention(
    conn: AsyncConnection, campaign_id: uuid.UUID, days: int | None, now: dt.datetime
) -> None:
    if days is None:
        await conn.execute(
            text("delete from campaign_retention where campaign_id = :c"), {"c": campaign_id}
        )
        return
    await conn.execute(
        text(
            "insert into campaign_retention (campaign_id, retention_days, updated_at)"
            " values (:c, :d, :now) on conflict (campaign_id) do update"
            " set retention_days = excluded.retention_days, updated_at = excluded.updated_at"
        ),
        {"c": campaign_id, "d": days, "now": now},
    )


async def retention_of(conn: AsyncConnection, campaign_id: uuid.UUID) -> dict[str, Any]:
    """The campaign's setting and what retention has shredded of it so far."""
    row = (
        await conn.execute(
            text(
                "select (select retention_days from campaign_retention where campaign_id = :c)"
                " as retention_days,"
                " (select updated_at from campaign_retention where campaign_id = :c)"
                " as updated_at,"
                " (select coalesce(sum(leads), 0) from retention_runs where campaign_id = :c)"
                " as leads_shredded,"
                " (select max(run_at) from retention_runs where campaign_id = :c) as last_run_at"
            ),
            {"c": campaign_id},
        )
    ).one()
    return dict(row._mapping)


async def campaign_account(conn: AsyncConnection, campaign_id: uuid.UUID) -> uuid.UUID | None:
    """The campaign's account, or None if ingest does not know the campaign (yet)."""
    account: uuid.UUID | None = await conn.scalar(
        text("select account_id from campaigns where campaign_id = :c"), {"c": campaign_id}
    )
    return account


async def campaign_known(conn: AsyncConnection, campaign_id: uuid.UUID) -> bool:
    found = await conn.scalar(
        text("select true from campaigns where campaign_id = :c"), {"c": campaign_id}
    )
    return bool(found)


async def leads_past_retention(
    conn: AsyncConnection, *, now: dt.datetime, limit: int
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Up to ``limit`` (lead, campaign) whose campaign's retention has run out and whose
    PII is not shredded yet, locked (skipping those another replica holds)."""
    rows = await conn.execute(
        text(
            "select l.lead_id, l.campaign_id from leads l"
            " join campaign_retention r using (campaign_id)"
            " where l.pii_shredded_at is null"
            " and l.received_at < :now - make_interval(days => r.retention_days)"
            " order by l.received_at limit :n for update of l skip locked"
        ),
        {"now": now, "n": limit},
    )
    return [(r.lead_id, r.campaign_id) for r in rows]


async def record_retention_run(
    conn: AsyncConnection, run_at: dt.datetime, counts: dict[uuid.UUID, int]
) -> None:
    if counts:
        await conn.execute(
            text(
                "insert into retention_runs (run_at, campaign_id, leads) values (:at, :c, :n)"
                " on conflict (campaign_id, run_at) do update"
                " set leads = retention_runs.leads + excluded.leads"
            ),
            [{"at": run_at, "c": c, "n": n} for c, n in counts.items()],
        )
