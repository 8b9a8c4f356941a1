"""Router's consumer: keeps the configuration it routes by, turns received leads into
offers and delivery results into the next offer, a further sale or the end of routing.

Everything a decision touches (the lead's walk, cap counters, the buyer's duplicate
index, the offer and the outbox rows of its events) is written in the consumer's one
transaction, so a decision is made exactly once and a crash leaves no half of it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from cryptography.exceptions import InvalidTag
from lx_platform.consumer import Consumed
from lx_platform.crypto import open_fields
from lx_platform.leadkeys import KeyUnavailableError, LeadKeys
from lx_platform.logging import get_logger
from lx_platform.outbox import Outbox
from lx_schemas import events as ev
from lx_schemas.envelope import Event, derived_id, utcnow
from lx_schemas.rules import Distribution, DistributionMode, Margin, Payout
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_router import domain, store

log = get_logger(__name__)
Staged = list[tuple[Event, uuid.UUID]]


class VaultUnavailableError(ConnectionError):
    """The key vault could not be asked. A ``ConnectionError`` (an ``OSError``) on
    purpose: the platform's consumer treats it as transient and retries the batch
    instead of dead-lettering the lead."""


@dataclass
class LeadValues:
    """A lead's values for screening: its clear fields, plus its personal fields only
    when a check needs them (the data key is fetched at most once per decision)."""

    lead: ev.LeadContent
    keys: LeadKeys | None
    _opened: dict[str, Any] | None = None
    _erased: bool = False
    _asked: bool = False

    async def get(self, need_pii: bool) -> tuple[Mapping[str, ev.FieldValue], bool]:
        """The values and whether the personal data is erased (shredded key)."""
        if not need_pii or self.lead.pii is None:
            return self.lead.fields, False
        if not self._asked:
            await self._open(self.lead.pii)
            self._asked = True
        if self._opened is None:
            return self.lead.fields, self._erased
        return {**self.lead.fields, **self._opened}, False

    async def _open(self, sealed: ev.SealedFields) -> None:
        if self.keys is None:
            self._erased = True
            return
        try:
            key = await self.keys.get(sealed.key_id)
        except KeyUnavailableError as exc:
            raise VaultUnavailableError(str(exc)) from exc
        if key is None:
            self._erased = True
            return
        try:
            self._opened = open_fields(key, sealed)
        except InvalidTag:
            # Not the key these fields were sealed with: as unreadable as a shredded one.
            log.warning("lead_pii_unreadable", key_id=str(sealed.key_id))
            self._erased = True


@dataclass
class Context:
    """What one decision reads about a lead's campaign."""

    campaign: ev.CampaignState | None
    buyers: dict[uuid.UUID, ev.BuyerState]
    pii: frozenset[str]
    consumer: tuple[ev.FieldSpec, ...]
    values: LeadValues
    now: dt.datetime
    skipped_from: int = 0  # the rejections already logged with an earlier decision


@dataclass
class BatchConfig:
    """Configuration read during one batch, by campaign and by source."""

    buyers: dict[uuid.UUID, dict[uuid.UUID, ev.BuyerState]] = field(default_factory=dict)
    campaigns: dict[uuid.UUID, ev.CampaignState | None] = field(default_factory=dict)
    sources: dict[uuid.UUID, ev.SourceState | None] = field(default_factory=dict)

    def clear(self) -> None:
        self.buyers.clear()
        self.campaigns.clear()
        self.sources.clear()


class RouterHandler:
    def __init__(
        self,
        outbox: Outbox,
        keys: LeadKeys | None,
        hash_key: bytes,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.outbox = outbox
        self.keys = keys
        self.hash_key = hash_key
        self.clock = clock

    async def __call__(self, conn: AsyncConnection, batch: Sequence[Consumed]) -> None:
        staged: Staged = []
        # Configuration is read once per batch (a batch of leads of one campaign is the
        # common case); a configuration change in the batch forgets what was read.
        config = BatchConfig()
        for item in batch:
            event = item.event
            if isinstance(event, ev.BuyerConfigured):
                await store.upsert_buyer(conn, event.payload)
                config.clear()
            elif isinstance(event, ev.CampaignConfigured):
                await store.upsert_campaign(conn, event.payload)
                config.clear()
            elif isinstance(event, ev.SourceConfigured):
                await store.upsert_source(conn, event.payload)
                config.clear()
            elif isinstance(event, ev.LeadReceived):
                staged.extend(await self._route_new(conn, event, config))
            elif isinstance(event, ev.DeliveryAttempted):
                staged.extend(await self._after_attempt(conn, event, config))
        await self.outbox.stage_many(conn, staged)  # type: ignore[arg-type]

    async def _context(
        self,
        conn: AsyncConnection,
        campaign_id: uuid.UUID,
        lead: ev.LeadContent,
        cache: BatchConfig,
    ) -> Context:
        if campaign_id not in cache.buyers:
            cache.buyers[campaign_id] = {
                b.buyer_id: b for b in await store.campaign_buyers(conn, campaign_id)
            }
            cache.campaigns[campaign_id] = await store.campaign(conn, campaign_id)
        campaign = cache.campaigns[campaign_id]
        sealed = lead.pii.field_names if lead.pii is not None else ()
        return Context(
            campaign=campaign,
            buyers=cache.buyers[campaign_id],
            pii=domain.pii_fields(campaign, sealed),
            consumer=domain.consumer_fields(campaign),
            values=LeadValues(lead, self.keys),
            now=self.clock(),
        )

    # --- a new lead -------------------------------------------------------------------------

    async def _route_new(
        self,
        conn: AsyncConnection,
        event: ev.LeadReceived,
        cache: BatchConfig,
    ) -> Staged:
        p = event.payload
        if await store.routing_exists(conn, p.lead_id):
            return []  # routed before (a replayed lead.received under a new event id)
        ctx = await self._context(conn, p.campaign_id, p.lead, cache)
        margin = ctx.campaign.margin if ctx.campaign is not None else Margin()
        if p.ping_id is not None:
            promised = p.promised_payout if p.promised_payout is not None else Decimal("0.00")
            plan, max_sales = domain.plan_post(p.bids, promised), 1
            rejections: list[ev.Rejection] = []
        else:
            promised = None
            plan, rejections, max_sales = await self._plan_direct(conn, p, ctx, margin, cache)
        routing = store.Routing(
            p.lead_id,
            event.account_id,
            p.campaign_id,
            p.source_id,
            p.lead,
            domain.Walk(plan, 0, 0, 0, max_sales, rejections),
            "routing",
            margin,
            p.ping_id,
            promised,
        )
        staged = await self._walk_on(conn, routing, ctx, cause=event, rescreen=False)
        if not await store.insert_routing(conn, routing):
            raise RuntimeError(f"lead {p.lead_id} was routed concurrently")  # pragma: no cover
        return staged

    async def _plan_direct(
        self,
        conn: AsyncConnection,
        p: ev.LeadReceivedPayload,
        ctx: Context,
        margin: Margin,
        cache: BatchConfig,
    ) -> tuple[list[domain.PlannedOffer], list[ev.Rejection], int]:
        if p.source_id not in cache.sources:
            cache.sources[p.source_id] = await store.source(conn, p.source_id)
        source = cache.sources[p.source_id]
        if source is None:
            # Configuration normally arrives long before leads; a lead outrunning it is
            # routed with a zero payout rather than held, and said so.
            log.warning(
                "source_unknown_at_routing", lead_id=str(p.lead_id), source_id=str(p.source_id)
            )
            payout = Payout(fixed=Decimal("0.00"))
        else:
            payout = source.payout
        distribution = ctx.campaign.distribution if ctx.campaign is not None else Distribution()
        buyers = sorted(ctx.buyers.values(), key=lambda b: str(b.buyer_id))
        values, erased = await ctx.values.get(domain.needs_pii(buyers, ctx.pii, ctx.consumer))
        counter = 0
        if distribution.mode is DistributionMode.ROUND_ROBIN and buyers:
            counter = await store.next_round_robin(conn, p.campaign_id)
        plan, rejections = domain.plan_direct(
            buyers,
            values=values,
            pii=ctx.pii,
            pii_erased=erased,
            now=ctx.now,
            distribution=distribution,
            margin=margin,
            payout=payout,
            lead_id=p.lead_id,
            counter=counter,
        )
        return plan, rejections, distribution.max_sales

    # --- a delivery result ------------------------------------------------------------------

    async def _after_attempt(
        self,
        conn: AsyncConnection,
        event: ev.DeliveryAttempted,
        cache: BatchConfig,
    ) -> Staged:
        p = event.payload
        if domain.releases(p):
            released = await store.release_offer(conn, p.delivery_id)
            if released:
                log.info(
                    "cap_reservation_released",
                    lead_id=str(p.lead_id),
                    buyer_id=str(p.buyer_id),
                    delivery_id=str(p.delivery_id),
                )
        elif p.final and p.result is ev.DeliveryResult.ACCEPTED:
            await store.accept_offer(conn, p.delivery_id)
        r = await store.routing_for_update(conn, p.lead_id)
        if r is None:
            return []
        step = domain.after_result(
            status=r.status,
            current_attempt=r.walk.attempt,
            sales=r.walk.sales,
            max_sales=r.walk.max_sales,
            result=p,
            buyer_name=await store.buyer_name(conn, p.buyer_id),
        )
        if isinstance(step, domain.Wait):
            return []
        if isinstance(step, domain.Finished):
            r.walk.sales += 1
            r.status = "sold"
            await store.save_routing(conn, r)
            log.info("lead_sold_out", lead_id=str(r.lead_id), sales=r.walk.sales)
            return []
        if step.sold:
            r.walk.sales += 1
        elif step.rejection is not None:
            r.walk.rejections.append(step.rejection)
        ctx = await self._context(conn, r.campaign_id, r.lead, cache)
        ctx.skipped_from = len(r.walk.rejections) - (0 if step.sold else 1)
        staged = await self._walk_on(conn, r, ctx, cause=event, rescreen=True)
        await store.save_routing(conn, r)
        return staged

    # --- walking the plan -------------------------------------------------------------------

    async def _walk_on(
        self, conn: AsyncConnection, r: store.Routing, ctx: Context, *, cause: Event, rescreen: bool
    ) -> Staged:
        """Offer the lead to the next buyer of its plan that may take it now, or end."""
        w = r.walk
        while w.position < len(w.plan):
            entry = w.plan[w.position]
            w.position += 1
            buyer = ctx.buyers.get(entry.buyer_id)
            if buyer is None:
                w.rejections.append(domain.unknown_buyer(entry.buyer_id))
                continue
            rejection = await self._judge(r, entry, buyer, ctx, rescreen=rescreen)
            if rejection is None:
                rejection, taken = await self._take(conn, r, entry, buyer, ctx)
                if rejection is None:
                    return [await self._offer(conn, r, entry, taken, ctx, cause)]
            w.rejections.append(rejection)
            if r.ping_id is not None and rejection.code is ev.RejectionCode.PRICE_BELOW_PAYOUT:
                break  # the bids below pay even less: the post stops here
        r.status = "sold" if w.sales else "exhausted"
        return [self._exhausted(r, ctx, cause)]

    async def _judge(
        self,
        r: store.Routing,
        entry: domain.PlannedOffer,
        buyer: ev.BuyerState,
        ctx: Context,
        *,
        rescreen: bool,
    ) -> ev.Rejection | None:
        """Whether the buyer may still be offered the lead, caps and duplicates aside."""
        if r.ping_id is not None:
            # The auction screened the buyer on the ping; the post needs it still active
            # and its bid still paying what the source was promised.
            if buyer.status != ev.Status.ACTIVE:
                return ev.Rejection(
                    code=ev.RejectionCode.BUYER_PAUSED,
                    detail=f"buyer {buyer.name} is paused",
                    buyer_id=buyer.buyer_id,
                )
            assert r.promised is not None
            return domain.post_falls_short(buyer, entry, r.promised, r.margin)
        if not rescreen:
            return None
        need = domain.needs_pii([buyer], ctx.pii, ctx.consumer)
        values, erased = await ctx.values.get(need)
        return domain.screen_buyer(buyer, values, ctx.now, pii=ctx.pii, pii_erased=erased)

    async def _take(
        self,
        conn: AsyncConnection,
        r: store.Routing,
        entry: domain.PlannedOffer,
        buyer: ev.BuyerState,
        ctx: Context,
    ) -> tuple[ev.Rejection | None, list[store.Reservation]]:
        """Claim the consumer in the buyer's duplicate window and reserve its caps, all or
        nothing (a savepoint): a refused cap gives the claim back, and the other way round."""
        hashes: list[bytes] = []
        if buyer.dedupe_days is not None:
            need = any(f.name in ctx.pii for f in ctx.consumer)
            values, erased = await ctx.values.get(need)
            if erased:
                return domain.duplicate_unknowable(buyer), []
            hashes = domain.consumer_hashes(self.hash_key, buyer.buyer_id, ctx.consumer, values)
        if not hashes and not buyer.caps:
            return None, []
        savepoint = await conn.begin_nested()
        if hashes:
            assert buyer.dedupe_days is not None
            fresh = await store.claim_consumer(
                conn, buyer.buyer_id, hashes, r.lead_id, ctx.now, buyer.dedupe_days
            )
            if not fresh:
                await savepoint.rollback()
                return domain.duplicate_for(buyer), []
        taken = []
        for cap in store.ordered_caps(buyer.caps):
            reservation = await store.reserve(
                conn, buyer.buyer_id, cap, buyer.timezone, entry.price, ctx.now
            )
            if reservation is None:
                await savepoint.rollback()
                return domain.cap_full(buyer, cap.period.value, cap.max_usd is not None), []
            taken.append(reservation)
        await savepoint.commit()
        return None, taken

    async def _offer(
        self,
        conn: AsyncConnection,
        r: store.Routing,
        entry: domain.PlannedOffer,
        taken: list[store.Reservation],
        ctx: Context,
        cause: Event,
    ) -> tuple[Event, uuid.UUID]:
        w = r.walk
        w.attempt += 1
        sale = w.sales + 1
        delivery_id = derived_id("delivery", r.lead_id, entry.buyer_id, w.attempt)
        await store.insert_offer(
            conn,
            delivery_id=delivery_id,
            lead_id=r.lead_id,
            buyer_id=entry.buyer_id,
            attempt=w.attempt,
            sale=sale,
            price=entry.price,
            reservations=taken,
        )
        log.info(
            "lead_offered",
            lead_id=str(r.lead_id),
            buyer_id=str(entry.buyer_id),
            attempt=w.attempt,
            sale=sale,
            price=str(entry.price),
            ping_id=str(r.ping_id) if r.ping_id else None,
            passed_over=_reasons(w.rejections[ctx.skipped_from :]),
        )
        routed = ev.LeadRouted.new(
            event_id=derived_id("lead.routed", r.lead_id, w.attempt),
            payload=ev.LeadRoutedPayload(
                lead_id=r.lead_id,
                campaign_id=r.campaign_id,
                source_id=r.source_id,
                buyer_id=entry.buyer_id,
                attempt=w.attempt,
                delivery_id=delivery_id,
                price=entry.price,
                price_from_response=entry.price_from_response,
                payout=entry.payout,
                sale=sale,
                ping_id=r.ping_id,
                bid_ref=entry.bid_ref,
                lead=r.lead,
            ),
            **_common(r, cause),
        )
        return routed, r.lead_id

    def _exhausted(self, r: store.Routing, ctx: Context, cause: Event) -> tuple[Event, uuid.UUID]:
        w = r.walk
        reason = domain.exhaustion_reason(w.attempt)
        log.info(
            "lead_routing_exhausted",
            lead_id=str(r.lead_id),
            reason=reason.value,
            attempts=w.attempt,
            sales=w.sales,
            passed_over=_reasons(w.rejections[ctx.skipped_from :]),
        )
        exhausted = ev.LeadRoutingExhausted.new(
            event_id=derived_id("lead.routing_exhausted", r.lead_id),
            payload=ev.LeadRoutingExhaustedPayload(
                lead_id=r.lead_id,
                campaign_id=r.campaign_id,
                source_id=r.source_id,
                reason=reason,
                attempts=w.attempt,
                sales=w.sales,
                rejections=tuple(w.rejections[:1000]),
            ),
            **_common(r, cause),
        )
        return exhausted, r.lead_id


def _common(r: store.Routing, cause: Event) -> dict[str, Any]:
    return {
        "account_id": r.account_id,
        "correlation_id": r.lead_id,
        "causation_id": cause.event_id,
        "producer": "router",
    }


def _reasons(rejections: Sequence[ev.Rejection]) -> dict[str, list[str]]:
    """Buyers passed over, by reason code; never the details, which may quote a lead's
    (non-personal) values."""
    by_code: dict[str, list[str]] = {}
    for x in rejections:
        by_code.setdefault(x.code.value, []).append(x.buyer_id.hex if x.buyer_id else "-")
    return by_code
