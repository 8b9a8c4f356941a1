"""Runs an auction: pings the campaign's eligible bidders in parallel, each within its
own timeout inside the auction's deadline, ranks what came back in time, and records the
result with its events in one transaction.

A ping is claimed (a ``running`` row) before any buyer hears of it, so a ping id sent
twice is auctioned once: the second request waits for the first one's result.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import httpx
from lx_integrations.responses import BidReading, read_bid
from lx_integrations.templates import TemplateError, render
from lx_platform.db import Database
from lx_platform.egress import EgressPolicy, EgressRefusedError, parse_endpoint
from lx_platform.egress_http import buyer_client, read_capped
from lx_platform.logging import get_logger
from lx_platform.metrics import Metrics
from lx_platform.outbox import Outbox, OutboxRelay
from lx_platform.secrets import ConfigKeys
from lx_routing.eligibility import screen
from lx_schemas import events as ev
from lx_schemas.envelope import Event, derived_id

from lx_auction import domain, store
from lx_auction.settings import AuctionSettings

log = get_logger(__name__)
PING_ID_HEADER = "X-LeadExchange-Ping-Id"
P = ev.PingResult
Clock = Callable[[], dt.datetime]


class AuctionRefusedError(Exception):
    """The auction cannot be run as asked: an HTTP status and a machine-readable code."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Ping:
    ping_id: uuid.UUID
    account_id: uuid.UUID
    campaign_id: uuid.UUID
    source_id: uuid.UUID
    fields: Mapping[str, ev.FieldValue]


@dataclass(frozen=True)
class Pinging:
    """What the auction's first transaction found: the rules and who is pinged."""

    campaign: ev.CampaignState
    source: ev.SourceState
    bidders: list[ev.BuyerState]
    not_pinged: list[ev.Rejection]
    values: dict[str, ev.FieldValue]


class Auctioneer:
    def __init__(
        self,
        db: Database,
        outbox: Outbox,
        relay: OutboxRelay,
        settings: AuctionSettings,
        metrics: Metrics,
        egress: EgressPolicy,
        keys: ConfigKeys,
        clock: Clock,
    ) -> None:
        self.db = db
        self.outbox = outbox
        self.relay = relay
        self.settings = settings
        self.metrics = metrics
        self.egress = egress
        self.keys = keys
        self.clock = clock
        self.client = buyer_client(
            egress, max_connections=settings.max_connections, user_agent="LeadExchange-Auction/1.0"
        )

    async def start(self) -> None:
        self.egress.log_allow_list(self.settings.platform.environment)

    async def stop(self) -> None:
        await self.client.aclose()

    # --- the auction ------------------------------------------------------------------------

    async def run(self, ping: Ping) -> store.Auction:
        """The ping's auction result: run now, or as recorded by an earlier request."""
        t0 = time.perf_counter()
        async with self.db.begin() as conn:
            setting = await store.setting(conn, ping.ping_id, ping.campaign_id, ping.source_id)
            found = setting.auction
            if found is not None and found.status == "closed":
                return self._same_ping(found, ping)
            pinging = self._prepare(setting, ping)
            started = await store.start_auction(
                conn,
                ping.ping_id,
                ping.account_id,
                ping.campaign_id,
                ping.source_id,
                self.settings.abandoned_after_s,
            )
        if not started:
            return await self._recorded(ping, pinging.campaign.ping_post.auction_ms)
        try:
            return await self._auction(ping, pinging, t0)
        except BaseException:
            # Not recorded: free the ping, so that a retry runs it afresh (or, if even
            # that fails, takes it over once it is abandoned_after_s old).
            with contextlib.suppress(Exception):
                async with self.db.begin() as conn:
                    await store.abandon_auction(conn, ping.ping_id)
            raise

    def _same_ping(self, found: store.Auction, ping: Ping) -> store.Auction:
        if (found.source_id, found.campaign_id) != (ping.source_id, ping.campaign_id):
            raise AuctionRefusedError(409, "ping_id_conflict", "the ping id names another ping")
        return found

    def _prepare(self, setting: store.Setting, ping: Ping) -> Pinging:
        campaign = setting.campaign
        if campaign is None or campaign.account_id != ping.account_id:
            raise AuctionRefusedError(404, "campaign_not_found", "no such campaign")
        source = setting.source
        if source is None or source.campaign_id != campaign.campaign_id:
            raise AuctionRefusedError(404, "source_not_found", "no such source in the campaign")
        if not campaign.ping_post.enabled:
            raise AuctionRefusedError(
                409, "ping_post_disabled", "the campaign does not run ping-post auctions"
            )
        pii = {f.name for f in campaign.fields if f.pii}
        # Only non-PII fields are sent to ingest's caller; dropped again here so that a
        # mistake upstream cannot carry personal data to every bidder.
        values = {k: v for k, v in ping.fields.items() if k not in pii}
        now = self.clock()
        bidders: list[ev.BuyerState] = []
        not_pinged: list[ev.Rejection] = []
        for buyer in setting.buyers:
            if buyer.ping is None:
                continue  # takes posts only: not part of the ping tree
            why = screen(domain.ping_screening(buyer, pii), values, now, pii=pii)
            if why is None:
                bidders.append(buyer)
            else:
                not_pinged.append(why)
        return Pinging(campaign, source, bidders, not_pinged, values)

    async def _recorded(self, ping: Ping, auction_ms: int) -> store.Auction:
        """The result of the same ping's auction that another request is running."""
        wait_s = auction_ms / 1000 + self.settings.abandoned_after_s
        deadline = time.monotonic() + wait_s
        while True:
            async with self.db.begin() as conn:
                found = await store.auction(conn, ping.ping_id)
            if found is not None and found.status == "closed":
                return self._same_ping(found, ping)
            if found is not None and found.source_id != ping.source_id:
                raise AuctionRefusedError(409, "ping_id_conflict", "the ping id names another ping")
            if time.monotonic() > deadline:
                raise AuctionRefusedError(
                    409, "auction_in_progress", "this ping's auction has not finished; retry"
                )
            await asyncio.sleep(0.02)

    async def _auction(self, ping: Ping, pinging: Pinging, t0: float) -> store.Auction:
        campaign, source = pinging.campaign, pinging.source
        deadline_ms = float(campaign.ping_post.auction_ms)
        values = {**pinging.values, "ping_id": str(ping.ping_id)}
        answers = list(
            await asyncio.gather(
                *(
                    self._ping_safely(b, values, ping.ping_id, deadline_ms, t0)
                    for b in pinging.bidders
                )
            )
        )
        bidders = [domain.Bidder(b.buyer_id, b.name, b.priority) for b in pinging.bidders]
        result = domain.close(answers, bidders, source.payout, campaign.margin, pinging.not_pinged)
        duration_ms = (time.perf_counter() - t0) * 1000
        expires_at = self.clock() + dt.timedelta(seconds=campaign.ping_post.ttl_s)
        events = self._events(ping, pinging, answers, result, expires_at, duration_ms)
        async with self.db.begin() as conn:
            closed = await store.close_auction(
                conn,
                ping.ping_id,
                result.bids,
                result.promised_payout,
                expires_at,
                duration_ms,
                result.rejections,
            )
            if closed is not None:
                await self.outbox.stage_many(conn, [(e, ping.ping_id) for e in events])
            recorded = closed or await store.auction(conn, ping.ping_id)
        assert recorded is not None
        if closed is not None:
            self.relay.wake()
            self.metrics.auction_seconds.observe(duration_ms / 1000)
            self.metrics.auction_overhead_seconds.observe(
                domain.overhead_ms(duration_ms, answers) / 1000
            )
            self.metrics.auction_bids.observe(len(result.bids))
            log.info(
                "auction_closed",
                ping_id=str(ping.ping_id),
                campaign_id=str(ping.campaign_id),
                pinged=len(answers),
                bids=len(result.bids),
                duration_ms=round(duration_ms, 1),
            )
        return recorded

    async def _ping_safely(
        self,
        buyer: ev.BuyerState,
        values: dict[str, ev.FieldValue],
        ping_id: uuid.UUID,
        deadline_ms: float,
        t0: float,
    ) -> domain.PingAnswer:
        """One buyer's ping; whatever goes wrong with it is that buyer's error, never
        the auction's: the other bids still count."""
        started = time.perf_counter()
        try:
            return await self._ping(buyer, values, ping_id, deadline_ms, t0)
        except Exception as exc:
            log.error("ping_failed", buyer_id=str(buyer.buyer_id), error=repr(exc))
            latency = (time.perf_counter() - started) * 1000
            return domain.PingAnswer(
                buyer.buyer_id, P.ERROR, latency, latency, reason=f"internal: {type(exc).__name__}"
            )

    async def _ping(
        self,
        buyer: ev.BuyerState,
        values: dict[str, ev.FieldValue],
        ping_id: uuid.UUID,
        deadline_ms: float,
        t0: float,
    ) -> domain.PingAnswer:
        config = buyer.ping
        assert config is not None
        started = time.perf_counter()
        budget = domain.budget_ms(config.timeout_ms, deadline_ms, (started - t0) * 1000)

        def answer(result: ev.PingResult, reason: str | None, **more: Any) -> domain.PingAnswer:
            latency = (time.perf_counter() - started) * 1000
            return domain.PingAnswer(buyer.buyer_id, result, latency, budget, reason=reason, **more)

        if budget <= 0:
            return answer(P.TIMEOUT, "the auction's deadline had passed")
        status: int | None = None
        try:
            url = str(config.url)
            parse_endpoint(url)  # userinfo, scheme: the transport checks only addresses
            request = render(config.integration, values, keys=self.keys)
            headers = {**request.headers, PING_ID_HEADER: str(ping_id)}
            # The budget bounds the whole exchange, not each read: a bid trickled in
            # byte by byte must not hold the auction past its deadline.
            async with asyncio.timeout(budget / 1000):
                async with self.client.stream(
                    "POST", url, content=request.body, headers=headers, timeout=budget / 1000
                ) as response:
                    status = response.status_code
                    body, truncated = await read_capped(response, self.settings.max_response_bytes)
                    content_type = response.headers.get("content-type", "")
        except TemplateError as exc:  # not sent: this ping cannot fill the buyer's template
            return answer(P.ERROR, f"template: {exc}")
        except EgressRefusedError as exc:
            log.warning("ping_egress_refused", buyer_id=str(buyer.buyer_id), reason=exc.reason)
            return answer(P.ERROR, f"egress_refused: {exc.short()}")
        except (TimeoutError, httpx.TimeoutException):
            return answer(P.TIMEOUT, f"no whole answer within {budget:.0f} ms")
        except httpx.HTTPError as exc:
            return answer(P.ERROR, f"transport: {type(exc).__name__}", http_status=status)
        done = answer(P.ERROR, None, http_status=status)
        if not domain.counts(done.latency_ms, budget):
            # It arrived, but after the buyer's time: ignored, like one that never came.
            return answer(P.TIMEOUT, f"answered after {budget:.0f} ms", http_status=status)
        if truncated:
            return answer(P.ERROR, "response_too_large", http_status=status)
        if 300 <= status < 400:
            return answer(P.ERROR, f"redirect_not_followed: http_{status}", http_status=status)
        if status >= 500:
            return answer(P.ERROR, f"http_{status}", http_status=status)
        return _from_bid(read_bid(config, status, body, content_type), done)

    # --- events -----------------------------------------------------------------------------

    def _events(
        self,
        ping: Ping,
        pinging: Pinging,
        answers: list[domain.PingAnswer],
        result: domain.Result,
        expires_at: dt.datetime,
        duration_ms: float,
    ) -> list[Event]:
        common = {
            "account_id": ping.account_id,
            "correlation_id": ping.ping_id,
            "producer": "auction",
        }
        ref = {
            "ping_id": ping.ping_id,
            "campaign_id": ping.campaign_id,
            "source_id": ping.source_id,
        }
        received = ev.PingReceived.new(
            event_id=derived_id("ping.received", ping.ping_id),
            payload=ev.PingReceivedPayload(**ref, fields=pinging.values),
            **common,
        )
        events: list[Event] = [received]
        for a in answers:
            events.append(
                ev.BuyerPinged.new(
                    event_id=derived_id("buyer.pinged", ping.ping_id, a.buyer_id),
                    causation_id=received.event_id,
                    payload=ev.BuyerPingedPayload(
                        **ref,
                        buyer_id=a.buyer_id,
                        result=a.result,
                        price=a.price if a.result is P.BID else None,
                        bid_ref=a.bid_ref if a.result is P.BID else None,
                        http_status=a.http_status,
                        latency_ms=a.latency_ms,
                        reason=a.reason[:1000] if a.reason else None,
                    ),
                    **common,
                )
            )
        events.append(
            ev.AuctionClosed.new(
                event_id=derived_id("auction.closed", ping.ping_id),
                causation_id=received.event_id,
                payload=ev.AuctionClosedPayload(
                    **ref,
                    bids=result.bids,
                    payout=result.promised_payout,
                    expires_at=expires_at,
                    duration_ms=duration_ms,
                    rejections=result.rejections,
                ),
                **common,
            )
        )
        return events

    # --- the post's claim -------------------------------------------------------------------

    async def claim(
        self, ping_id: uuid.UUID, source_id: uuid.UUID, lead_id: uuid.UUID
    ) -> store.Auction:
        now = self.clock()
        async with self.db.begin() as conn:
            claimed = await store.claim(conn, ping_id, source_id, lead_id, now)
            if claimed is not None:
                return claimed
            found = await store.auction(conn, ping_id)
        refusal = domain.claim_refusal(
            exists=found is not None and found.source_id == source_id and found.status == "closed",
            has_bids=bool(found and found.bids),
            claimed_by=found.claimed_by if found else None,
            expires_at=found.expires_at if found else None,
            lead_id=lead_id,
            now=now,
        )
        raise AuctionRefusedError(*refusal)


def _from_bid(bid: BidReading, done: domain.PingAnswer) -> domain.PingAnswer:
    """A whole answer in time, as its ping config reads it: a bid or none."""
    if bid.price is None:
        return replace(done, result=P.NO_BID, reason=bid.reason)
    return replace(done, result=P.BID, price=bid.price, bid_ref=bid.bid_ref, reason=None)
