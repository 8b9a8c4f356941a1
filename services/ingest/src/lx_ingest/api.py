"""The ingest gateway: sources post leads with their API key."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
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


def _error(code: str, detail: str) -> dict[str, Any]:
    return {
        "description": detail,
        "content": {"application/json": {"example": {"error": {"code": code, "detail": detail}}}},
    }


POST_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("malformed_json", "the body is not a JSON object"),
    401: _error("invalid_api_key", "missing or unknown source API key"),
    403: _error("source_paused", "the source or its campaign is paused"),
    413: _error("payload_too_large", "the body is larger than allowed"),
    422: _error("invalid_fields", "fields failed validation; each one is listed"),
    503: _error("unavailable", "the lead could not be stored durably; retry"),
}


def _runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


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
async def post_lead(request: Request, source: Source) -> Response:
    """Accept a lead: ``202`` once it is durably in Kafka, else a 4xx naming the reason."""
    rt = _runtime(request)
    limit: int = rt.settings.max_body_bytes  # type: ignore[attr-defined]
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

    lead, errors = domain.normalise_lead(source.fields, data)
    if lead is None:
        return problem(
            422,
            "invalid_fields",
            "some fields failed validation",
            errors=[e.__dict__ for e in errors],
        )
    return await _accept(rt, source, lead)


async def _accept(
    rt: Runtime, source: store.SourceContext, lead: domain.NormalisedLead
) -> Response:
    vault: store.KeyVault = rt.extras["vault"]
    lead_id = uuid.uuid4()
    received_at = utcnow()
    async with rt.db.begin() as conn:
        pii = None
        if lead.pii:
            data_key = await vault.create(conn, lead_id)
            pii = seal_fields(data_key, lead_id, lead.pii)
        await store.insert_lead(conn, lead_id, source, received_at)
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
        await rt.publisher.publish_all([(received, lead_id), (usage, source.account_id)])
    except Exception as exc:  # not durably stored: answer 503 and leave nothing behind
        log.error("lead_publish_failed", lead_id=str(lead_id), error=repr(exc))
        async with rt.db.begin() as conn:
            await store.forget_lead(conn, lead_id)
        response = problem(503, "unavailable", "the lead could not be stored; retry")
        response.headers["Retry-After"] = "5"
        return response
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
