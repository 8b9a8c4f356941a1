"""Posts leads to buyers: leases due jobs, sends, records the try and its events.

A try's whole record (request, response, result, the events that follow) is one
transaction. A try cut off after sending (crash, lost lease) is recorded as
``outcome_unknown`` and retried with the same delivery id, never guessed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from lx_integrations import signing
from lx_integrations.breaker import STATE_VALUES, Breakers, BreakerState
from lx_integrations.responses import read_response
from lx_integrations.templates import RenderedRequest, TemplateError, redact_headers, render
from lx_platform.consumer import is_transient
from lx_platform.crypto import open_fields, seal_bytes
from lx_platform.db import Database
from lx_platform.egress import EgressPolicy, EgressRefusedError, parse_endpoint
from lx_platform.egress_http import buyer_client, read_capped
from lx_platform.leadkeys import KeyUnavailableError, LeadKeys
from lx_platform.logging import get_logger
from lx_platform.metrics import Metrics
from lx_platform.outbox import Outbox, OutboxRelay
from lx_platform.secrets import ConfigKeys, SecretsError
from lx_schemas import events as ev
from lx_schemas.envelope import Event, derived_id, utcnow
from lx_schemas.events import RejectionCode

from lx_delivery import domain, store
from lx_delivery.settings import DeliverySettings

log = get_logger(__name__)
R = ev.DeliveryResult
# A try's lease: longer than any buyer timeout (60 s at most) plus recording its result.
LEASE_S = 90.0


class DeliveryWorker:
    def __init__(
        self,
        db: Database,
        outbox: Outbox,
        relay: OutboxRelay,
        keys: LeadKeys,
        settings: DeliverySettings,
        metrics: Metrics,
        egress: EgressPolicy,
        config_keys: ConfigKeys,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.outbox = outbox
        self.relay = relay
        self.keys = keys
        self.settings = settings
        self.metrics = metrics
        self.egress = egress
        self.config_keys = config_keys
        # Per process: each delivery process judges a buyer by what it sees itself.
        self.breakers = Breakers(clock=clock, on_change=self._breaker_changed)
        self.client = buyer_client(
            egress,
            max_connections=settings.max_in_flight * 2,
            user_agent="LeadExchange-Delivery/1.0",
        )
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self.egress.log_allow_list(self.settings.platform.environment)
        self._loop = asyncio.create_task(self._run(), name="delivery-worker")

    async def stop(self) -> None:
        if self._loop:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        if self._tasks:  # let tries in flight finish and be recorded
            await asyncio.wait(self._tasks, timeout=30)
        await self.client.aclose()

    async def _run(self) -> None:
        while True:
            # Cleared before the jobs are claimed, not after: jobs committed while the
            # claim runs wake the next round instead of waiting for the poll.
            self._wake.clear()
            try:
                claimed = await self._dispatch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("delivery_dispatch_failed", error=repr(exc))
                await asyncio.sleep(1.0)
                continue
            if claimed:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_s)

    async def _dispatch(self) -> int:
        free = self.settings.max_in_flight - len(self._tasks)
        if free <= 0:
            await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
            return 1
        async with self.db.begin() as conn:
            jobs = await store.claim_due(conn, free, lease_s=LEASE_S)
            # Each job's buyer read with the claim, rather than in a transaction per job.
            buyers = await store.buyers(conn, (j.buyer_id for j in jobs)) if jobs else {}
        await self.keys.prefetch(j.lead.pii.key_id for j in jobs if j.lead.pii is not None)
        for job in jobs:
            task = asyncio.create_task(self._deliver(job, buyers.get(job.buyer_id)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(jobs)

    async def _deliver(self, job: store.Job, buyer: ev.BuyerState | None) -> None:
        try:
            await self._deliver_once(job, buyer)
        except Exception as exc:
            # Leave the lease to expire: the job is tried again as outcome unknown.
            log.error(
                "delivery_failed",
                lead_id=str(job.lead_id),
                error=repr(exc),
                transient=is_transient(exc),
            )

    async def _deliver_once(self, job: store.Job, buyer: ev.BuyerState | None) -> None:
        """``buyer``: its state when the job was claimed (None: unknown)."""
        if job.interrupted:
            await self._record_interrupted(job)
        if buyer is None or buyer.status != ev.Status.ACTIVE:
            code = RejectionCode.BUYER_ERROR if buyer is None else RejectionCode.BUYER_PAUSED
            reason = "buyer_unknown" if buyer is None else "buyer_paused"
            await self._conclude(job, domain.Verdict(R.ERROR, reason, False, code))
            return
        pii: dict[str, Any] = {}
        data_key: bytes | None = None
        sealed = job.lead.pii
        if sealed is not None:
            try:
                data_key = await self.keys.get(sealed.key_id)
            except KeyUnavailableError as exc:
                log.warning("lead_key_unavailable", lead_id=str(job.lead_id), error=str(exc))
                async with self.db.begin() as conn:
                    await store.reschedule(conn, job.delivery_id, 2.0, count_try=False)
                return
            if data_key is None:
                await self._conclude(job, domain.Verdict(R.ERROR, "pii_shredded", False))
                return
            pii = open_fields(data_key, sealed)

        try:
            request = self._request(job, buyer, pii)
        except (TemplateError, SecretsError) as exc:
            # The buyer's configuration cannot make this request: nothing is sent, and
            # trying again would build the same thing.
            log.warning("delivery_template_error", buyer_id=str(job.buyer_id), error=str(exc))
            reason = f"{domain.TEMPLATE_ERROR}: {exc}"
            await self._conclude(job, domain.Verdict(R.ERROR, reason, False), data_key=data_key)
            return
        key = str(buyer.buyer_id)
        if not self.breakers.allow(key, buyer.breaker):
            # Concluded at once, unsent: routing moves on instead of waiting for a buyer
            # that keeps failing. A half-open breaker lets one real delivery probe it.
            verdict = domain.Verdict(
                R.ERROR, domain.CIRCUIT_OPEN, False, RejectionCode.CIRCUIT_OPEN
            )
            await self._conclude(job, verdict)
            return
        try:
            verdict, exchange = await self._post(job, buyer, request)
        except BaseException:
            self.breakers.release(key)
            raise
        health = domain.buyer_health(verdict, exchange.status)
        if health is domain.BuyerHealth.UP:
            self.breakers.success(key)
        elif health is domain.BuyerHealth.DOWN:
            self.breakers.failure(key, buyer.breaker)
        else:
            self.breakers.release(key)
        await self._conclude(job, verdict, exchange, data_key=data_key)

    def _request(
        self, job: store.Job, buyer: ev.BuyerState, pii: dict[str, Any]
    ) -> RenderedRequest:
        """The buyer's request, with the platform's headers: the delivery id (also as
        the idempotency key) and, if the buyer has a signing secret, the signature."""
        delivery_id = str(job.delivery_id)
        values = domain.request_values(
            lead_id=str(job.lead_id),
            delivery_id=delivery_id,
            price=job.price,
            fields=job.lead.fields,
            pii=pii,
            ping_id=str(job.ping_id) if job.ping_id else None,
            bid_ref=job.bid_ref,
        )
        rendered = render(buyer.integration, values, keys=self.config_keys)
        headers = {
            **rendered.headers,
            signing.DELIVERY_ID_HEADER: delivery_id,
            signing.IDEMPOTENCY_HEADER: delivery_id,
        }
        if buyer.signing_secret is not None:
            secret = self.config_keys.open(buyer.signing_secret)
            headers.update(signing.signature_headers(secret, delivery_id, rendered.body))
        return RenderedRequest(headers, rendered.body, rendered.content_type)

    async def _post(
        self, job: store.Job, buyer: ev.BuyerState, request: RenderedRequest
    ) -> tuple[domain.Verdict, Exchange]:
        started_at = utcnow()
        t0 = time.perf_counter()
        status: int | None = None
        content_type: str | None = None
        answer = b""
        peer: str | None = None
        timeout_s = buyer.timeout_ms / 1000
        url = str(buyer.endpoint_url)
        try:
            parse_endpoint(url)  # userinfo, scheme: the transport checks only addresses
            # The buyer's timeout bounds the whole exchange, not each read: an answer
            # trickled in byte by byte must not hold a slot (nor outlive the job's lease).
            async with asyncio.timeout(timeout_s):
                async with self.client.stream(
                    "POST", url, content=request.body, headers=request.headers, timeout=timeout_s
                ) as response:
                    status = response.status_code
                    content_type = response.headers.get("content-type")
                    peer = _peer(response)
                    answer, truncated = await read_capped(response, self.settings.log_limit_bytes)
            if truncated:
                verdict = domain.Verdict(R.ERROR, "response_too_large", False)
            else:
                reading = read_response(buyer.integration, status, answer, content_type)
                verdict = domain.priced(
                    domain.verdict_of(reading, status),
                    routed_price=job.price,
                    from_response=job.price_from_response,
                )
        except EgressRefusedError as exc:
            # Not sent: the endpoint is (or now resolves to) an address the platform never
            # connects to. Final: trying again would only knock on the same door.
            log.warning("delivery_egress_refused", buyer_id=str(job.buyer_id), reason=exc.reason)
            verdict = domain.Verdict(R.ERROR, f"{domain.EGRESS_REFUSED}: {exc.short()}", False)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            verdict = domain.Verdict(R.ERROR, f"connect_failed: {type(exc).__name__}", True)
        except (httpx.TimeoutException, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            # The request may have reached the buyer: the outcome is unknown.
            verdict = domain.Verdict(R.OUTCOME_UNKNOWN, type(exc).__name__, True)
        except TimeoutError:  # the whole exchange overran the buyer's timeout
            verdict = domain.Verdict(R.OUTCOME_UNKNOWN, "deadline_exceeded", True)
        except httpx.HTTPError as exc:
            verdict = domain.Verdict(R.ERROR, f"transport: {type(exc).__name__}", True)
        latency_ms = (time.perf_counter() - t0) * 1000
        self.metrics.delivery_buyer_latency.labels(str(job.buyer_id)).observe(latency_ms / 1000)
        # Kept without credentials: the auth header never reaches the log in clear.
        request_doc = domain.stored_request(
            url,
            redact_headers(request.headers, buyer.integration),
            request.body,
            self.settings.log_limit_bytes,
        )
        answered: dict[str, Any] = {"status": status, "body": answer.decode(errors="replace")}
        if content_type is not None:
            answered["content_type"] = content_type
        if peer is not None:
            answered["remote_address"] = peer  # the address the lead was sent to
        response_doc = json.dumps(answered).encode()
        return verdict, Exchange(started_at, latency_ms, status, request_doc, response_doc)

    async def _record_interrupted(self, job: store.Job) -> None:
        """The previous try was cut off after it may have reached the buyer."""
        verdict = domain.Verdict(R.OUTCOME_UNKNOWN, "interrupted_after_send", True)
        async with self.db.begin() as conn:
            await store.record_try(
                conn,
                job.delivery_id,
                store.TryRecord(
                    job.try_number - 1,
                    utcnow(),
                    0.0,
                    verdict.result,
                    None,
                    verdict.reason,
                    None,
                    None,
                    None,
                    RejectionCode.BUYER_ERROR,
                ),
            )
            await self.outbox.stage(
                conn,
                self._attempted(
                    job,
                    job.try_number - 1,
                    verdict,
                    RejectionCode.BUYER_ERROR,
                    None,
                    0.0,
                    final=False,
                ),
                job.lead_id,
            )
        self.relay.wake()
        self._count(job, verdict, None)

    async def _conclude(
        self,
        job: store.Job,
        verdict: domain.Verdict,
        exchange: Exchange | None = None,
        *,
        data_key: bytes | None = None,
    ) -> None:
        try_number = job.try_number
        retry = verdict.retryable and try_number < self.settings.max_tries
        result = verdict.result
        reason = verdict.reason
        if not retry and result is R.OUTCOME_UNKNOWN:
            # Out of tries and still unknown: falls through, flagged for reconciliation.
            result, reason = R.ERROR, f"{domain.UNRESOLVED}: {reason}"
        final = domain.Verdict(
            result, reason, retry, verdict.reason_code, verdict.price, verdict.buyer_lead_id
        )
        code = domain.final_code(result, final)
        status = exchange.status if exchange else None
        latency_ms = exchange.latency_ms if exchange else 0.0
        key_id = job.lead.pii.key_id if job.lead.pii else None
        record = store.TryRecord(
            try_number,
            exchange.started_at if exchange else utcnow(),
            latency_ms,
            verdict.result,
            status,
            verdict.reason,
            key_id,
            _seal(data_key, key_id, exchange.request_doc if exchange else None),
            _seal(data_key, key_id, exchange.response_doc if exchange else None),
            code.value if code else None,
            final.price if result is R.ACCEPTED else None,
            verdict.buyer_lead_id,
        )
        staged: list[tuple[Event, uuid.UUID]] = []
        async with self.db.begin() as conn:
            await store.record_try(conn, job.delivery_id, record)
            attempted = self._attempted(
                job, try_number, final, code, status, latency_ms, final=not retry
            )
            staged.append((attempted, job.lead_id))
            if retry:
                await store.reschedule(
                    conn, job.delivery_id, domain.backoff_s(try_number, self.settings.retry_base_s)
                )
            else:
                await store.finish(conn, job.delivery_id, result)
                if result is R.ACCEPTED and await store.record_sale(
                    conn, job.lead_id, job.sale, job.delivery_id
                ):
                    # The lead's outcome is its first sale; every sale is booked.
                    await store.decide_outcome(conn, job.lead_id, "sold")
                    staged.extend(self._sold(job, final, attempted))
            await self.outbox.stage_many(conn, staged)  # type: ignore[arg-type]
        self.relay.wake()
        self._count(job, verdict, status)
        log.info(
            "delivery_try",
            lead_id=str(job.lead_id),
            buyer_id=str(job.buyer_id),
            result=result.value,
            reason_code=code.value if code else None,
            reason=reason,
            try_number=try_number,
            latency_ms=round(latency_ms, 1),
        )

    def _count(self, job: store.Job, verdict: domain.Verdict, status: int | None) -> None:
        """One try, as recorded: counted once its transaction committed."""
        reason = domain.reason_class(verdict.result, verdict.reason, status, verdict.reason_code)
        self.metrics.delivery_outcomes.labels(
            str(job.buyer_id), verdict.result.value, reason.value
        ).inc()

    def _breaker_changed(self, key: str, before: BreakerState, after: BreakerState) -> None:
        self.metrics.delivery_breaker_state.labels(key).set(STATE_VALUES[after])
        log.warning("buyer_breaker_changed", buyer_id=key, before=before.value, after=after.value)

    def _attempted(
        self,
        job: store.Job,
        try_number: int,
        verdict: domain.Verdict,
        code: RejectionCode | None,
        status: int | None,
        latency_ms: float,
        *,
        final: bool,
    ) -> ev.DeliveryAttempted:
        accepted = verdict.result is R.ACCEPTED
        return ev.DeliveryAttempted.new(
            event_id=derived_id("delivery.attempted", job.delivery_id, try_number),
            account_id=job.account_id,
            correlation_id=job.lead_id,
            producer="delivery",
            payload=ev.DeliveryAttemptedPayload(
                lead_id=job.lead_id,
                campaign_id=job.campaign_id,
                source_id=job.source_id,
                buyer_id=job.buyer_id,
                delivery_id=job.delivery_id,
                attempt=job.attempt,
                try_number=try_number,
                final=final,
                result=verdict.result,
                http_status=status,
                latency_ms=latency_ms,
                reason=verdict.reason,
                reason_code=code,
                price=verdict.price if accepted else None,
                buyer_lead_id=verdict.buyer_lead_id,
            ),
        )

    def _sold(
        self, job: store.Job, verdict: domain.Verdict, cause: Event
    ) -> list[tuple[Event, uuid.UUID]]:
        """One sale of the lead (a multi-sell lead has one per buyer that took it)."""
        price = verdict.price if verdict.price is not None else job.price
        sold = ev.LeadSold.new(
            event_id=derived_id("lead.sold", job.lead_id, job.sale),
            account_id=job.account_id,
            correlation_id=job.lead_id,
            causation_id=cause.event_id,
            producer="delivery",
            payload=ev.LeadSoldPayload(
                lead_id=job.lead_id,
                campaign_id=job.campaign_id,
                source_id=job.source_id,
                buyer_id=job.buyer_id,
                delivery_id=job.delivery_id,
                price=price,
                payout=job.payout.for_price(price),
                sale=job.sale,
                buyer_lead_id=verdict.buyer_lead_id,
            ),
        )
        usage = ev.UsageIncremented.new(
            event_id=derived_id("usage", ev.UsageMetric.LEADS_SOLD, job.lead_id, job.sale),
            account_id=job.account_id,
            correlation_id=job.lead_id,
            causation_id=sold.event_id,
            producer="delivery",
            payload=ev.UsageIncrementedPayload(
                metric=ev.UsageMetric.LEADS_SOLD, subject_id=job.lead_id
            ),
        )
        return [(sold, job.lead_id), (usage, job.account_id)]


@dataclass(frozen=True)
class Exchange:
    """A try that went out: when, how long, the status, and its log (not yet sealed)."""

    started_at: dt.datetime
    latency_ms: float
    status: int | None
    request_doc: bytes
    response_doc: bytes


def _seal(key: bytes | None, key_id: uuid.UUID | None, doc: bytes | None) -> bytes | None:
    """Logs of leads with PII are sealed under the lead's key (shredded with it)."""
    if doc is None:
        return None
    if key is None or key_id is None:
        return doc  # a lead without PII fields: nothing to protect beyond the database
    return seal_bytes(key, key_id, doc)


def _peer(response: httpx.Response) -> str | None:
    """``ip:port`` of the connection that carried the exchange, if httpcore says."""
    stream = response.extensions.get("network_stream")
    address = stream.get_extra_info("server_addr") if stream is not None else None
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return None
