"""Router's consumer: keeps the configuration it routes by, turns received leads into
offers and delivery results into the next offer, a further sale or the end of routing.

Everything a decision touches (the lead's walk, cap counters, the buyer's duplicate
index, the offer and the outbox rows of its events) is written in the consumer's one
transaction, so a decision is made exactly once and a crash leaves no half of it.

A batch is decided in memory and written at its end in a few set-based statements
(``Pending``): the configuration, the cap counters and the duplicate index a batch needs
are read once, not lead by lead. The counters and the index are written conditionally,
so a batch that counted on what another router took meanwhile is decided again
(``store.DecisionConflictError``), never exceeding a cap or a duplicate window.
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
from lx_routing.eligibility import ScreenMemo
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
    screened: ScreenMemo
    ordered: list[ev.BuyerState]  # ``buyers`` by id: the order they are screened in
    unfunded: frozenset[uuid.UUID] = frozenset()  # prepaid buyers out of funds (billing)
    skipped_from: int = 0  # the rejections already logged with an earlier decision


@dataclass
class BatchConfig:
    """Configuration read during one batch, by campaign and by source."""

    buyers: dict[uuid.UUID, dict[uuid.UUID, ev.BuyerState]] = field(default_factory=dict)
    ordered: dict[uuid.UUID, list[ev.BuyerState]] = field(default_factory=dict)
    pii: dict[tuple[uuid.UUID, tuple[str, ...]], frozenset[str]] = field(default_factory=dict)
    campaigns: dict[uuid.UUID, ev.CampaignState | None] = field(default_factory=dict)
    sources: dict[uuid.UUID, ev.SourceState | None] = field(default_factory=dict)
    unfunded: dict[uuid.UUID, frozenset[uuid.UUID]] = field(default_factory=dict)
    screened: ScreenMemo = field(default_factory=ScreenMemo)  # shared by the batch's leads

    def clear(self) -> None:
        self.buyers.clear()
        self.ordered.clear()
        self.pii.clear()
        self.campaigns.clear()
        self.sources.clear()
        self.unfunded.clear()
        self.screened = ScreenMemo()


@dataclass
class Pending:
    """What a batch has decided and not written yet, and the routings it holds."""

    caps: store.CapLedger = field(default_factory=store.CapLedger)
    claims: store.ConsumerClaims = field(default_factory=store.ConsumerClaims)
    routings: dict[uuid.UUID, store.Routing] = field(default_factory=dict)  # read or made
    new: dict[uuid.UUID, None] = field(default_factory=dict)  # made: to insert, in order
    changed: set[uuid.UUID] = field(default_factory=set)  # read and walked: to update
    offers: dict[uuid.UUID, store.Offer] = field(default_factory=dict)

    async def flush(self, conn: AsyncConnection) -> None:
        await self.caps.flush(conn)
        await self.claims.flush(conn)
        await store.insert_offers(conn, list(self.offers.values()))
        self.offers.clear()
        new = [self.routings[lead_id] for lead_id in self.new]
        if await store.insert_routings(conn, new) != len(new):
            raise RuntimeError("a lead of this batch was routed concurrently")  # pragma: no cover
        await store.save_routings(
            conn, [self.routings[x] for x in self.changed if x not in self.new]
        )
        self.new.clear()
        self.changed.clear()


def _kind(item: Consumed) -> str:
    if isinstance(item.event, ev.LeadReceived):
        return "lead"
    if isinstance(item.event, ev.DeliveryAttempted):
        return "result"
    return "other"


def _runs(batch: Sequence[Consumed]) -> list[tuple[str, list[Consumed]]]:
    """The batch as runs of consecutive events of one kind, in order."""
    runs: list[tuple[str, list[Consumed]]] = []
    for item in batch:
        kind = _kind(item)
        if runs and runs[-1][0] == kind:
            runs[-1][1].append(item)
        else:
            runs.append((kind, [item]))
    return runs


async def forget_erased(conn: AsyncConnection, lead_ids: Sequence[uuid.UUID]) -> None:
    """Erased leads (``LeadsErased`` on ``privacy.erasures``): their data keys are gone,
    so their sealed copies here can no longer be opened; the keyed hashes of their
    e-mail and phone in the per-buyer duplicate index are deleted as well."""
    if lead_ids:
        forgotten = await store.forget_consumers(conn, lead_ids)
        log.info("erased_leads_forgotten", leads=len(lead_ids), consumer_hashes=forgotten)


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
        pending = Pending()
        erased: list[uuid.UUID] = []
        for kind, run in _runs(batch):
            if kind == "lead":
                leads = [x.event for x in run if isinstance(x.event, ev.LeadReceived)]
                staged.extend(await self._route_new(conn, leads, config, pending))
            elif kind == "result":
                results = [x.event for x in run if isinstance(x.event, ev.DeliveryAttempted)]
                staged.extend(await self._after_attempts(conn, results, config, pending))
            else:
                for item in run:
                    if isinstance(item.event, ev.LeadsErased):
                        erased.extend(item.event.payload.lead_ids)
                    else:
                        await self._configure(conn, item.event, config)
        await pending.flush(conn)
        # After the batch's own claims: one an erased lead made in this batch goes too.
        await forget_erased(conn, erased)
        await self.outbox.stage_many(conn, staged)  # type: ignore[arg-type]

    async def _configure(self, conn: AsyncConnection, event: Event, config: BatchConfig) -> None:
        if isinstance(event, ev.BuyerConfigured):
            await store.upsert_buyer(conn, event.payload)
        elif isinstance(event, ev.CampaignConfigured):
            await store.upsert_campaign(conn, event.payload)
        elif isinstance(event, ev.SourceConfigured):
            await store.upsert_source(conn, event.payload)
        elif isinstance(event, ev.BuyerFundsChanged):
            await store.upsert_funds(conn, event)
        else:
            return
        config.clear()

    async def _context(
        self,
        conn: AsyncConnection,
        campaign_id: uuid.UUID,
        lead: ev.LeadContent,
        cache: BatchConfig,
    ) -> Context:
        if campaign_id not in cache.buyers:
            buyers = await store.campaign_buyers(conn, campaign_id)
            cache.buyers[campaign_id] = {b.buyer_id: b for b in buyers}
            cache.ordered[campaign_id] = sorted(buyers, key=lambda b: str(b.buyer_id))
            cache.campaigns[campaign_id] = await store.campaign(conn, campaign_id)
            cache.unfunded[campaign_id] = await store.unfunded(conn, [b.buyer_id for b in buyers])
        campaign = cache.campaigns[campaign_id]
        sealed = lead.pii.field_names if lead.pii is not None else ()
        pii = cache.pii.get((campaign_id, tuple(sealed)))
        if pii is None:
            pii = cache.pii[(campaign_id, tuple(sealed))] = domain.pii_fields(campaign, sealed)
        return Context(
            campaign=campaign,
            buyers=cache.buyers[campaign_id],
            pii=pii,
            consumer=domain.consumer_fields(campaign),
            values=LeadValues(lead, self.keys),
            now=self.clock(),
            screened=cache.screened,
            ordered=cache.ordered[campaign_id],
            unfunded=cache.unfunded[campaign_id],
        )

    # --- a new lead -------------------------------------------------------------------------

    async def _route_new(
        self,
        conn: AsyncConnection,
        events: Sequence[ev.LeadReceived],
        cache: BatchConfig,
        pending: Pending,
    ) -> Staged:
        """Plan every lead of the run, read the counters and duplicate index their walks
        may touch in one go each, then walk the leads one after another."""
        # A lead routed before (a replayed lead.received under a new event id) is skipped.
        done = await store.routed_already(
            conn, [e.payload.lead_id for e in events if e.payload.lead_id not in pending.routings]
        )
        planned: list[tuple[ev.LeadReceived, store.Routing, Context]] = []
        for event in events:
            p = event.payload
            if p.lead_id in done or p.lead_id in pending.routings:
                continue
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
            pending.routings[p.lead_id] = routing
            pending.new[p.lead_id] = None
            planned.append((event, routing, ctx))
        await self._prefetch(conn, planned, pending)
        staged: Staged = []
        for event, routing, ctx in planned:
            staged.extend(
                await self._walk_on(conn, routing, ctx, pending, cause=event, rescreen=False)
            )
        return staged

    async def _prefetch(
        self,
        conn: AsyncConnection,
        planned: Sequence[tuple[ev.LeadReceived, store.Routing, Context]],
        pending: Pending,
    ) -> None:
        """Read, in one statement each, the cap counters and duplicate-index rows the new
        leads' walks may touch: a walk ends at the first offer, so at the latest at the
        first buyer of its plan with neither caps nor a duplicate window. Whatever a walk
        needs beyond this (a bucket that began meanwhile) is read when needed."""
        counters: set[store.CounterKey] = set()
        claims: list[store.ClaimKey] = []
        capped: set[uuid.UUID] = set()
        for _, r, ctx in planned:
            direct = r.ping_id is None
            for entry in r.walk.plan:
                buyer = ctx.buyers.get(entry.buyer_id)
                if buyer is None:
                    continue
                if buyer.caps and buyer.buyer_id not in capped:
                    capped.add(buyer.buyer_id)
                    for cap in buyer.caps:
                        counters.add(
                            store.counter_key(buyer.buyer_id, cap, buyer.timezone, ctx.now)
                        )
                if buyer.dedupe_days is not None and direct:
                    # Planning opened the lead's personal data if a duplicate window
                    # needs it (``domain.needs_pii``): this reads it from memory.
                    need = any(f.name in ctx.pii for f in ctx.consumer)
                    values, erased = await ctx.values.get(need)
                    if not erased:
                        hashes = domain.consumer_hashes(
                            self.hash_key, buyer.buyer_id, ctx.consumer, values
                        )
                        claims.extend((buyer.buyer_id, h) for h in hashes)
                if direct and not buyer.caps and buyer.dedupe_days is None:
                    break  # this buyer takes the lead if the walk gets this far
        await pending.caps.load(conn, sorted(counters))
        await pending.claims.load(conn, claims)

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
        buyers = ctx.ordered
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
            memo=cache.screened,
        )
        return plan, rejections, distribution.max_sales

    # --- a delivery result ------------------------------------------------------------------

    async def _after_attempts(
        self,
        conn: AsyncConnection,
        events: Sequence[ev.DeliveryAttempted],
        cache: BatchConfig,
        pending: Pending,
    ) -> Staged:
        # The run's routings are read and locked in one statement.
        wanted = [e.payload.lead_id for e in events if e.payload.lead_id not in pending.routings]
        pending.routings.update(await store.routings_for_update(conn, wanted))
        staged: Staged = []
        for event in events:
            staged.extend(await self._after_attempt(conn, event, cache, pending))
        return staged

    async def _after_attempt(
        self,
        conn: AsyncConnection,
        event: ev.DeliveryAttempted,
        cache: BatchConfig,
        pending: Pending,
    ) -> Staged:
        p = event.payload
        if p.delivery_id in pending.offers:  # pragma: no cover - a result outran its offer
            await pending.flush(conn)
        if domain.releases(p):
            released = await store.release_offer(conn, p.delivery_id)
            if released is not None and released[1]:
                pending.caps.released(*released)
                log.info(
                    "cap_reservation_released",
                    lead_id=str(p.lead_id),
                    buyer_id=str(p.buyer_id),
                    delivery_id=str(p.delivery_id),
                )
        elif p.final and p.result is ev.DeliveryResult.ACCEPTED:
            await store.accept_offer(conn, p.delivery_id)
        r = pending.routings.get(p.lead_id)
        if r is None:
            return []
        ctx = await self._context(conn, r.campaign_id, r.lead, cache)
        buyer = ctx.buyers.get(p.buyer_id)
        step = domain.after_result(
            status=r.status,
            current_attempt=r.walk.attempt,
            sales=r.walk.sales,
            max_sales=r.walk.max_sales,
            result=p,
            buyer_name=(
                buyer.name
                if buyer is not None and buyer.name
                else await store.buyer_name(conn, p.buyer_id)
            ),
        )
        if isinstance(step, domain.Wait):
            return []
        pending.changed.add(r.lead_id)
        if isinstance(step, domain.Finished):
            r.walk.sales += 1
            r.status = "sold"
            log.info("lead_sold_out", lead_id=str(r.lead_id), sales=r.walk.sales)
            return []
        if step.sold:
            r.walk.sales += 1
        elif step.rejection is not None:
            r.walk.rejections.append(step.rejection)
        ctx.skipped_from = len(r.walk.rejections) - (0 if step.sold else 1)
        return await self._walk_on(conn, r, ctx, pending, cause=event, rescreen=True)

    # --- walking the plan -------------------------------------------------------------------

    async def _walk_on(
        self,
        conn: AsyncConnection,
        r: store.Routing,
        ctx: Context,
        pending: Pending,
        *,
        cause: Event,
        rescreen: bool,
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
            if buyer.buyer_id in ctx.unfunded:
                w.rejections.append(domain.no_funds(buyer))
                continue
            rejection = await self._judge(r, entry, buyer, ctx, rescreen=rescreen)
            if rejection is None:
                rejection, taken = await self._take(conn, r, entry, buyer, ctx, pending)
                if rejection is None:
                    return [self._offer(r, entry, taken, ctx, cause, pending)]
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
            # The post must still pay what the source was promised; and the buyer is
            # screened again in full: the auction saw only the ping's fields (filters on
            # personal data wait for the post), and a post may differ from its ping.
            assert r.promised is not None
            short = domain.post_falls_short(buyer, entry, r.promised, r.margin)
            if short is not None:
                return short
        elif not rescreen:
            return None
        need = domain.needs_pii([buyer], ctx.pii, ctx.consumer)
        values, erased = await ctx.values.get(need)
        return domain.screen_buyer(
            buyer, values, ctx.now, pii=ctx.pii, pii_erased=erased, memo=ctx.screened
        )

    async def _take(
        self,
        conn: AsyncConnection,
        r: store.Routing,
        entry: domain.PlannedOffer,
        buyer: ev.BuyerState,
        ctx: Context,
        pending: Pending,
    ) -> tuple[ev.Rejection | None, list[store.Reservation]]:
        """Claim the consumer in the buyer's duplicate window and reserve its caps, all or
        nothing: a refused cap leaves the consumer unclaimed, and the other way round."""
        hashes: list[bytes] = []
        if buyer.dedupe_days is not None:
            need = any(f.name in ctx.pii for f in ctx.consumer)
            values, erased = await ctx.values.get(need)
            if erased:
                return domain.duplicate_unknowable(buyer), []
            hashes = domain.consumer_hashes(self.hash_key, buyer.buyer_id, ctx.consumer, values)
        if hashes:
            assert buyer.dedupe_days is not None
            args = (buyer.buyer_id, hashes, r.lead_id, ctx.now, buyer.dedupe_days)
            if not await pending.claims.free(conn, *args):
                return domain.duplicate_for(buyer), []
        taken: list[store.Reservation] = []
        if buyer.caps:
            reserved = await pending.caps.reserve(
                conn, buyer.buyer_id, buyer.caps, buyer.timezone, entry.price, ctx.now
            )
            if not isinstance(reserved, list):
                return domain.cap_full(
                    buyer, reserved.period.value, reserved.max_usd is not None
                ), []
            taken = reserved
        if hashes:
            pending.claims.take(*args)
        return None, taken

    def _offer(
        self,
        r: store.Routing,
        entry: domain.PlannedOffer,
        taken: list[store.Reservation],
        ctx: Context,
        cause: Event,
        pending: Pending,
    ) -> tuple[Event, uuid.UUID]:
        w = r.walk
        w.attempt += 1
        sale = w.sales + 1
        delivery_id = derived_id("delivery", r.lead_id, entry.buyer_id, w.attempt)
        pending.offers[delivery_id] = store.Offer(
            delivery_id, r.lead_id, entry.buyer_id, w.attempt, sale, entry.price, taken
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


def _reasons(rejections: Sequence[ev.Rejection]) -> dict[str, int]:
    """How many buyers were passed over, by reason code. Never the details, which may
    quote a lead's (non-personal) values; the buyers themselves are on the routing's row
    and in ``LeadRoutingExhausted`` (listing them here cost a lead more than routing it)."""
    by_code: dict[str, int] = {}
    for x in rejections:
        by_code[x.code.value] = by_code.get(x.code.value, 0) + 1
    return by_code
