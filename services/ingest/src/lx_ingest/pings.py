"""Ping-post, ingest's side: a source pings with the lead's non-PII fields and gets
the auction's answer at once; it then posts the full lead to ``/v1/pings/{id}/post``
(``api.post_pinged_lead``).

A ping goes through: the API key (401), the source's ping rate (429), its IP allow-list
and status (403), the body (413, 400), the campaign's ping-post switch (409
``ping_post_disabled``), its fields (422 ``pii_in_ping`` or ``invalid_fields``), then
the auction service, waited for at most the campaign's ``auction_ms`` plus a margin
(503 ``auction_unavailable`` past it). A refused ping is answered, not recorded: it
has no lead, and the auction service records every ping it runs.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from lx_platform.http import problem
from lx_platform.logging import get_logger
from lx_schemas.envelope import Frozen

from lx_ingest import api, domain
from lx_ingest.auction import AuctionRefused, AuctionUnavailable

log = get_logger(__name__)
router = APIRouter(tags=["ping-post"])
AUCTION_RETRY_AFTER_S = 1


class PingAnswer(Frozen):
    """The auction's answer: ``bid`` with the ``price`` the source is promised if its
    post sells, held until ``expires_at``; or ``no_bid``."""

    ping_id: uuid.UUID
    outcome: Literal["bid", "no_bid"]
    price: Decimal | None = None
    expires_at: dt.datetime | None = None


PING_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: api._error("malformed_json", "the body is not a JSON object"),
    401: api.POST_RESPONSES[401],
    403: api.POST_RESPONSES[403],
    409: api._error("ping_post_disabled", "the source's campaign takes no pings"),
    413: api.POST_RESPONSES[413],
    422: api._error(
        "pii_in_ping",
        "a ping must not carry personal data; `field` names the first such field",
        ("invalid_fields", "fields failed validation; each one is listed in `errors`"),
    ),
    429: api._error("rate_limited", "more pings per second than the source may send"),
    503: api._error("auction_unavailable", "the auction did not answer in time; retry"),
}


@router.post(
    "/v1/pings",
    response_model=PingAnswer,
    responses=PING_RESPONSES,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "additionalProperties": True,
                        "description": "The lead's non-PII fields, named as in its campaign.",
                    }
                }
            },
        }
    },
)
async def ping(request: Request, source: api.Source) -> Response:
    """Ask what the campaign's buyers would pay for a lead, before sending it."""
    rt = api._runtime(request)
    if gated := await api.gate(rt, request, source, kind="ping"):
        return gated
    data, wrong = await api.read_body(rt, request)
    if data is None:
        assert wrong is not None
        status, code, detail = wrong
        return problem(status, code, detail, reason="validation")
    if not source.ping_post.enabled:
        return problem(409, "ping_post_disabled", "this source's campaign takes no pings")
    lead, errors = domain.normalise_ping(source.fields, data)
    if lead is None:
        errors_out = [e.__dict__ for e in errors]
        pii = [e.field for e in errors if e.code == "pii_in_ping"]
        if pii:
            return problem(
                422,
                "pii_in_ping",
                f"a ping must not carry personal data: leave out {', '.join(pii)}",
                reason="validation",
                field=pii[0],
                errors=errors_out,
            )
        return problem(
            422,
            "invalid_fields",
            "some fields failed validation",
            reason="validation",
            errors=errors_out,
        )
    ping_id = uuid.uuid4()
    try:
        result = await api.auction_client(rt).run(
            ping_id=ping_id,
            account_id=source.account_id,
            campaign_id=source.campaign_id,
            source_id=source.source_id,
            fields=lead.fields,
            auction_ms=source.ping_post.auction_ms,
        )
    except AuctionRefused as refused:
        if refused.code == "ping_post_disabled":  # the auction saw the switch first
            return problem(409, "ping_post_disabled", "this source's campaign takes no pings")
        # The auction does not know the campaign or source yet (configuration still on
        # its way to it): not the source's fault, and it passes.
        log.warning("auction_refused_ping", code=refused.code, status=refused.status)
        return _unavailable()
    except AuctionUnavailable as exc:
        log.error("auction_unavailable", ping_id=str(ping_id), error=str(exc))
        return _unavailable()
    answer = PingAnswer(
        ping_id=ping_id,
        outcome=result.outcome,
        price=result.payout if result.outcome == "bid" else None,
        expires_at=result.expires_at if result.outcome == "bid" else None,
    )
    log.info("ping_answered", ping_id=str(ping_id), outcome=result.outcome)
    return JSONResponse(answer.model_dump(mode="json"))


def _unavailable() -> Response:
    response = problem(
        503, "auction_unavailable", "the auction did not answer in time; ping again shortly"
    )
    response.headers["Retry-After"] = str(AUCTION_RETRY_AFTER_S)
    return response
