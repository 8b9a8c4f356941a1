"""Router's tables: the configuration it routes by, each lead's walk down its plan, the
offers made with the cap buckets they reserved, and the per-buyer duplicate index."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg.errors
from lx_routing import caps
from lx_schemas.events import (
    BuyerFundsChanged,
    BuyerState,
    CampaignState,
    LeadContent,
    Rejection,
    SourceState,
)
from lx_schemas.rules import Cap, Margin
from pydantic import TypeAdapter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_router.domain import PlannedOffer, Walk

# --- configuration --------------------------------------------------------------------------


async def upsert_buyer(conn: AsyncConnection, b: BuyerState) -> None:
    await conn.execute(
        text(
            "insert into buyers (buyer_id, campaign_id, status, price, priority, name, state)"
            " values (:id, :c, :s, :p, :pr, :n, cast(:st as jsonb))"
            " on conflict (buyer_id) do update set"
            " campaign_id = excluded.campaign_id, status = excluded.status,"
            " price = excluded.price, priority = excluded.priority, name = excluded.name,"
            " state = excluded.state"
        ),
        {
            "id": b.buyer_id,
            "c": b.campaign_id,
            "s": b.status,
            "p": b.price,
            "pr": b.priority,
            "n": b.name,
            "st": b.model_dump_json(),
        },
    )


async def upsert_campaign(conn: AsyncConnection, c: CampaignState) -> None:
    await conn.execute(
        text(
            "insert into campaigns (campaign_id, state) values (:id, cast(:st as jsonb))"
            " on conflict (campaign_id) do update set state = excluded.state"
        ),
        {"id": c.campaign_id, "st": c.model_dump_json()},
    )


async def upsert_source(conn: AsyncConnection, s: SourceState) -> None:
    await conn.execute(
        text(
            "insert into sources (source_id, campaign_id, state)"
            " values (:id, :c, cast(:st as jsonb))"
            " on conflict (source_id) do update set"
            " campaign_id = excluded.campaign_id, state = excluded.state"
        ),
        {"id": s.source_id, "c": s.campaign_id, "st": s.model_dump_json()},
    )


async def campaign_buyers(conn: AsyncConnection, campaign_id: uuid.UUID) -> list[BuyerState]:
    """The campaign's buyers as last configured (rows from before BuyerConfigured v2,
    which lack a full state, are left out until the buyer is configured again)."""
    rows = await conn.execute(
        text("select state from buyers where campaign_id = :c and state is not null"),
        {"c": campaign_id},
    )
    return [BuyerState.model_validate(r.state) for r in rows]


async def campaign(conn: AsyncConnection, campaign_id: uuid.UUID) -> CampaignState | None:
    row = (
        await conn.execute(
            text("select state from campaigns where campaign_id = :c"), {"c": campaign_id}
        )
    ).first()
    return None if row is None else CampaignState.model_validate(row.state)


async def source(conn: AsyncConnection, source_id: uuid.UUID) -> SourceState | None:
    row = (
        await conn.execute(text("select state from sources where source_id = :s"), {"s": source_id})
    ).first()
    return None if row is None else SourceState.model_validate(row.state)


async def next_round_robin(conn: AsyncConnection, campaign_id: uuid.UUID) -> int:
    """This lead's turn in its campaign's rotation (0, 1, 2... lead by lead)."""
    row = await conn.execute(
        text(
            "insert into round_robin (campaign_id, counter) values (:c, 0)"
            " on conflict (campaign_id) do update set counter = round_robin.counter + 1"
            " returning counter"
        ),
        {"c": campaign_id},
    )
    counter: int = row.scalar_one()
    return counter


# --- routings -------------------------------------------------------------------------------

# --- routings -------------------------------------------------------------------------------


@dataclass
class Routing:
    lead_id: uuid.UUID
    account_id: uuid.UUID
    campaign_id: uuid.UUID
    source_id: uuid.UUID
    lead: LeadContent
    walk: Walk
    status: str  # routing | sold | exhausted
    margin: Margin
    ping_id: uuid.UUID | None = None
    promised: Decimal | None = None


_REJECTIONS = TypeAdapter(list[Rejection])


async def routed_already(conn: AsyncConnection, lead_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these leads have a routing (routed before, e.g. a replayed lead.received)."""
    if not lead_ids:
        return set()
    rows = await conn.execute(
        text("select lead_id from routings where lead_id = any(cast(:ids as uuid[]))"),
        {"ids": list(lead_ids)},
    )
    return {r.lead_id for r in rows}


class _Docs:
    """Rows' JSON for one statement. Leads of a batch share plan entries (one buyer, one
    price, one payout) and, screening being shared (``ScreenMemo``), rejection objects:
    each is dumped once per statement. Keys by ``id`` are safe here: every object keyed
    is held by the routings being written for as long as this lives."""

    def __init__(self) -> None:
        self._entries: dict[tuple[object, ...], dict[str, Any]] = {}
        self._rejections: dict[int, Any] = {}

    def plan(self, plan: Sequence[PlannedOffer]) -> list[dict[str, Any]]:
        out = []
        for o in plan:
            key = (o.buyer_id, o.price, id(o.payout), o.price_from_response, o.bid_ref)
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = {
                    "buyer_id": str(o.buyer_id),
                    "price": str(o.price),
                    "payout": o.payout.model_dump(mode="json"),
                    "price_from_response": o.price_from_response,
                    "bid_ref": o.bid_ref,
                }
            out.append(entry)
        return out

    def rejections(self, rejections: Sequence[Rejection]) -> list[Any]:
        out = []
        for x in rejections:
            doc = self._rejections.get(id(x))
            if doc is None:
                doc = self._rejections[id(x)] = x.model_dump(mode="json")
            out.append(doc)
        return out

    def walk(self, r: Routing) -> dict[str, Any]:
        w = r.walk
        return {
            "l": str(r.lead_id),
            "plan": self.plan(w.plan),
            "pos": w.position,
            "att": w.attempt,
            "sales": w.sales,
            "mx": w.max_sales,
            "rej": self.rejections(w.rejections),
            "st": r.status,
        }


# Rows go to PostgreSQL as one JSON document (``jsonb_to_recordset``) rather than as
# arrays, one per column: psycopg escapes array elements in Python, which for the large
# JSON columns (the lead, its plan, its reasons) cost more than deciding the leads.
_WALK_COLUMNS = "l uuid, plan jsonb, pos int, att int, sales int, mx int, rej jsonb, st text"


def _doc(rows: Sequence[dict[str, Any]]) -> str:
    return json.dumps(rows, separators=(",", ":"))


async def insert_routings(conn: AsyncConnection, rs: Sequence[Routing]) -> int:
    """Insert new routings in one statement; returns how many were new."""
    if not rs:
        return 0
    docs = _Docs()
    rows = await conn.execute(
        text(
            "insert into routings (lead_id, account_id, campaign_id, source_id, lead, plan,"
            " position, attempt, sales, max_sales, rejections, status, ping_id, margin, promised)"
            " select l, a, c, s, lead, plan, pos, att, sales, mx, rej, st, ping, margin, prom"
            f" from jsonb_to_recordset(cast(:rows as jsonb)) as v({_WALK_COLUMNS},"
            " a uuid, c uuid, s uuid, lead jsonb, ping uuid, margin jsonb, prom numeric)"
            " on conflict (lead_id) do nothing returning lead_id"
        ),
        {
            "rows": _doc(
                [
                    {
                        **docs.walk(r),
                        "a": str(r.account_id),
                        "c": str(r.campaign_id),
                        "s": str(r.source_id),
                        "lead": r.lead.model_dump(mode="json"),
                        "ping": str(r.ping_id) if r.ping_id is not None else None,
                        "margin": r.margin.model_dump(mode="json"),
                        "prom": str(r.promised) if r.promised is not None else None,
                    }
                    for r in rs
                ]
            )
        },
    )
    return len(rows.all())


def _routing(row: Any) -> Routing:
    walk = Walk(
        plan=[PlannedOffer.from_json(o) for o in row.plan],
        position=row.position,
        attempt=row.attempt,
        sales=row.sales,
        max_sales=row.max_sales,
        rejections=_REJECTIONS.validate_python(row.rejections),
    )
    return Routing(
        row.lead_id,
        row.account_id,
        row.campaign_id,
        row.source_id,
        LeadContent.model_validate(row.lead),
        walk,
        row.status,
        Margin.model_validate(row.margin),
        row.ping_id,
        row.promised,
    )


async def routings_for_update(
    conn: AsyncConnection, lead_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, Routing]:
    """These leads' routings, locked (in lead id order, so two routers never wait on each
    other in a cycle); leads without one are left out."""
    if not lead_ids:
        return {}
    rows = await conn.execute(
        text(
            "select * from routings where lead_id = any(cast(:ids as uuid[]))"
            " order by lead_id for update"
        ),
        {"ids": sorted(set(lead_ids))},
    )
    return {r.lead_id: _routing(r) for r in rows}


async def save_routings(conn: AsyncConnection, rs: Sequence[Routing]) -> None:
    if not rs:
        return
    docs = _Docs()
    await conn.execute(
        text(
            "update routings r set plan = v.plan, position = v.pos, attempt = v.att,"
            " sales = v.sales, max_sales = v.mx, rejections = v.rej, status = v.st,"
            " updated_at = now()"
            f" from jsonb_to_recordset(cast(:rows as jsonb)) as v({_WALK_COLUMNS})"
            " where r.lead_id = v.l"
        ),
        {"rows": _doc([docs.walk(r) for r in sorted(rs, key=lambda r: r.lead_id)])},
    )


# --- caps as reservations -------------------------------------------------------------------


class DecisionConflictError(psycopg.errors.SerializationFailure):
    """Another router committed, between this batch's reading of a cap counter or of the
    duplicate index and its writing, what this batch's decisions did not count on. A
    serialization failure on purpose: the platform's consumer treats it as transient and
    retries the batch, which then decides on what was committed."""


@dataclass(frozen=True)
class Reservation:
    """What one offer took of one cap bucket."""

    period: str
    unit: str  # leads | usd
    bucket: dt.datetime
    amount: Decimal

    def to_json(self) -> dict[str, str]:
        return {
            "period": self.period,
            "unit": self.unit,
            "bucket": self.bucket.isoformat(),
            "amount": str(self.amount),
        }

    @classmethod
    def from_json(cls, data: dict[str, str]) -> Reservation:
        return cls(
            data["period"],
            data["unit"],
            dt.datetime.fromisoformat(data["bucket"]),
            Decimal(data["amount"]),
        )


def _unit(cap: Cap) -> str:
    return "leads" if cap.max_leads is not None else "usd"


def ordered_caps(buyer_caps: Sequence[Cap]) -> list[Cap]:
    """One order for a buyer's counters (the order they are reserved and refused in)."""
    return sorted(buyer_caps, key=lambda c: (c.period.value, _unit(c)))


CounterKey = tuple[uuid.UUID, str, str, dt.datetime]  # buyer, period, unit, bucket


def counter_key(buyer_id: uuid.UUID, cap: Cap, timezone: str, now: dt.datetime) -> CounterKey:
    return (buyer_id, cap.period.value, _unit(cap), caps.bucket_start(cap.period, timezone, now))


_READ_COUNTERS = text(
    "select buyer_id, period, unit, bucket, used from cap_counters"
    " join unnest(cast(:b as uuid[]), cast(:p as text[]), cast(:u as text[]),"
    " cast(:k as timestamptz[])) as v(b, p, u, k)"
    " on buyer_id = v.b and period = v.p and unit = v.u and bucket = v.k"
)

# Adds each counter's reservations of the batch, but only where the sum stays within the
# cap: the check is the write, under the row's lock, so of two routers the second waits
# for the first's commit and is judged against it (READ COMMITTED re-checks the WHERE).
_ADD_TO_COUNTERS = text(
    "with v as (select * from unnest(cast(:b as uuid[]), cast(:p as text[]),"
    " cast(:u as text[]), cast(:k as timestamptz[]), cast(:n as numeric[]),"
    " cast(:m as numeric[])) as v(b, p, u, k, n, m))"
    " insert into cap_counters (buyer_id, period, unit, bucket, used)"
    " select b, p, u, k, n from v where n <= m order by b, p, u, k"
    " on conflict (buyer_id, period, unit, bucket) do update"
    " set used = cap_counters.used + excluded.used"
    " where cap_counters.used + excluded.used <= (select v.m from v where v.b ="
    " excluded.buyer_id and v.p = excluded.period and v.u = excluded.unit"
    " and v.k = excluded.bucket)"
    " returning buyer_id"
)


class CapLedger:
    """A batch's cap counters: read once, reserved in memory lead after lead, and written
    when the batch ends in one conditional statement. Should another router have taken
    what this batch counted on meanwhile, that statement comes short and
    ``DecisionConflictError`` makes the consumer decide the batch again: no cap is ever
    exceeded, and a lead that does not fit is offered to the next buyer."""

    def __init__(self) -> None:
        self._used: dict[CounterKey, Decimal] = {}  # as read, plus what this batch took
        self._added: dict[CounterKey, Decimal] = {}  # what this batch took, not yet written
        self._limit: dict[CounterKey, Decimal] = {}

    async def load(self, conn: AsyncConnection, keys: Sequence[CounterKey]) -> None:
        """Read the counters not read yet (one statement; absent rows count as 0)."""
        missing = sorted({k for k in keys if k not in self._used})
        if not missing:
            return
        rows = await conn.execute(
            _READ_COUNTERS,
            {
                "b": [k[0] for k in missing],
                "p": [k[1] for k in missing],
                "u": [k[2] for k in missing],
                "k": [k[3] for k in missing],
            },
        )
        for k in missing:
            self._used[k] = Decimal(0)
        for r in rows:
            self._used[(r.buyer_id, r.period, r.unit, r.bucket)] = r.used

    async def reserve(
        self,
        conn: AsyncConnection,
        buyer_id: uuid.UUID,
        buyer_caps: Sequence[Cap],
        timezone: str,
        price: Decimal,
        now: dt.datetime,
    ) -> list[Reservation] | Cap:
        """Take one lead (or its price) of each cap's current bucket, all or nothing; the
        first cap that would be exceeded when not."""
        ordered = ordered_caps(buyer_caps)
        keys = [counter_key(buyer_id, c, timezone, now) for c in ordered]
        await self.load(conn, keys)
        taken: list[tuple[CounterKey, Decimal, Decimal]] = []
        for cap, key in zip(ordered, keys, strict=True):
            amount, limit = caps.amount(cap, price), caps.limit(cap)
            # Two caps of one period and unit share a counter: judged one after the other.
            already = sum((n for k, n, _ in taken if k == key), Decimal(0))
            if self._used[key] + already + amount > limit:
                return cap
            taken.append((key, amount, limit))
        for key, amount, limit in taken:
            self._used[key] += amount
            self._added[key] = self._added.get(key, Decimal(0)) + amount
            self._limit[key] = max(limit, self._limit.get(key, limit))
        return [Reservation(k[1], k[2], k[3], n) for k, n, _ in taken]

    def released(self, buyer_id: uuid.UUID, taken: Sequence[Reservation]) -> None:
        """Counters that ``release_offer`` just gave back in the database."""
        for r in taken:
            key = (buyer_id, r.period, r.unit, r.bucket)
            if key in self._used:
                self._used[key] = max(self._used[key] - r.amount, Decimal(0))

    async def flush(self, conn: AsyncConnection) -> None:
        added = {k: n for k, n in self._added.items() if n > 0}
        self._added.clear()
        if not added:
            return
        keys = sorted(added)  # one lock order for every router
        rows = await conn.execute(
            _ADD_TO_COUNTERS,
            {
                "b": [k[0] for k in keys],
                "p": [k[1] for k in keys],
                "u": [k[2] for k in keys],
                "k": [k[3] for k in keys],
                "n": [added[k] for k in keys],
                "m": [self._limit[k] for k in keys],
            },
        )
        if len(rows.all()) != len(keys):
            raise DecisionConflictError("a cap counter changed under this batch")


# --- per-buyer duplicate windows ------------------------------------------------------------


ClaimKey = tuple[uuid.UUID, bytes]  # buyer, consumer hash


@dataclass(frozen=True)
class Claim:
    lead_id: uuid.UUID
    seen_at: dt.datetime


_READ_CLAIMS = text(
    "select buyer_id, consumer_hash, lead_id, seen_at from buyer_consumers"
    " join unnest(cast(:b as uuid[]), cast(:h as bytea[])) as v(b, h)"
    " on buyer_id = v.b and consumer_hash = v.h"
)

# Like the counters: each claim is written only where the consumer is still free for the
# buyer (outside its window, or this lead's own claim), so of two concurrent leads of one
# consumer the second waits on the first's row and then finds it inside the window.
_WRITE_CLAIMS = text(
    "with v as (select * from unnest(cast(:b as uuid[]), cast(:h as bytea[]),"
    " cast(:l as uuid[]), cast(:s as timestamptz[]), cast(:c as timestamptz[]))"
    " as v(b, h, l, s, c))"
    " insert into buyer_consumers (buyer_id, consumer_hash, lead_id, seen_at)"
    " select b, h, l, s from v order by b, h"
    " on conflict (buyer_id, consumer_hash) do update"
    " set lead_id = excluded.lead_id, seen_at = excluded.seen_at"
    " where buyer_consumers.lead_id = excluded.lead_id or buyer_consumers.seen_at <="
    " (select v.c from v where v.b = excluded.buyer_id and v.h = excluded.consumer_hash)"
    " returning buyer_id"
)


class ConsumerClaims:
    """A batch's view of the per-buyer duplicate index: read once, claimed in memory lead
    after lead, written when the batch ends (conditionally, as ``CapLedger``)."""

    def __init__(self) -> None:
        self._seen: dict[ClaimKey, Claim | None] = {}
        self._claimed: dict[ClaimKey, tuple[Claim, dt.datetime]] = {}  # claim, cutoff

    async def load(self, conn: AsyncConnection, keys: Sequence[ClaimKey]) -> None:
        missing = sorted({k for k in keys if k not in self._seen})
        if not missing:
            return
        rows = await conn.execute(
            _READ_CLAIMS, {"b": [k[0] for k in missing], "h": [k[1] for k in missing]}
        )
        for k in missing:
            self._seen[k] = None
        for r in rows:
            self._seen[(r.buyer_id, bytes(r.consumer_hash))] = Claim(r.lead_id, r.seen_at)

    async def free(
        self,
        conn: AsyncConnection,
        buyer_id: uuid.UUID,
        hashes: Sequence[bytes],
        lead_id: uuid.UUID,
        now: dt.datetime,
        days: int,
    ) -> bool:
        """False if ``buyer_id`` was offered the same consumer (any of its hashes) by
        another lead within ``days``."""
        keys = [(buyer_id, h) for h in hashes]
        await self.load(conn, keys)
        cutoff = now - dt.timedelta(days=days)
        for k in keys:
            seen = self._seen[k]
            if seen is not None and seen.seen_at > cutoff and seen.lead_id != lead_id:
                return False
        return True

    def take(
        self,
        buyer_id: uuid.UUID,
        hashes: Sequence[bytes],
        lead_id: uuid.UUID,
        now: dt.datetime,
        days: int,
    ) -> None:
        """Record that ``buyer_id`` is offered this consumer now (after ``free``)."""
        mine, cutoff = Claim(lead_id, now), now - dt.timedelta(days=days)
        for h in hashes:
            self._seen[(buyer_id, h)] = mine
            self._claimed[(buyer_id, h)] = (mine, cutoff)

    async def flush(self, conn: AsyncConnection) -> None:
        claimed = dict(self._claimed)
        self._claimed.clear()
        if not claimed:
            return
        keys = sorted(claimed)
        rows = await conn.execute(
            _WRITE_CLAIMS,
            {
                "b": [k[0] for k in keys],
                "h": [k[1] for k in keys],
                "l": [claimed[k][0].lead_id for k in keys],
                "s": [claimed[k][0].seen_at for k in keys],
                "c": [claimed[k][1] for k in keys],
            },
        )
        if len(rows.all()) != len(keys):
            raise DecisionConflictError("a consumer was claimed under this batch")


async def forget_consumers(conn: AsyncConnection, lead_ids: Sequence[uuid.UUID]) -> int:
    """Delete the duplicate index's keyed hashes claimed by ``lead_ids`` (erased leads):
    nothing links a buyer to their person any more, and the buyer's window no longer
    refuses them. Returns the rows deleted."""
    result = await conn.execute(
        text("delete from buyer_consumers where lead_id = any(:l)"), {"l": list(lead_ids)}
    )
    return int(result.rowcount)


# --- offers ---------------------------------------------------------------------------------


@dataclass
class Offer:
    delivery_id: uuid.UUID
    lead_id: uuid.UUID
    buyer_id: uuid.UUID
    attempt: int
    sale: int
    price: Decimal
    reservations: list[Reservation]
    status: str = "pending"  # pending | accepted | released


async def insert_offers(conn: AsyncConnection, offers: Sequence[Offer]) -> None:
    if not offers:
        return
    await conn.execute(
        text(
            "insert into offers (delivery_id, lead_id, buyer_id, attempt, sale, price, status,"
            " reservations) select d, l, b, a, s, p, st, r"
            " from jsonb_to_recordset(cast(:rows as jsonb)) as v(d uuid, l uuid, b uuid,"
            " a int, s int, p numeric, st text, r jsonb)"
        ),
        {
            "rows": _doc(
                [
                    {
                        "d": str(o.delivery_id),
                        "l": str(o.lead_id),
                        "b": str(o.buyer_id),
                        "a": o.attempt,
                        "s": o.sale,
                        "p": str(o.price),
                        "st": o.status,
                        "r": [x.to_json() for x in o.reservations],
                    }
                    for o in offers
                ]
            )
        },
    )


async def accept_offer(conn: AsyncConnection, delivery_id: uuid.UUID) -> None:
    await conn.execute(
        text("update offers set status = 'accepted' where delivery_id = :d and status = 'pending'"),
        {"d": delivery_id},
    )


async def release_offer(
    conn: AsyncConnection, delivery_id: uuid.UUID
) -> tuple[uuid.UUID, list[Reservation]] | None:
    """Give the offer's reservations back, exactly once: only the first final refusal
    finds it pending. The buckets are the ones recorded at offer time. Returns the buyer
    and what was given back, or None when nothing was."""
    row = (
        await conn.execute(
            text(
                "update offers set status = 'released' where delivery_id = :d"
                " and status = 'pending' returning buyer_id, reservations"
            ),
            {"d": delivery_id},
        )
    ).first()
    if row is None:
        return None
    taken = [Reservation.from_json(x) for x in row.reservations]
    for r in sorted(taken, key=lambda r: (r.period, r.unit)):
        await conn.execute(
            text(
                "update cap_counters set used = greatest(used - :n, 0) where buyer_id = :b"
                " and period = :p and unit = :u and bucket = :k"
            ),
            {"b": row.buyer_id, "p": r.period, "u": r.unit, "k": r.bucket, "n": r.amount},
        )
    return row.buyer_id, taken


async def buyer_name(conn: AsyncConnection, buyer_id: uuid.UUID) -> str:
    row = (
        await conn.execute(text("select name from buyers where buyer_id = :b"), {"b": buyer_id})
    ).first()
    return str(row.name) if row is not None and row.name else str(buyer_id)


async def upsert_funds(conn: AsyncConnection, f: BuyerFundsChanged) -> None:
    """The buyer's funds as of this event; an older event never overwrites a newer one."""
    await conn.execute(
        text(
            "insert into buyer_funds (buyer_id, has_funds, balance, occurred_at)"
            " values (:b, :h, :bal, :at) on conflict (buyer_id) do update set"
            " has_funds = excluded.has_funds, balance = excluded.balance,"
            " occurred_at = excluded.occurred_at"
            " where buyer_funds.occurred_at <= excluded.occurred_at"
        ),
        {
            "b": f.payload.buyer_id,
            "h": f.payload.has_funds,
            "bal": f.payload.balance,
            "at": f.occurred_at,
        },
    )


async def unfunded(conn: AsyncConnection, buyer_ids: Sequence[uuid.UUID]) -> frozenset[uuid.UUID]:
    """Those of ``buyer_ids`` that billing last said have no funds."""
    if not buyer_ids:
        return frozenset()
    rows = await conn.scalars(
        text("select buyer_id from buyer_funds where buyer_id = any(:ids) and not has_funds"),
        {"ids": list(buyer_ids)},
    )
    return frozenset(rows)
