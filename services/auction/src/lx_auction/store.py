"""The auction's tables: campaigns, sources and buyers as configured, and each ping's
auction from its start to the post that claims it."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from lx_schemas.events import Bid, BuyerState, CampaignState, Rejection, SourceState
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

CENT = Decimal("0.01")

# --- configuration --------------------------------------------------------------------------


async def upsert_campaign(conn: AsyncConnection, c: CampaignState) -> None:
    await conn.execute(
        text(
            "insert into campaigns (campaign_id, account_id, state)"
            " values (:id, :a, cast(:s as jsonb)) on conflict (campaign_id) do update"
            " set account_id = excluded.account_id, state = excluded.state"
        ),
        {"id": c.campaign_id, "a": c.account_id, "s": c.model_dump_json()},
    )


async def upsert_source(conn: AsyncConnection, s: SourceState) -> None:
    await conn.execute(
        text(
            "insert into sources (source_id, campaign_id, state)"
            " values (:id, :c, cast(:s as jsonb)) on conflict (source_id) do update"
            " set campaign_id = excluded.campaign_id, state = excluded.state"
        ),
        {"id": s.source_id, "c": s.campaign_id, "s": s.model_dump_json()},
    )


async def upsert_buyer(conn: AsyncConnection, b: BuyerState) -> None:
    await conn.execute(
        text(
            "insert into buyers (buyer_id, campaign_id, state)"
            " values (:id, :c, cast(:s as jsonb)) on conflict (buyer_id) do update"
            " set campaign_id = excluded.campaign_id, state = excluded.state"
        ),
        {"id": b.buyer_id, "c": b.campaign_id, "s": b.model_dump_json()},
    )


@dataclass(frozen=True)
class Setting:
    """What an auction for a ping reads first, in one round trip: the ping's auction if
    it has one, its campaign and source, and the campaign's buyers."""

    auction: Auction | None
    campaign: CampaignState | None
    source: SourceState | None
    buyers: list[BuyerState]


async def setting(
    conn: AsyncConnection, ping_id: uuid.UUID, campaign_id: uuid.UUID, source_id: uuid.UUID
) -> Setting:
    row = (
        await conn.execute(
            text(
                "select (select state from campaigns where campaign_id = :c) as campaign,"
                " (select state from sources where source_id = :s) as source,"
                " (select coalesce(jsonb_agg(state order by buyer_id), '[]'::jsonb)"
                "    from buyers where campaign_id = :c) as buyers,"
                " (select to_jsonb(a) from auctions a where ping_id = :p) as auction"
            ),
            {"p": ping_id, "c": campaign_id, "s": source_id},
        )
    ).one()
    return Setting(
        _auction_json(row.auction) if row.auction is not None else None,
        CampaignState.model_validate(row.campaign) if row.campaign is not None else None,
        SourceState.model_validate(row.source) if row.source is not None else None,
        [BuyerState.model_validate(b) for b in row.buyers],
    )


# --- auctions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Auction:
    ping_id: uuid.UUID
    account_id: uuid.UUID
    campaign_id: uuid.UUID
    source_id: uuid.UUID
    status: str
    started_at: dt.datetime
    bids: tuple[Bid, ...]
    promised_payout: Decimal | None
    expires_at: dt.datetime | None
    duration_ms: float | None
    rejections: tuple[Rejection, ...]
    claimed_by: uuid.UUID | None

    @property
    def outcome(self) -> str:
        return "bid" if self.bids else "no_bid"


def _auction(row: Any) -> Auction:
    return Auction(
        row.ping_id,
        row.account_id,
        row.campaign_id,
        row.source_id,
        row.status,
        row.started_at,
        tuple(Bid.model_validate(b) for b in row.bids),
        row.promised_payout,
        row.expires_at,
        row.duration_ms,
        tuple(Rejection.model_validate(r) for r in row.rejections),
        row.claimed_by,
    )


def _auction_json(doc: dict[str, Any]) -> Auction:
    """An ``auctions`` row as ``to_jsonb`` gives it."""

    def at(key: str) -> dt.datetime | None:
        value = doc[key]
        return dt.datetime.fromisoformat(value) if value is not None else None

    payout = doc["promised_payout"]
    claimed_by = doc["claimed_by"]
    started_at = at("started_at")
    assert started_at is not None
    return Auction(
        uuid.UUID(doc["ping_id"]),
        uuid.UUID(doc["account_id"]),
        uuid.UUID(doc["campaign_id"]),
        uuid.UUID(doc["source_id"]),
        doc["status"],
        started_at,
        tuple(Bid.model_validate(b) for b in doc["bids"]),
        Decimal(str(payout)).quantize(CENT) if payout is not None else None,
        at("expires_at"),
        doc["duration_ms"],
        tuple(Rejection.model_validate(r) for r in doc["rejections"]),
        uuid.UUID(claimed_by) if claimed_by is not None else None,
    )


async def start_auction(
    conn: AsyncConnection,
    ping_id: uuid.UUID,
    account_id: uuid.UUID,
    campaign_id: uuid.UUID,
    source_id: uuid.UUID,
    abandoned_after_s: float,
) -> bool:
    """Claim the ping for an auction: True if this caller runs it (a new ping, or one
    whose auction was left running longer than ``abandoned_after_s`` by a dead process)."""
    row = await conn.execute(
        text(
            "insert into auctions (ping_id, account_id, campaign_id, source_id)"
            " values (:p, :a, :c, :s)"
            " on conflict (ping_id) do update set started_at = now()"
            " where auctions.status = 'running'"
            "   and auctions.started_at < now() - make_interval(secs => :after)"
            "   and auctions.source_id = excluded.source_id"
            " returning ping_id"
        ),
        {
            "p": ping_id,
            "a": account_id,
            "c": campaign_id,
            "s": source_id,
            "after": abandoned_after_s,
        },
    )
    return row.first() is not None


async def auction(conn: AsyncConnection, ping_id: uuid.UUID) -> Auction | None:
    row = (
        await conn.execute(text("select * from auctions where ping_id = :p"), {"p": ping_id})
    ).first()
    return _auction(row) if row is not None else None


async def close_auction(
    conn: AsyncConnection,
    ping_id: uuid.UUID,
    bids: tuple[Bid, ...],
    promised_payout: Decimal | None,
    expires_at: dt.datetime,
    duration_ms: float,
    rejections: tuple[Rejection, ...],
) -> Auction | None:
    """Record the result; None if the auction was closed already (by a takeover)."""
    row = await conn.execute(
        text(
            "update auctions set status = 'closed', bids = cast(:b as jsonb),"
            " promised_payout = :pp, expires_at = :exp, duration_ms = :d,"
            " rejections = cast(:r as jsonb) where ping_id = :p and status = 'running'"
            " returning *"
        ),
        {
            "p": ping_id,
            "b": json.dumps([b.model_dump(mode="json") for b in bids]),
            "pp": promised_payout,
            "exp": expires_at,
            "d": duration_ms,
            "r": json.dumps([r.model_dump(mode="json") for r in rejections]),
        },
    )
    closed = row.first()
    return _auction(closed) if closed is not None else None


async def abandon_auction(conn: AsyncConnection, ping_id: uuid.UUID) -> None:
    """Forget a running auction that failed before its result was recorded."""
    await conn.execute(
        text("delete from auctions where ping_id = :p and status = 'running'"), {"p": ping_id}
    )


async def claim(
    conn: AsyncConnection,
    ping_id: uuid.UUID,
    source_id: uuid.UUID,
    lead_id: uuid.UUID,
    now: dt.datetime,
) -> Auction | None:
    """Hand the auction to the post of ``lead_id``, atomically: the first lead to claim
    an open, unexpired auction with bids holds it, and only that lead gets it again."""
    row = (
        await conn.execute(
            text(
                "update auctions set claimed_by = :l, claimed_at = coalesce(claimed_at, :now)"
                " where ping_id = :p and source_id = :s and status = 'closed'"
                "   and jsonb_array_length(bids) > 0"
                "   and (claimed_by = :l or (claimed_by is null and expires_at > :now))"
                " returning *"
            ),
            {"p": ping_id, "s": source_id, "l": lead_id, "now": now},
        )
    ).first()
    return _auction(row) if row is not None else None
