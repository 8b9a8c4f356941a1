"""The ingest gateway: sources post leads with their API key.

A lead goes through, in order: the API key (401), the body (413, 400), the source's
and campaign's status (403), the ``Idempotency-Key`` (a replay, 409 or 422), the
campaign's fields (422 ``invalid_fields``), its duplicate check (422
``duplicate_lead``), then Kafka (202, or 503 leaving nothing behind).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from lx_platform.crypto import seal_fields
from lx_platform.http import internal_guard, problem
from lx_platform.logging import get_logger
from lx_platform.runtime import Runtime
from lx_schemas import events as ev
from lx_schemas.envelope import Frozen, derived_id, utcnow

from lx_ingest import domain, store
from lx_ingest.settings import IngestSettings

log = get_logger(__name__)
router = APIRouter(tags=["leads"])
internal = APIRouter(
    prefix="/internal/v1", dependencies=[Depends(internal_guard())], include_in_schema=False
)


class LeadAccepted(Frozen):
    lead_id: uuid.UUID
    status: str = "received"
    received_at: dt.datetime


class LeadStatus(Frozen):
    lead_id: uuid.UUID
    status: str
    received_at: dt.datetime
    outcome_at: dt.datetime | None = None
    reason: str | None = None


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
    ),
    409: _error(
        "request_in_progress",
        "a request with this Idempotency-Key is still being processed; retry shortly",
    ),
    413: _error("payload_too_large", "the body is larger than allowed"),
    422: _error(
        "invalid_fields",
        "fields failed validation; each one is listed",
        ("duplicate_lead", "a lead with the same value of `field` was accepted in the window"),
        ("idempotency_key_reused", "this Idempotency-Key came before with another body"),
    ),
    503: _error("unavailable", "the lead could not be stored durably; retry"),
}
IDEMPOTENCY_KEY_DOC = (
    "Makes a retry safe: for 24 hours (at least), the same key with the same body gets the"
    " first answer again (`Idempotent-Replayed: true`) and creates nothing; with another body,"
    " `422 idempotency_key_reused`; while the first request runs, `409`. Scoped to the"
    " source. Answers 202 and 422 are remembered; 5xx are not, so a retry can succeed."
)


def _runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def _settings(rt: Runtime) -> IngestSettings:
    settings = rt.settings
    assert isinstance(settings, IngestSettings)
    return settings


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
    async with _runtime(request).db.begin() as conn:
        ctx = await store.source_by_key_hash(conn, digest)
    if ctx is None or ctx.campaign_status is None:
        raise HTTPException(401, {"code": "invalid_api_key", "detail": "unknown API key"})
    return ctx


Source = Annotated[store.SourceContext, Depends(_source)]


@router.post(
    "/v1/leads",
    status_code=202,
    response_model=LeadAccepted,
    responses=POST_RESPONSES,
    openapi_extra={
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
    },
)
async def post_lead(
    request: Request,
    source: Source,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", description=IDEMPOTENCY_KEY_DOC)
    ] = None,
) -> Response:
    """Accept a lead: ``202`` once it is durably in Kafka, else a 4xx naming the reason."""
    rt = _runtime(request)
    if idempotency_key is not None and not domain.valid_idempotency_key(idempotency_key):
        return problem(
            400,
            "invalid_idempotency_key",
            "the Idempotency-Key must be 1 to 255 printable ASCII characters without spaces",
        )
    limit = _settings(rt).max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return problem(413, "payload_too_large", f"the body exceeds {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return problem(413, "payload_too_large", f"the body exceeds {limit} bytes")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return problem(400, "malformed_json", "the body is not valid JSON")
    if not isinstance(data, dict):
        return problem(400, "malformed_json", "the body must be a JSON object of fields")
    if source.source_status != ev.Status.ACTIVE:
        return problem(403, "source_paused", "this source is paused")
    if source.campaign_status != ev.Status.ACTIVE:
        return problem(403, "campaign_paused", "this source's campaign is paused")
    if idempotency_key is None:
        return await _decide(rt, source, data, uuid.uuid4())
    return await _decide_once(rt, source, data, idempotency_key)


@dataclass(frozen=True)
class HeldKey:
    """An Idempotency-Key this request holds while it decides the lead."""

    source_id: uuid.UUID
    key: str
    claim_id: uuid.UUID


async def _decide_once(
    rt: Runtime, source: store.SourceContext, data: dict[str, Any], key: str
) -> Response:
    """``_decide`` at most once per (source, key): later requests get its answer."""
    settings = _settings(rt)
    fingerprint = domain.request_fingerprint(settings.hash_key.get_secret_value().encode(), data)
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
        response = problem(
            409,
            "request_in_progress",
            "a request with this Idempotency-Key is still being processed; retry shortly",
        )
        response.headers["Retry-After"] = "1"
        return response

    held = HeldKey(source.source_id, key, claim.claim_id)
    if claim.lead_id is not None:
        log.warning("idempotency_key_taken_over", source_id=str(source.source_id))
    answer: Response | None = None
    try:
        answer = await _decide(
            rt, source, data, claim.lead_id or uuid.uuid4(), held, resumed=claim.lead_id is not None
        )
        return answer
    finally:
        await _settle(rt, held, answer)


async def _settle(rt: Runtime, held: HeldKey, answer: Response | None) -> None:
    """Remember the answer for the key's retries, or let go of the key.

    A 5xx has undone its lead: the key is forgotten and a retry starts afresh. A request
    that raised (or was cancelled) may have stored its lead: the key is handed on, so
    that a retry takes it over and finishes that same lead.
    """
    try:
        async with rt.db.begin() as conn:
            if answer is None:
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
) -> Response:
    lead, errors = domain.normalise_lead(source.fields, data)
    if lead is None:
        return problem(
            422,
            "invalid_fields",
            "some fields failed validation",
            errors=[e.__dict__ for e in errors],
        )
    return await _accept(rt, source, lead, lead_id, held, resumed=resumed)


class _Duplicate(Exception):
    """Raised inside the lead's transaction to roll all of it back."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


async def _accept(
    rt: Runtime,
    source: store.SourceContext,
    lead: domain.NormalisedLead,
    lead_id: uuid.UUID,
    held: HeldKey | None,
    *,
    resumed: bool,
) -> Response:
    """Store the lead (its duplicate-index entries, data key and status row in one
    transaction), then publish it. ``resumed``: a dead request had begun this lead."""
    vault: store.KeyVault = rt.extras["vault"]
    received_at = utcnow()
    rule = source.dedupe
    dedupe_keys = (
        domain.dedupe_keys(
            rule,
            source.fields,
            lead,
            campaign_id=source.campaign_id,
            account_id=source.account_id,
            hash_key=_settings(rt).hash_key.get_secret_value().encode(),
        )
        if rule
        else []
    )
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
            await store.insert_lead(conn, lead_id, source, received_at)
            if held is not None:
                await store.record_key_lead(conn, held.source_id, held.key, held.claim_id, lead_id)
    except _Duplicate as duplicate:
        assert rule is not None
        log.info("lead_duplicate", source_id=str(source.source_id), field=duplicate.field)
        return problem(
            422,
            "duplicate_lead",
            domain.duplicate_detail(rule, duplicate.field),
            field=duplicate.field,
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
            lead=ev.LeadContent(fields=lead.fields, pii=pii),
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
        async with rt.db.begin() as conn:
            await store.forget_lead(conn, lead_id)
        response = problem(503, "unavailable", "the lead could not be stored; retry")
        response.headers["Retry-After"] = "5"
        return response
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


@router.get(
    "/v1/leads/{lead_id}",
    response_model=LeadStatus,
    responses={401: POST_RESPONSES[401], 404: _error("lead_not_found", "no such lead of yours")},
)
async def get_lead(lead_id: uuid.UUID, request: Request, source: Source) -> LeadStatus:
    """A source's view of one of its own leads: received, sold or unsold."""
    async with _runtime(request).db.begin() as conn:
        row = await store.lead_status(conn, lead_id, source.source_id)
    if row is None:
        raise HTTPException(404, {"code": "lead_not_found", "detail": "no such lead of yours"})
    return LeadStatus(**row)


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
