"""Returns: a read model of sales, buyer-scoped tokens, and returning a sold lead.

A return is decided here, against the sale and the buyer's return window, and recorded
with its ``LeadReturned`` staged in the same transaction (outbox, keyed by lead id on
``delivery.outcome``); billing books the money. The unique sale in ``returns`` is what
makes a second return of the same sale a 409, however the requests race.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response, status
from lx_platform.consumer import Consumed
from lx_platform.http import admit_or_429
from lx_platform.limits import CredentialRateLimiter
from lx_platform.runtime import Runtime
from lx_schemas import events as ev
from lx_schemas.envelope import Frozen, utcnow
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_admin import audit, domain, store
from lx_admin.access import Permission, Principal
from lx_admin.api import ERRORS, Rt, _current, _not_found, runtime
from lx_admin.auth import allow, authenticate
from lx_admin.settings import AdminSettings

operator = APIRouter(prefix="/v1", dependencies=[Depends(authenticate)], tags=["returns"])
TokenManager = Annotated[Principal, Depends(allow(Permission.BUYER_TOKENS))]
Returner = Annotated[Principal, Depends(allow(Permission.RETURNS))]
buyer = APIRouter(prefix="/v1/buyer", tags=["buyer"])
RETURN_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing, wrong or revoked token"},
    429: {"description": "`rate_limited`: too many requests with this token (Retry-After)"},
    404: {"description": "`sale_not_found`: no sale of this lead (to this buyer)"},
    409: {"description": "`already_returned`: this sale was returned before"},
    422: {
        "description": "`return_window_closed` (outside the buyer's return window, or a buyer"
        " that takes no returns); `buyer_required` (the lead was sold to several buyers)"
    },
}


# --- the read model of sales ----------------------------------------------------------------


async def record_sales(conn: AsyncConnection, batch: Sequence[Consumed]) -> None:
    """Project LeadSold and LeadReturned from delivery.outcome."""
    sales, returns = [], []
    for item in batch:
        event = item.event
        if isinstance(event, ev.LeadSold):
            p = event.payload
            sales.append(
                {
                    "delivery_id": p.delivery_id,
                    "lead_id": p.lead_id,
                    "account_id": event.account_id,
                    "campaign_id": p.campaign_id,
                    "source_id": p.source_id,
                    "buyer_id": p.buyer_id,
                    "price": p.price,
                    "payout": p.payout,
                    "sale": p.sale,
                    "buyer_lead_id": p.buyer_lead_id,
                    "sold_at": event.occurred_at,
                    "event_id": event.event_id,
                }
            )
        elif isinstance(event, ev.LeadReturned):
            returns.append(_return_row(event.payload, event.occurred_at))
    await store.record_sales(conn, sales)
    await store.record_returns(conn, returns)


def _return_row(p: ev.LeadReturnedPayload, at: dt.datetime) -> dict[str, Any]:
    return {
        "return_id": p.return_id,
        "delivery_id": p.delivery_id,
        "lead_id": p.lead_id,
        "buyer_id": p.buyer_id,
        "price": p.price,
        "payout": p.payout,
        "reason_code": p.reason_code.value,
        "reason": p.reason,
        "returned_by": p.returned_by,
        "returned_at": at,
    }


# --- buyer tokens -----------------------------------------------------------------------------


class BuyerToken(Frozen):
    token_id: uuid.UUID
    buyer_id: uuid.UUID
    name: str
    token_prefix: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None


class BuyerTokenCreated(BuyerToken):
    token: str  # shown once; only its SHA-256 is kept


@operator.post(
    "/buyers/{buyer_id}/tokens",
    status_code=201,
    response_model=BuyerTokenCreated,
    responses=ERRORS,
)
async def create_token(
    buyer_id: uuid.UUID, rt: Rt, who: TokenManager, body: domain.TokenCreate | None = None
) -> BuyerTokenCreated:
    """A token for the buyer's own API (its deliveries, its returns), shown once."""
    token = domain.new_buyer_token()
    row = {
        "token_id": uuid.uuid4(),
        "buyer_id": buyer_id,
        "name": (body or domain.TokenCreate()).name,
        "token_prefix": domain.display_prefix(token),
        "token_sha256": domain.token_sha256(token),
    }
    async with rt.db.begin() as conn:
        state = await _current(conn, "buyer", buyer_id, who)
        await store.insert_token(conn, {**row, "account_id": state["account_id"]})
        (created,) = [
            t for t in await store.list_tokens(conn, buyer_id) if t["token_id"] == row["token_id"]
        ]
        await _audit_token(conn, who, "created", state["account_id"], created)
    return BuyerTokenCreated(**created, token=token)


@operator.get("/buyers/{buyer_id}/tokens", response_model=list[BuyerToken], responses=ERRORS)
async def list_tokens(buyer_id: uuid.UUID, rt: Rt, who: TokenManager) -> list[BuyerToken]:
    async with rt.db.begin() as conn:
        await _current(conn, "buyer", buyer_id, who)
        return [BuyerToken(**t) for t in await store.list_tokens(conn, buyer_id)]


@operator.delete("/buyers/{buyer_id}/tokens/{token_id}", status_code=204, responses=ERRORS)
async def revoke_token(
    buyer_id: uuid.UUID, token_id: uuid.UUID, rt: Rt, who: TokenManager
) -> Response:
    """Revoke a buyer token: from now on it answers 401."""
    async with rt.db.begin() as conn:
        state = await _current(conn, "buyer", buyer_id, who)
        revoked = await store.revoke_token(conn, buyer_id, token_id)
        if revoked is None:
            raise _not_found("token")
        await _audit_token(conn, who, "revoked", state["account_id"], revoked)
    return Response(status_code=204)


async def _audit_token(
    conn: AsyncConnection, who: Principal, action: str, account_id: str, token: dict[str, Any]
) -> None:
    shown = BuyerToken(**token).model_dump(mode="json")
    await audit.record(
        conn,
        who,
        f"buyer_token.{action}",
        account_id=account_id,
        entity_kind="buyer_token",
        entity_id=token["token_id"],
        after=shown,
    )


def _buyer_limiter(rt: Runtime) -> CredentialRateLimiter:
    """Requests per buyer token (LX_ADMIN_BUYER_RATE_LIMIT), counted in this process."""
    limiter: CredentialRateLimiter | None = rt.extras.get("buyer_limiter")
    if limiter is None:
        settings = rt.settings
        assert isinstance(settings, AdminSettings)
        limiter = rt.extras["buyer_limiter"] = CredentialRateLimiter(settings.buyer_rate_limit)
    return limiter


async def _limit_buyer(request: Request, token: str) -> None:
    await admit_or_429(
        _buyer_limiter(runtime(request)),
        token,
        why="more requests with this buyer token than allowed",
    )


async def buyer_principal(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> uuid.UUID:
    """The buyer whose live token the request carries; nothing else gets in (the
    operator's token included: it is no buyer's)."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and token.startswith(domain.BUYER_TOKEN_PREFIX):
        async with runtime(request).db.begin() as conn:
            buyer_id = await store.buyer_of_token(conn, domain.token_sha256(token))
        if buyer_id is not None:
            # Only a live token is counted (made-up ones would fill the limiter's memory).
            await _limit_buyer(request, token)
            return buyer_id
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED, {"code": "unauthorized", "detail": "buyer token required"}
    )


BuyerId = Annotated[uuid.UUID, Depends(buyer_principal)]


# --- the buyer's deliveries -------------------------------------------------------------------


class ReturnSummary(Frozen):
    return_id: uuid.UUID
    reason_code: ev.ReturnReason
    returned_at: dt.datetime


class BuyerDelivery(Frozen):
    """One lead sold to the buyer, as the buyer sees it (never the source's payout)."""

    lead_id: uuid.UUID
    delivery_id: uuid.UUID
    campaign_id: uuid.UUID
    sale: int
    price: Decimal
    buyer_lead_id: str | None
    sold_at: dt.datetime
    returned: ReturnSummary | None = None


class BuyerDeliveries(Frozen):
    deliveries: list[BuyerDelivery]
    # Pass as ``cursor`` for the next (older) page; none: this was the last.
    next_cursor: str | None = None


def _cursor(row: dict[str, Any]) -> str:
    raw = f"{row['sold_at'].isoformat()}|{row['delivery_id']}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _after(cursor: str) -> tuple[dt.datetime, uuid.UUID]:
    try:
        at, _, delivery = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return dt.datetime.fromisoformat(at), uuid.UUID(delivery)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise HTTPException(
            422, {"code": "invalid_cursor", "detail": "cursor is not one this API gave"}
        ) from None


def _delivery(row: dict[str, Any]) -> BuyerDelivery:
    returned = None
    if row["return_id"] is not None:
        returned = ReturnSummary(
            return_id=row["return_id"],
            reason_code=row["return_reason"],
            returned_at=row["returned_at"],
        )
    fields = {k: row[k] for k in BuyerDelivery.model_fields if k in row and k != "returned"}
    return BuyerDelivery(**fields, returned=returned)


@buyer.get(
    "/deliveries",
    response_model=BuyerDeliveries,
    responses={
        401: RETURN_ERRORS[401],
        422: {"description": "`invalid_cursor`"},
        429: RETURN_ERRORS[429],
    },
)
async def my_deliveries(
    buyer_id: BuyerId,
    rt: Rt,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> BuyerDeliveries:
    """The leads sold to the token's buyer, newest first."""
    before = _after(cursor) if cursor else None
    async with rt.db.begin() as conn:
        rows = await store.sales_of_buyer(conn, buyer_id, limit=limit + 1, before=before)
    page = rows[:limit]
    return BuyerDeliveries(
        deliveries=[_delivery(r) for r in page],
        next_cursor=_cursor(page[-1]) if len(rows) > limit else None,
    )


# --- returning a sale -------------------------------------------------------------------------


class BuyerReturnRecorded(Frozen):
    return_id: uuid.UUID
    lead_id: uuid.UUID
    buyer_id: uuid.UUID
    delivery_id: uuid.UUID
    price: Decimal  # credited to the buyer
    reason_code: ev.ReturnReason
    reason: str | None
    returned_by: str
    returned_at: dt.datetime


class ReturnRecorded(BuyerReturnRecorded):
    payout: Decimal | None  # clawed back from the source


def _refused(code: int, error: str, detail: str) -> HTTPException:
    return HTTPException(code, {"code": error, "detail": detail})


async def _return_sale(
    rt: Rt,
    lead_id: uuid.UUID,
    buyer_id: uuid.UUID | None,
    body: domain.ReturnCreate,
    by: str,
    who: Principal | None = None,
) -> ReturnRecorded:
    """``who``: the operator returning it (None: the buyer of ``buyer_id`` itself)."""
    now = utcnow()
    async with rt.db.begin() as conn:
        sales = await store.sales_of_lead(conn, lead_id, buyer_id, for_update=True)
        if who is not None:  # another account's sales do not exist for the caller
            sales = [s for s in sales if who.sees(s["account_id"])]
        if not sales:
            raise _refused(
                404,
                "sale_not_found",
                "no sale of this lead" + (" to this buyer" if buyer_id else ""),
            )
        if len({s["buyer_id"] for s in sales}) > 1:
            raise _refused(
                422, "buyer_required", "the lead was sold to several buyers; name buyer_id"
            )
        open_sales = [s for s in sales if s["return_id"] is None]
        if not open_sales:
            raise _refused(409, "already_returned", "this sale was returned before")
        sale = open_sales[0]
        state = await store.get_state(conn, "buyer", sale["buyer_id"])
        window = int(state.get("return_window_days", 0)) if state else 0
        refusal = domain.return_refusal(sale["sold_at"], window, now)
        if refusal is not None:
            raise _refused(422, refusal["code"], refusal["detail"])
        payload = ev.LeadReturnedPayload(
            lead_id=lead_id,
            campaign_id=sale["campaign_id"],
            source_id=sale["source_id"],
            buyer_id=sale["buyer_id"],
            delivery_id=sale["delivery_id"],
            return_id=uuid.uuid4(),
            price=sale["price"],
            payout=sale["payout"],
            reason_code=body.reason_code,
            reason=body.reason,
            returned_by=by,
        )
        if not await store.record_returns(conn, [_return_row(payload, now)]):
            raise _refused(409, "already_returned", "this sale was returned before")
        event = ev.LeadReturned.new(
            account_id=sale["account_id"],
            correlation_id=lead_id,
            producer="admin",
            occurred_at=now,
            payload=payload,
        )
        await rt.outbox.stage(conn, event, lead_id)
        if who is not None:
            await audit.record(
                conn,
                who,
                "return.created",
                account_id=sale["account_id"],
                entity_kind="return",
                entity_id=payload.return_id,
                after=payload.model_dump(mode="json"),
            )
    rt.relay.wake()
    return ReturnRecorded(
        **payload.model_dump(exclude={"campaign_id", "source_id"}), returned_at=now
    )


@operator.post(
    "/leads/{lead_id}/returns",
    status_code=201,
    response_model=ReturnRecorded,
    responses=RETURN_ERRORS,
)
async def operator_return(
    lead_id: uuid.UUID, body: domain.OperatorReturnCreate, rt: Rt, who: Returner
) -> ReturnRecorded:
    """Return a sold lead on a buyer's behalf: the buyer is credited the price, the
    source's payout clawed back (billing books both)."""
    return await _return_sale(rt, lead_id, body.buyer_id, body, domain.returned_by(None), who)


@buyer.post(
    "/leads/{lead_id}/returns",
    status_code=201,
    response_model=BuyerReturnRecorded,
    responses=RETURN_ERRORS,
)
async def buyer_return(
    lead_id: uuid.UUID, body: domain.ReturnCreate, buyer_id: BuyerId, rt: Rt
) -> BuyerReturnRecorded:
    """Return a lead sold to the token's buyer, with a reason, inside its return window.
    A lead not sold to this buyer is 404, whoever bought it."""
    recorded = await _return_sale(rt, lead_id, buyer_id, body, domain.returned_by(str(buyer_id)))
    return BuyerReturnRecorded(**recorded.model_dump(exclude={"payout"}))
