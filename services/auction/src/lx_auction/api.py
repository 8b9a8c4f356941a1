"""The auction's internal API: ingest asks for an auction per ping, and claims its
result when the post with that ping id arrives."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from lx_platform.http import internal_guard
from lx_schemas.envelope import Frozen
from lx_schemas.events import Bid, FieldValue, Rejection
from pydantic import Field

from lx_auction import store
from lx_auction.auctioneer import Auctioneer, AuctionRefusedError, Ping

internal = APIRouter(
    prefix="/internal/v1", tags=["auctions"], dependencies=[Depends(internal_guard())]
)


class AuctionRequest(Frozen):
    ping_id: uuid.UUID
    account_id: uuid.UUID
    campaign_id: uuid.UUID
    source_id: uuid.UUID
    # The ping's normalised non-PII fields.
    fields: Annotated[dict[str, FieldValue], Field(max_length=500)]


class AuctionAnswer(Frozen):
    ping_id: uuid.UUID
    outcome: Literal["bid", "no_bid"]
    # What the source is promised if its post with this ping id sells.
    payout: Decimal | None
    expires_at: dt.datetime | None
    duration_ms: float
    rejections: tuple[Rejection, ...]


class ClaimRequest(Frozen):
    source_id: uuid.UUID
    lead_id: uuid.UUID


class ClaimAnswer(Frozen):
    ping_id: uuid.UUID
    bids: tuple[Bid, ...]  # best first
    promised_payout: Decimal
    expires_at: dt.datetime


class ErrorBody(Frozen):
    code: str
    detail: str


class Problem(Frozen):
    error: ErrorBody


def _refused(exc: AuctionRefusedError) -> HTTPException:
    # The platform's handler answers a dict detail as {"error": {"code", "detail"}}.
    return HTTPException(exc.status, {"code": exc.code, "detail": exc.detail})


def _answer(a: store.Auction) -> AuctionAnswer:
    bid = bool(a.bids)
    return AuctionAnswer(
        ping_id=a.ping_id,
        outcome="bid" if bid else "no_bid",
        payout=a.promised_payout if bid else None,
        expires_at=a.expires_at if bid else None,
        duration_ms=a.duration_ms or 0.0,
        rejections=a.rejections,
    )


@internal.post(
    "/auctions",
    responses={
        404: {"model": Problem, "description": "campaign_not_found, source_not_found"},
        409: {
            "model": Problem,
            "description": "ping_post_disabled; ping_id_conflict (the id names another"
            " ping); auction_in_progress (the same ping's auction is still running)",
        },
    },
)
async def run_auction(body: AuctionRequest, request: Request) -> AuctionAnswer:
    """Run the ping's auction (or answer the one already run for this ping id)."""
    auctioneer: Auctioneer = request.app.state.runtime.extras["auctioneer"]
    ping = Ping(body.ping_id, body.account_id, body.campaign_id, body.source_id, body.fields)
    try:
        return _answer(await auctioneer.run(ping))
    except AuctionRefusedError as exc:
        raise _refused(exc) from None


@internal.post(
    "/auctions/{ping_id}/claim",
    responses={
        404: {"model": Problem, "description": "ping_not_found (or another source's ping)"},
        409: {"model": Problem, "description": "ping_already_posted (by another lead)"},
        410: {"model": Problem, "description": "ping_expired"},
        422: {"model": Problem, "description": "ping_without_bids"},
    },
)
async def claim_auction(ping_id: uuid.UUID, body: ClaimRequest, request: Request) -> ClaimAnswer:
    """Hand the ping's bids to the post of ``lead_id``; the same lead may ask again."""
    auctioneer: Auctioneer = request.app.state.runtime.extras["auctioneer"]
    try:
        a = await auctioneer.claim(ping_id, body.source_id, body.lead_id)
    except AuctionRefusedError as exc:
        raise _refused(exc) from None
    assert a.promised_payout is not None and a.expires_at is not None
    return ClaimAnswer(
        ping_id=a.ping_id, bids=a.bids, promised_payout=a.promised_payout, expires_at=a.expires_at
    )
