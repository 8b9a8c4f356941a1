"""Billing's query API (its commands are in ``commands``), for the operator token and
for access tokens: an account's own figures need ``billing:read`` and show only that
account (another account's answer 404, as if it did not exist); the ledger check is
staff's."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, PlainTextResponse
from lx_platform.access import Permission, Principal
from lx_platform.http import GUARD_ERRORS, principal_guard, require_visible
from lx_platform.runtime import Runtime
from lx_schemas.envelope import Frozen

from lx_billing import store
from lx_billing.views import InvoiceView, invoice_csv, invoice_html, invoice_view

router = APIRouter(prefix="/v1", tags=["billing"])
Reader = Annotated[Principal, Depends(principal_guard(Permission.BILLING_READ))]
Staff = Annotated[Principal, Depends(principal_guard(Permission.PLATFORM))]
ERRORS: dict[int | str, dict[str, Any]] = {
    **GUARD_ERRORS,
    404: {"description": "no such entity (or one of another account)"},
}
Month = Annotated[str, Query(pattern=r"^\d{4}-\d{2}$", description="YYYY-MM (UTC)")]


class MonthlyStatement(Frozen):
    account_id: uuid.UUID
    month: str
    usage: dict[str, int]
    sold_leads: int
    revenue: Decimal


class Balances(Frozen):
    account_id: uuid.UUID
    balances: dict[str, Decimal]


def _month(value: str) -> dt.date:
    match = re.fullmatch(r"(\d{4})-(\d{2})", value)
    try:
        return dt.date(int(match[1]), int(match[2]), 1) if match else dt.date.min
    except ValueError:
        raise HTTPException(
            422, {"code": "invalid_month", "detail": "month must be YYYY-MM"}
        ) from None


@router.get("/accounts/{account_id}/statement", response_model=MonthlyStatement, responses=ERRORS)
async def statement(
    account_id: uuid.UUID, month: Month, request: Request, who: Reader
) -> MonthlyStatement:
    """Usage and sales of one account in one month, in USD."""
    require_visible(who, account_id, "account")
    rt: Runtime = request.app.state.runtime
    start = _month(month)
    async with rt.db.begin() as conn:
        used = await store.usage(conn, account_id, start)
        sold = await store.sales(conn, account_id, start)
    return MonthlyStatement(account_id=account_id, month=month, usage=used, **sold)


@router.get("/accounts/{account_id}/balances", response_model=Balances, responses=ERRORS)
async def balances(account_id: uuid.UUID, request: Request, who: Reader) -> Balances:
    """Each ledger account's balance: the sum of its entries."""
    require_visible(who, account_id, "account")
    rt: Runtime = request.app.state.runtime
    async with rt.db.begin() as conn:
        return Balances(account_id=account_id, balances=await store.balances(conn, account_id))


# --- plans, limits, funds -------------------------------------------------------------------


def _not_found(code: str, detail: str) -> HTTPException:
    return HTTPException(404, {"code": code, "detail": detail})


class PlanView(Frozen):
    plan_id: uuid.UUID
    name: str
    monthly_fee: Decimal
    included_leads: int
    overage_price: Decimal
    hard_cap: int | None


@router.get("/plans/{plan_id}", response_model=PlanView, responses=ERRORS)
async def get_plan(plan_id: uuid.UUID, request: Request, who: Reader) -> PlanView:
    """A plan of the platform's price list (the same for every account)."""
    rt: Runtime = request.app.state.runtime
    async with rt.db.begin() as conn:
        plan = await store.plan(conn, plan_id)
    if plan is None:
        raise _not_found("plan_not_found", "no such plan (or not projected yet)")
    return PlanView(**plan.__dict__)


class TermView(Frozen):
    effective_from: dt.date
    plan_id: uuid.UUID


class SubscriptionView(Frozen):
    subscription_id: uuid.UUID
    starts_on: dt.date
    ends_on: dt.date | None
    terms: tuple[TermView, ...]


@router.get(
    "/accounts/{account_id}/subscriptions",
    response_model=list[SubscriptionView],
    responses=ERRORS,
)
async def get_subscriptions(
    account_id: uuid.UUID, request: Request, who: Reader
) -> list[SubscriptionView]:
    """The account's subscriptions; ``ends_on`` is exclusive (the first month not covered)."""
    require_visible(who, account_id, "account")
    rt: Runtime = request.app.state.runtime
    async with rt.db.begin() as conn:
        return [SubscriptionView(**s) for s in await store.subscriptions(conn, account_id)]


class LimitView(Frozen):
    account_id: uuid.UUID
    period_start: dt.date
    over_plan: bool
    plan_id: uuid.UUID | None
    hard_cap: int | None
    used: int


@router.get("/accounts/{account_id}/limit", response_model=LimitView, responses=ERRORS)
async def get_limit(account_id: uuid.UUID, request: Request, who: Reader) -> LimitView:
    """The account's limit state in its latest period with usage (as published)."""
    require_visible(who, account_id, "account")
    rt: Runtime = request.app.state.runtime
    async with rt.db.begin() as conn:
        row = await store.account_limit(conn, account_id)
        if row is None:
            raise _not_found("no_usage", "no metered usage for this account yet")
        used = await store.usage_of(conn, account_id, row["period_start"])
    return LimitView(**row, used=used)


class FundsView(Frozen):
    buyer_id: uuid.UUID
    account_id: uuid.UUID
    balance: Decimal
    credit_limit: Decimal
    has_funds: bool


@router.get(
    "/accounts/{account_id}/buyers/{buyer_id}/funds", response_model=FundsView, responses=ERRORS
)
async def get_funds(
    account_id: uuid.UUID, buyer_id: uuid.UUID, request: Request, who: Reader
) -> FundsView:
    """A prepaid buyer's balance (deposits less sales plus returns) and credit limit."""
    require_visible(who, account_id, "account")
    rt: Runtime = request.app.state.runtime
    async with rt.db.begin() as conn:
        found = await store.prepaid_funds(conn, [buyer_id])
    if not found or found[0].account_id != account_id:
        raise _not_found("buyer_not_prepaid", "this buyer of the account is not prepaid")
    return FundsView(**found[0].__dict__)


# --- invoices and checks --------------------------------------------------------------------


async def _invoice(request: Request, invoice_id: uuid.UUID, who: Principal) -> InvoiceView:
    rt: Runtime = request.app.state.runtime
    async with rt.db.begin() as conn:
        row = await store.invoice(conn, invoice_id)
    # Another account's invoice is as unknown as one that does not exist.
    if row is None or not who.sees(row["account_id"]):
        raise _not_found("invoice_not_found", "no such invoice (or not projected yet)")
    return invoice_view(row)


# The suffixed routes first: ``{invoice_id}`` alone would take "<id>.csv" and refuse it.
@router.get(
    "/invoices/{invoice_id}.csv",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/csv": {}}}, **ERRORS},
)
async def get_invoice_csv(invoice_id: uuid.UUID, request: Request, who: Reader) -> Response:
    view = await _invoice(request, invoice_id, who)
    return Response(
        invoice_csv(view),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="invoice-{view.invoice_id}.csv"'},
    )


@router.get("/invoices/{invoice_id}.html", response_class=HTMLResponse, responses=ERRORS)
async def get_invoice_html(invoice_id: uuid.UUID, request: Request, who: Reader) -> HTMLResponse:
    return HTMLResponse(invoice_html(await _invoice(request, invoice_id, who)))


@router.get("/invoices/{invoice_id}", response_model=InvoiceView, responses=ERRORS)
async def get_invoice(invoice_id: uuid.UUID, request: Request, who: Reader) -> InvoiceView:
    """An invoice with its lines and totals (``.csv`` and ``.html`` for those formats)."""
    return await _invoice(request, invoice_id, who)


class LedgerTotals(Frozen):
    account_id: uuid.UUID
    month: str
    totals: dict[str, Decimal]


@router.get("/accounts/{account_id}/ledger-totals", response_model=LedgerTotals, responses=ERRORS)
async def ledger_totals(
    account_id: uuid.UUID, month: Month, request: Request, who: Reader
) -> LedgerTotals:
    """An invoice's totals as the ledger's entries of the month sum them: an invoice
    issued for the month reconciles with these to the cent."""
    require_visible(who, account_id, "account")
    rt: Runtime = request.app.state.runtime
    start = _month(month)
    async with rt.db.begin() as conn:
        totals = await store.ledger_totals(conn, account_id, start)
    return LedgerTotals(account_id=account_id, month=month, totals=totals)


class LedgerCheck(Frozen):
    balanced: bool
    unbalanced: list[dict[str, Any]]


@router.get("/ledger/check", response_model=LedgerCheck, responses=ERRORS)
async def ledger_check(request: Request, who: Staff) -> LedgerCheck:
    """Every transaction's entries sum to zero; lists any that do not (there should be
    none). Platform-wide: staff only."""
    rt: Runtime = request.app.state.runtime
    async with rt.db.begin() as conn:
        wrong = await store.unbalanced_transactions(conn)
    return LedgerCheck(balanced=not wrong, unbalanced=wrong)
