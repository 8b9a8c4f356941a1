"""The ingest gateway: sources post leads (and pings) with their API key.

A lead goes through, in order: the API key (401), the source's rate limit (429
``rate_limited``), its IP allow-list (403 ``ip_not_allowed``), the source's and
campaign's status (403), its account's plan (429 ``account_over_plan``), the body
(413, 400), the ``Idempotency-Key`` (a replay, 409 or 422), the campaign's fields
(422 ``invalid_fields``), its duplicate check (422 ``duplicate_lead``) and the
source's caps (429 ``source_cap``), both decided in the transaction that stores the
lead; for the post of a ping, the claim of its auction (404/409/410/422); then Kafka
(202, or 503 leaving nothing behind).

Every refusal names its code and, in ``reason``, the ``RejectionCode`` it counts as.
Once the source is known, a refused post gets a lead id (in the answer), a row the
source can look up (``GET /v1/leads/{id}``) and a ``LeadRejected`` event staged in the
outbox in the same transaction. Not for ``rate_limited``: under a flood, one row and one
event per refused request would turn the limit into an amplifier of the very load it
is there to shed; those refusals are counted by the HTTP metrics (status 429 per route)
and that is all. Nor for refusals of the protocol rather than of the lead (a malformed
or reused Idempotency-Key, a request still in flight).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from lx_platform.crypto import seal_fields
from lx_platform.http import internal_guard, problem
from lx_platform.logging import get_logger
from lx_platform.runtime import Runtime
from lx_schemas import events as ev
from lx_schemas.envelope import Frozen, derived_id, utcnow
from pydantic import BaseModel, Field

from lx_ingest import domain, store
from lx_ingest.auction import AuctionClient, AuctionRefused, AuctionUnavailable, Claim
from lx_ingest.ratelimit import SourceRateLimiter
from lx_ingest.settings import IngestSettings
from lx_ingest.sources import SourceCache

log = get_logger(__name__)
router = APIRouter(tags=["leads"])
internal = APIRouter(
    prefix="/internal/v1", dependencies=[Depends(internal_guard())], include_in_schema=False
)
RC = ev.RejectionCode


class LeadAccepted(Frozen):
    lead_id: uuid.UUID
    status: str = "received"
    received_at: dt.datetime


class RejectionView(Frozen):
    """One reason, as its source may read it: a code, words, how many buyers (or the
    field) it concerns, never which buyer."""

    code: str
    detail: str
    field: str | None = None
    count: int = 1


class LeadStatus(Frozen):
    """A lead as its source sees it.

    ``status``: ``received`` (being routed), ``sold``, ``unsold`` or ``rejected``
    (refused at the post). ``reason``: for ``unsold`` why routing ended
    (``no_eligible_buyers``, ``all_buyers_declined``), for ``rejected`` the
    ``RejectionCode``. ``rejections``: for ``rejected`` what was wrong (fields named);
    for ``unsold`` how many buyers fell for each reason. ``payout``: what the source
    earns (its sales, less returns).
    """

    lead_id: uuid.UUID
    status: str
    received_at: dt.datetime
    outcome_at: dt.datetime | None = None
    reason: str | None = None
    detail: str | None = None
    error_code: str | None = None
    sales: int = 0
    returns: int = 0
    payout: Decimal | None = None
    rejections: tuple[RejectionView, ...] = ()
    ping_id: uuid.UUID | None = None


def _error(code: str, detail: str, *more: tuple[str, str]) -> dict[str, Any]:
    """An OpenAPI response: one example per error code the status can carry."""
    cases = [(code, detail), *more]
    examples = {c: {"summary": d, "value": {"error": {"code": c, "detail": d}}} for c, d in cases}
    return {
        "description": "; ".join(f"`{c}`: {d}" for c, d in cases),
        "content": {"application/json": {"examples": examples}},
    }


POST_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error(
        "malformed_json",
        "the body is not a JSON object",
        ("invalid_idempotency_key", "the Idempotency-Key is not 1-255 printable characters"),
    ),
    401: _error("invalid_api_key", "missing or unknown source API key"),
    403: _error(
        "source_paused",
        "the source is paused",
        ("campaign_paused", "the source's campaign is paused"),
        ("ip_not_allowed", "the request comes from an address outside the source's allow-list"),
    ),
    409: _error(
        "request_in_progress",
        "a request with this Idempotency-Key is still being processed; retry shortly",
    ),
    413: _error("payload_too_large", "the body is larger than allowed"),
    422: _error(
        "invalid_fields",
        "fields failed validation; each one is listed in `errors` with its code",
        ("duplicate_lead", "a lead with the same value of `field` was accepted in the window"),
        ("idempotency_key_reused", "this Idempotency-Key came before with another body"),
    ),
    429: _error(
        "rate_limited",
        "more posts per second than the source may send; see Retry-After",
        ("source_cap", "the source's hourly, daily or monthly cap is reached; see Retry-After"),
        (
            "account_over_plan",
            "the account reached its plan's cap for the month; see Retry-After and resets_at",
        ),
    ),
    503: _error("unavailable", "the lead could not be stored durably; retry"),
}
PING_POST_RESPONSES: dict[int | str, dict[str, Any]] = {
    **POST_RESPONSES,
    404: _error("ping_not_found", "no such ping of this source"),
    409: _error(
        "ping_already_posted",
        "another lead was posted for this ping",
        ("request_in_progress", "a request with this Idempotency-Key is still being processed"),
    ),
    410: _error("ping_expired", "the ping's bid is no longer held; ping again"),
    422: _error(
        "invalid_fields",
        "fields failed validation; each one is listed in `errors` with its code",
        ("duplicate_lead", "a lead with the same value of `field` was accepted in the window"),
        ("ping_without_bids", "the ping's auction had no bid: there is nothing to post to"),
        ("idempotency_key_reused", "this Idempotency-Key came before with another body"),
    ),
    503: _error(
        "unavailable",
        "the lead could not be stored durably; retry with the same Idempotency-Key",
        ("auction_unavailable", "the auction service did not answer; retry"),
    ),
}
IDEMPOTENCY_KEY_DOC = (
    "Makes a retry safe: for 24 hours (at least), the same key with the same body gets the"
    " first answer again (`Idempotent-Replayed: true`) and creates nothing; with another body,"
    " `422 idempotency_key_reused`; while the first request runs, `409`. Scoped to the"
    " source. Answers that decide the lead (202, 4xx but 429) are remembered; 429 and 5xx"
    " are not, so a retry can succeed."
)
LEAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "additionalProperties": True,
                    "description": "The lead's fields, named as in its campaign's schema.",
                }
            }
        },
    }
}
# What a refusal counts as, by the answer's code (the event and the status lookup).
REASON_OF = {
    "malformed_json": RC.VALIDATION,
    "payload_too_large": RC.VALIDATION,
    "invalid_fields": RC.VALIDATION,
    "duplicate_lead": RC.DUPLICATE,
    "source_paused": RC.SOURCE_PAUSED,
    "campaign_paused": RC.SOURCE_PAUSED,
    "ip_not_allowed": RC.IP_NOT_ALLOWED,
    "source_cap": RC.SOURCE_CAP,
    "rate_limited": RC.RATE_LIMITED,
    "ping_expired": RC.PING_EXPIRED,
    "account_over_plan": RC.ACCOUNT_OVER_PLAN,
}
# The auction's claim refusals, as the source gets them (status, code, words).
CLAIM_REFUSALS = {
    "ping_not_found": (404, "no ping of this source has this id"),
    "ping_already_posted": (409, "another lead was already posted for this ping"),
    "ping_expired": (410, "the ping's bid is no longer held; ping again"),
    "ping_without_bids": (422, "the ping's auction had no bid: there is nothing to post to"),
}


def _runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def _settings(rt: Runtime) -> IngestSettings:
    settings = rt.settings
    assert isinstance(settings, IngestSettings)
    return settings


def _limiter(rt: Runtime) -> SourceRateLimiter:
    limiter: SourceRateLimiter = rt.extras["limiter"]
    return limiter


def auction_client(rt: Runtime) -> AuctionClient:
    client: AuctionClient | None = rt.extras.get("auction")
    if client is None:  # built on first use: the composition root never connects
        client = rt.extras["auction"] = AuctionClient(rt.internal_client(), _settings(rt))
    return client


async def _source(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> store.SourceContext:
    key = x_api_key
    if key is None and authorization:
        scheme, _, token = authorization.partition(" ")
        key = token if scheme.lower() == "bearer" else None
    if not key:
        raise HTTPException(
            401,
            {
                "code": "invalid_api_key",
                "detail": "send the source API key as 'Authorization: Bearer <key>' or 'X-API-Key'",
            },
        )
    digest = hashlib.sha256(key.encode()).hexdigest()
    rt = _runtime(request)
    cache: SourceCache = rt.extras["sources"]
    ctx = cache.get(digest)
    if ctx is None:
        generation = cache.generation
        async with rt.db.begin() as conn:
            ctx = await store.source_by_key_hash(conn, digest)
        if ctx is not None:
            cache.put(digest, ctx, generation)
    if ctx is None or ctx.campaign_status is None:
        raise HTTPException(401, {"code": "invalid_api_key", "detail": "unknown API key"})
    return ctx


Source = Annotated[store.SourceContext, Depends(_source)]


# --- refusals -------------------------------------------------------------------------------


def _with_retry_after(response: Response, seconds: int) -> Response:
    response.headers["Retry-After"] = str(seconds)
    return response


def rate_limited(kind: str, retry_after: int) -> Response:
    return _with_retry_after(
        problem(
            429,
            "rate_limited",
            f"this source sends more {kind}s per second than it may; retry in {retry_after} s",
            reason=RC.RATE_LIMITED.value,
        ),
        retry_after,
    )


async def refuse(
    rt: Runtime,
    source: store.SourceContext,
    lead_id: uuid.UUID,
    status: int,
    code: str,
    detail: str,
    rejections: Sequence[ev.Rejection],
    *,
    ping_id: uuid.UUID | None = None,
    retry_after: int | None = None,
    subjects: Sequence[domain.SubjectKey] = (),
    **extra: Any,
) -> Response:
    """Answer a refused post, and record it where its source can ask why: a
    ``rejected_leads`` row and a ``LeadRejected`` event (no PII), staged in the outbox
    in one transaction. If the database is down too, the answer stays the 4xx it is
    (the refusal is right either way) and only the record is lost, which is logged.
    ``subjects``: a post refused after its fields were read (a duplicate, a cap) is
    linked to its data subject, whose access export lists it."""
    refused_at = utcnow()
    reason = rejections[0].code
    event = ev.LeadRejected.new(
        event_id=derived_id("lead.rejected", lead_id),
        occurred_at=refused_at,
        account_id=source.account_id,
        correlation_id=lead_id,
        producer="ingest",
        payload=ev.LeadRejectedPayload(
            lead_id=lead_id,
            campaign_id=source.campaign_id,
            source_id=source.source_id,
            http_status=status,
            rejections=tuple(rejections),
            ping_id=ping_id,
        ),
    )
    try:
        async with rt.db.begin() as conn:
            await store.record_rejection(
                conn,
                lead_id=lead_id,
                ctx=source,
                refused_at=refused_at,
                http_status=status,
                code=code,
                rejections=rejections,
                ping_id=ping_id,
            )
            await store.index_subjects(conn, source.account_id, subjects, lead_id, refused_at)
            await rt.outbox.stage(conn, event, lead_id)
        rt.relay.wake()
    except Exception as exc:
        log.error("lead_rejection_not_recorded", lead_id=str(lead_id), code=code, error=repr(exc))
    log.info("lead_refused", lead_id=str(lead_id), source_id=str(source.source_id), code=code)
    response = problem(status, code, detail, reason=reason.value, lead_id=str(lead_id), **extra)
    return response if retry_after is None else _with_retry_after(response, retry_after)


def _one(code: RC, detail: str, field: str | None = None) -> list[ev.Rejection]:
    return [ev.Rejection(code=code, detail=detail, field=field)]


async def gate(
    rt: Runtime, request: Request, source: store.SourceContext, *, kind: str
) -> Response | None:
    """The source's controls that need no body: its rate, its allowed addresses, its
    and its campaign's status. ``kind``: "post" (rate_per_s) or "ping" (pings_per_s).
    Refusals of a post are recorded (``refuse``); a refused ping has no lead to record.

    The rate comes first, so that no other refusal (each one a row and an event) can be
    had faster than the source's rate.
    """
    controls = source.controls
    rate, burst = (
        (controls.rate_per_s, controls.burst) if kind == "post" else (controls.pings_per_s, None)
    )
    wait = await _limiter(rt).admit(kind, source.source_id, rate, burst)
    if wait is not None:
        return rate_limited(kind, wait)
    refusal: tuple[int, str, str] | None = None
    if controls.ip_allow:
        address = domain.client_address(
            request.client.host if request.client else None,
            request.headers.getlist("x-forwarded-for"),
            _settings(rt).trusted_proxies,
        )
        if address is None or not controls.allows(address):
            refusal = (403, "ip_not_allowed", "this source may not send from this address")
    if refusal is None and source.source_status != ev.Status.ACTIVE:
        refusal = (403, "source_paused", "this source is paused")
    if refusal is None and source.campaign_status != ev.Status.ACTIVE:
        refusal = (403, "campaign_paused", "this source's campaign is paused")
    until = source.over_plan_until
    if refusal is None and until is not None and (now := utcnow()) < until:
        return await over_plan(rt, source, kind, until, now)
    if refusal is None:
        return None
    status, code, detail = refusal
    if kind == "ping":
        return problem(status, code, detail, reason=REASON_OF[code].value)
    return await refuse(
        rt, source, uuid.uuid4(), status, code, detail, _one(REASON_OF[code], detail)
    )


async def over_plan(
    rt: Runtime, source: store.SourceContext, kind: str, until: dt.datetime, now: dt.datetime
) -> Response:
    """The account reached its plan's hard cap (billing's word): 429, as for a source's
    cap, since the refusal is a quota that lifts by itself at a known time (Retry-After:
    when the period resets); a 403 would tell the source to stop, not to wait."""
    resets = until.astimezone(dt.UTC).isoformat()
    detail = f"this account is over its plan: {source.over_plan_reason}; it resets at {resets}"
    wait = domain.retry_after_s((until - now).total_seconds())
    code = RC.ACCOUNT_OVER_PLAN
    if kind == "ping":
        return _with_retry_after(problem(429, code.value, detail, reason=code.value), wait)
    return await refuse(
        rt,
        source,
        uuid.uuid4(),
        429,
        code.value,
        detail,
        _one(code, detail),
        retry_after=wait,
        resets_at=resets,
    )


async def read_body(
    rt: Runtime, request: Request
) -> tuple[dict[str, Any] | None, tuple[int, str, str] | None]:
    """The JSON object posted, or why not (status, code, words)."""
    limit = _settings(rt).max_body_bytes
    too_large = (413, "payload_too_large", f"the body exceeds {limit} bytes")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return None, too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None, too_large
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None, (400, "malformed_json", "the body is not valid JSON")
    if not isinstance(data, dict):
        return None, (400, "malformed_json", "the body must be a JSON object of fields")
    return data, None


# --- posting a lead -------------------------------------------------------------------------


IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", description=IDEMPOTENCY_KEY_DOC)
]


@router.post(
    "/v1/leads",
    status_code=202,
    response_model=LeadAccepted,
    responses=POST_RESPONSES,
    openapi_extra=LEAD_BODY,
)
async def post_lead(
    request: Request, source: Source, idempotency_key: IdempotencyKey = None
) -> Response:
    """Accept a lead: ``202`` once it is durably in Kafka, else a 4xx naming the reason."""
    return await intake(request, source, idempotency_key)


@router.post(
    "/v1/pings/{ping_id}/post",
    status_code=202,
    response_model=LeadAccepted,
    responses=PING_POST_RESPONSES,
    openapi_extra=LEAD_BODY,
    tags=["ping-post"],
)
async def post_pinged_lead(
    ping_id: uuid.UUID, request: Request, source: Source, idempotency_key: IdempotencyKey = None
) -> Response:
    """The post of a ping: the full lead, checked as ``POST /v1/leads`` checks it, then
    bound to the ping's auction, whose bids it is offered to (best first, and only while
    a bid pays the source what the ping promised). Send an ``Idempotency-Key``: a retry
    after a 503 then finishes the same lead, where a new request would find the ping
    taken (409)."""
    return await intake(request, source, idempotency_key, ping_id=ping_id)


async def intake(
    request: Request,
    source: store.SourceContext,
    idempotency_key: str | None,
    *,
    ping_id: uuid.UUID | None = None,
) -> Response:
    rt = _runtime(request)
    if idempotency_key is not None and not domain.valid_idempotency_key(idempotency_key):
        return problem(
            400,
            "invalid_idempotency_key",
            "the Idempotency-Key must be 1 to 255 printable ASCII characters without spaces",
        )
    if refused := await gate(rt, request, source, kind="post"):
        return refused
    data, wrong = await read_body(rt, request)
    if data is None:
        assert wrong is not None
        status, code, detail = wrong
        return await refuse(
            rt,
            source,
            uuid.uuid4(),
            status,
            code,
            detail,
            _one(RC.VALIDATION, detail),
            ping_id=ping_id,
        )
    if idempotency_key is None:
        return await _decide(rt, source, data, uuid.uuid4(), ping_id=ping_id)
    return await _decide_once(rt, source, data, idempotency_key, ping_id)


@dataclass(frozen=True)
class HeldKey:
    """An Idempotency-Key this request holds while it decides the lead."""

    source_id: uuid.UUID
    key: str
    claim_id: uuid.UUID


async def _decide_once(
    rt: Runtime,
    source: store.SourceContext,
    data: dict[str, Any],
    key: str,
    ping_id: uuid.UUID | None,
) -> Response:
    """``_decide`` at most once per (source, key): later requests get its answer."""
    settings = _settings(rt)
    # The ping is part of what was asked: the same body for another ping is another request.
    fingerprinted = data if ping_id is None else {"ping_id": str(ping_id), "lead": data}
    fingerprint = domain.request_fingerprint(
        settings.hash_key.get_secret_value().encode(), fingerprinted
    )
    async with rt.db.begin() as conn:
        claim = await store.claim_idempotency_key(
            conn,
            source.source_id,
            key,
            fingerprint,
            now=utcnow(),
            lease=dt.timedelta(seconds=settings.idempotency_lease_s),
            ttl=dt.timedelta(hours=settings.idempotency_ttl_hours),
        )
    verdict = claim.verdict
    if verdict is domain.KeyVerdict.REPLAY:
        assert claim.status_code is not None and claim.response is not None
        return Response(
            claim.response,
            status_code=claim.status_code,
            media_type="application/json",
            headers={"Idempotent-Replayed": "true"},
        )
    if verdict is domain.KeyVerdict.REUSED:
        return problem(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was sent before with a different body; use a new key",
        )
    if verdict is domain.KeyVerdict.IN_FLIGHT:
        return _with_retry_after(
            problem(
                409,
                "request_in_progress",
                "a request with this Idempotency-Key is still being processed; retry shortly",
            ),
            1,
        )

    held = HeldKey(source.source_id, key, claim.claim_id)
    if claim.lead_id is not None:
        log.warning("idempotency_key_taken_over", source_id=str(source.source_id))
    answer: Response | None = None
    try:
        answer = await _decide(
            rt,
            source,
            data,
            claim.lead_id or uuid.uuid4(),
            held,
            resumed=claim.lead_id is not None,
            ping_id=ping_id,
        )
        return answer
    finally:
        # A ping's post that failed with a 5xx may have claimed the ping for its lead
        # id: its retry must continue that lead (the claim is idempotent by lead id),
        # so the key is handed on with its lead rather than forgotten.
        await _settle(rt, held, answer, keep_lead=ping_id is not None)


async def _settle(
    rt: Runtime, held: HeldKey, answer: Response | None, *, keep_lead: bool = False
) -> None:
    """Remember the answer for the key's retries, or let go of the key.

    A 5xx has undone its lead: the key is forgotten and a retry starts afresh (or, with
    ``keep_lead``, handed on so the retry keeps the lead id). A request that raised (or
    was cancelled) may have stored its lead: the key is handed on, so that a retry takes
    it over and finishes that same lead.
    """
    try:
        async with rt.db.begin() as conn:
            if answer is None or (keep_lead and answer.status_code >= 500):
                await store.hand_on_key(conn, held.source_id, held.key, held.claim_id, now=utcnow())
            elif domain.remembers(answer.status_code):
                await store.answer_key(
                    conn,
                    held.source_id,
                    held.key,
                    held.claim_id,
                    status_code=answer.status_code,
                    response=bytes(answer.body),
                    now=utcnow(),
                )
            else:
                await store.release_key(conn, held.source_id, held.key, held.claim_id)
    except Exception as exc:  # the lease runs out, and a retry takes the key over
        log.error("idempotency_key_not_settled", source_id=str(held.source_id), error=repr(exc))


async def _decide(
    rt: Runtime,
    source: store.SourceContext,
    data: dict[str, Any],
    lead_id: uuid.UUID,
    held: HeldKey | None = None,
    *,
    resumed: bool = False,
    ping_id: uuid.UUID | None = None,
) -> Response:
    lead, errors = domain.normalise_lead(source.fields, data)
    if lead is None:
        return await refuse(
            rt,
            source,
            lead_id,
            422,
            "invalid_fields",
            "some fields failed validation",
            domain.field_rejections(errors),
            ping_id=ping_id,
            errors=[e.__dict__ for e in errors],
        )
    return await _accept(rt, source, lead, lead_id, held, resumed=resumed, ping_id=ping_id)


class _Duplicate(Exception):
    """Raised inside the lead's transaction to roll all of it back."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


class _Capped(Exception):
    """Raised inside the lead's transaction to roll all of it back (its cap units too)."""

    def __init__(self, full: list[store.CapFull]) -> None:
        super().__init__(full)
        self.full = full


def _cap_detail(full: Sequence[store.CapFull]) -> str:
    caps = ", ".join(f"{c.max_leads} per {c.period.value}" for c in full)
    return f"this source's cap is reached ({caps}, UTC)"


async def _accept(
    rt: Runtime,
    source: store.SourceContext,
    lead: domain.NormalisedLead,
    lead_id: uuid.UUID,
    held: HeldKey | None,
    *,
    resumed: bool,
    ping_id: uuid.UUID | None = None,
) -> Response:
    """Store the lead (its duplicate-index entries, data key, status row and cap units
    in one transaction), claim its ping if it has one, then publish it. ``resumed``: a
    dead request had begun this lead."""
    vault: store.KeyVault = rt.extras["vault"]
    received_at = utcnow()
    rule = source.dedupe
    hash_key = _settings(rt).hash_key.get_secret_value().encode()
    subjects = domain.subject_keys(
        source.fields, lead, account_id=source.account_id, hash_key=hash_key
    )
    dedupe_keys = (
        domain.dedupe_keys(
            rule,
            source.fields,
            lead,
            campaign_id=source.campaign_id,
            account_id=source.account_id,
            hash_key=hash_key,
        )
        if rule
        else []
    )
    caps: list[store.CapTaken] = []
    try:
        async with rt.db.begin() as conn:
            if rule and dedupe_keys:
                taken = await store.claim_dedupe_keys(
                    conn,
                    dedupe_keys,
                    lead_id,
                    seen_at=received_at,
                    window=dt.timedelta(days=rule.window_days),
                )
                if field := domain.first_duplicate(rule, taken):
                    raise _Duplicate(field)
            pii = None
            if lead.pii:
                if resumed:
                    data_key = await vault.get_or_create(conn, lead_id)
                else:
                    data_key = await vault.create(conn, lead_id)
                pii = seal_fields(data_key, lead_id, lead.pii)
            content = ev.LeadContent(fields=lead.fields, pii=pii)
            inserted = await store.insert_lead(conn, lead_id, source, received_at, ping_id, content)
            await store.index_subjects(conn, source.account_id, subjects, lead_id, received_at)
            if held is not None:
                await store.record_key_lead(conn, held.source_id, held.key, held.claim_id, lead_id)
            # Last, so the source's hot counter rows are locked for the shortest time;
            # a lead a dead request already stored has already counted.
            if inserted and source.controls.caps:
                caps, full = await store.take_caps(
                    conn, source.source_id, source.controls.caps, received_at
                )
                if full:
                    raise _Capped(full)
    except _Duplicate as duplicate:
        assert rule is not None
        log.info("lead_duplicate", source_id=str(source.source_id), field=duplicate.field)
        detail = domain.duplicate_detail(rule, duplicate.field)
        return await refuse(
            rt,
            source,
            lead_id,
            422,
            "duplicate_lead",
            detail,
            _one(RC.DUPLICATE, detail, duplicate.field),
            ping_id=ping_id,
            subjects=subjects,
            field=duplicate.field,
        )
    except _Capped as capped:
        detail = _cap_detail(capped.full)
        wait = max(c.period_end for c in capped.full) - utcnow()
        return await refuse(
            rt,
            source,
            lead_id,
            429,
            "source_cap",
            detail,
            _one(RC.SOURCE_CAP, detail),
            ping_id=ping_id,
            subjects=subjects,
            retry_after=domain.retry_after_s(wait.total_seconds()),
        )

    async def undo() -> None:
        async with rt.db.begin() as conn:
            await store.forget_lead(conn, lead_id, source.source_id, caps)

    claim: Claim | None = None
    if ping_id is not None:
        try:
            claim = await auction_client(rt).claim(ping_id, source.source_id, lead_id)
        except AuctionRefused as refused:
            await undo()
            status, detail = CLAIM_REFUSALS.get(
                refused.code, (422, refused.detail or "the ping cannot take this post")
            )
            reason = REASON_OF.get(refused.code, RC.VALIDATION)
            return await refuse(
                rt,
                source,
                lead_id,
                status,
                refused.code,
                detail,
                _one(reason, detail, None if reason is RC.PING_EXPIRED else "ping_id"),
                ping_id=ping_id,
                subjects=subjects,
            )
        except AuctionUnavailable as exc:
            log.error("ping_claim_failed", lead_id=str(lead_id), error=str(exc))
            await undo()
            return _with_retry_after(
                problem(
                    503,
                    "auction_unavailable",
                    "the ping could not be claimed; retry with the same Idempotency-Key",
                ),
                1,
            )
    received = ev.LeadReceived.new(
        event_id=derived_id("lead.received", lead_id),
        occurred_at=received_at,
        account_id=source.account_id,
        correlation_id=lead_id,
        producer="ingest",
        payload=ev.LeadReceivedPayload(
            lead_id=lead_id,
            campaign_id=source.campaign_id,
            source_id=source.source_id,
            lead=content,
            ping_id=ping_id,
            bids=claim.bids if claim else (),
            promised_payout=claim.promised_payout if claim else None,
        ),
    )
    usage = ev.UsageIncremented.new(
        event_id=derived_id("usage", ev.UsageMetric.LEADS_RECEIVED, lead_id),
        occurred_at=received_at,
        account_id=source.account_id,
        correlation_id=lead_id,
        causation_id=received.event_id,
        producer="ingest",
        payload=ev.UsageIncrementedPayload(
            metric=ev.UsageMetric.LEADS_RECEIVED, subject_id=lead_id
        ),
    )
    try:
        await rt.publisher.publish(received, lead_id)
    except Exception as exc:  # not durably stored: answer 503 and leave nothing behind
        log.error("lead_publish_failed", lead_id=str(lead_id), error=repr(exc))
        await undo()
        return _with_retry_after(
            problem(503, "unavailable", "the lead could not be stored; retry"), 5
        )
    # The lead is in Kafka: from here nothing may undo it. Its usage goes out now, or
    # through the outbox if Kafka fails meanwhile (a deterministic id makes a late or
    # repeated copy harmless).
    try:
        await rt.publisher.publish(usage, source.account_id)
    except Exception as exc:
        log.warning("usage_publish_deferred", lead_id=str(lead_id), error=repr(exc))
        async with rt.db.begin() as conn:
            await rt.outbox.stage(conn, usage, source.account_id)
        rt.relay.wake()
    log.info("lead_received", lead_id=str(lead_id), source_id=str(source.source_id))
    return JSONResponse(
        LeadAccepted(lead_id=lead_id, received_at=received_at).model_dump(mode="json"),
        status_code=202,
    )


# --- a lead's status ------------------------------------------------------------------------


def lead_status_view(row: dict[str, Any]) -> LeadStatus:
    """What the source may read of a stored lead: codes and words, never a buyer."""
    base = {
        "lead_id": row["lead_id"],
        "status": row["status"],
        "received_at": row["received_at"],
        "ping_id": row["ping_id"],
    }
    if row["kind"] == "rejected":
        rejections = tuple(
            RejectionView(code=r["code"], detail=r["detail"], field=r.get("field"))
            for r in row["rejections"]
        )
        detail = (
            rejections[0].detail
            if len(rejections) == 1
            else f"{len(rejections)} problems: " + "; ".join(r.detail for r in rejections[:3])
        )
        return LeadStatus(
            **base,
            outcome_at=row["outcome_at"],
            reason=rejections[0].code if rejections else None,
            detail=detail,
            error_code=row["code"],
            rejections=rejections,
        )
    codes = row["rejection_codes"] or []
    if row["status"] == "sold":
        detail = domain.sold_detail(row["sales"], row["returns"])
    elif row["status"] == "unsold":
        detail = domain.unsold_detail(codes)
    else:
        detail = "received; being offered to buyers"
    return LeadStatus(
        **base,
        outcome_at=row["outcome_at"],
        reason=row["reason"],
        detail=detail,
        sales=row["sales"],
        returns=row["returns"],
        payout=row["payout"],
        rejections=tuple(
            RejectionView(code=code, detail=domain.buyer_words(code), count=n)
            for code, n in domain.count_codes(codes)
        ),
    )


@router.get(
    "/v1/leads/{lead_id}",
    response_model=LeadStatus,
    responses={401: POST_RESPONSES[401], 404: _error("lead_not_found", "no such lead of yours")},
)
async def get_lead(lead_id: uuid.UUID, request: Request, source: Source) -> LeadStatus:
    """A source's view of one of its own leads, posted or refused: received, sold,
    unsold or rejected, and why, in a code and in words."""
    async with _runtime(request).db.begin() as conn:
        row = await store.lead_status(conn, lead_id, source.source_id)
    if row is None:
        raise HTTPException(404, {"code": "lead_not_found", "detail": "no such lead of yours"})
    return lead_status_view(row)


@internal.get("/lead-keys/{key_id}")
async def get_lead_key(key_id: uuid.UUID, request: Request) -> dict[str, str]:
    """The data key of one lead, for services that must read its PII (delivery)."""
    import base64

    rt = _runtime(request)
    async with rt.db.begin() as conn:
        key = await rt.extras["vault"].get(conn, key_id)
    if key is None:
        raise HTTPException(404, {"code": "key_not_found", "detail": "no such key (or shredded)"})
    return {"key_id": str(key_id), "data_key": base64.b64encode(key).decode()}


class KeyLookup(BaseModel):
    key_ids: list[uuid.UUID] = Field(max_length=500)


class KeyLookupAnswer(BaseModel):
    keys: dict[str, str]  # key id -> data key (base64); shredded or unknown ids are absent


@internal.post("/lead-keys/lookup")
async def lookup_lead_keys(body: KeyLookup, request: Request) -> KeyLookupAnswer:
    """The data keys of several leads at once (delivery's batch of jobs)."""
    import base64

    rt = _runtime(request)
    async with rt.db.begin() as conn:
        keys = await rt.extras["vault"].get_many(conn, body.key_ids)
    return KeyLookupAnswer(keys={str(k): base64.b64encode(v).decode() for k, v in keys.items()})
