"""Billing's query API for operators (its commands are in ``commands``)."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, PlainTextResponse
from lx_platform.http import operator_guard
from lx_platform.runtime import Runtime
from lx_schemas.envelope import Frozen

from lx_billing import store
from lx_billing.views import InvoiceView, invoice_csv, invoice_html, invoice_view

router = APIRouter(prefix="/v1", dependencies=[Depends(operator_guard())], tags=["billing"])
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


@router.get("/accounts/{account_id}/statement", response_model=MonthlyStatement)
async def statement(account_id: uuid.UUID, month: Month, request: Request) -> MonthlyStatement:
    """Usage and sales of one account in one month, in USD."""
    rt: Runtime = request.app.state.runtime
    start = _month(month)
    async with rt.db.begin() as conn:
        used = await store.usage(conn, account_id, start)
        sold = await store.sales(conn, account_id, start)
    return MonthlyStatement(account_id=account_id, month=month, usage=used, **sold)


@router.get("/accounts/{account_id}/balances", response_model=Balances)
async def balances(account_id: uuid.UUID, request: Request) -> Balances:
    """Each ledger account's balance: the sum of its entries."""
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


@router.get("/plans/{plan_id}", response_model=PlanView)
async def get_plan(plan_id: uuid.UUID, request: Request) -> PlanView:
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


@router.get("/accounts/{account_id}/subscriptions", response_model=list[SubscriptionView])
async def get_subscriptions(account_id: uuid.UUID, request: Request) -> list[SubscriptionView]:
    """The account's subscriptions; ``ends_on`` is exclusive (the first month not covered)."""
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


@router.get("/accounts/{account_id}/limit", response_model=LimitView)
async def get_limit(account_id: uuid.UUID, request: Request) -> LimitView:
    """The account's limit state in its latest period with usage (as published)."""
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


@router.get("/accounts/{account_id}/buyers/{buyer_id}/funds", response_model=FundsView)
async def get_funds(account_id: uuid.UUID, buyer_id: uuid.UUID, request: Request) -> FundsView:
    """A prepaid buyer's balance (deposits less sales plus returns) and credit limit."""
    rt: Runtime = request.app.state.runtime
    async with rt.db.begin() as conn:
        found = await store.prepaid_funds(conn, [buyer_id])
    if not found or found[0].account_id != account_id:
        raise _not_found("buyer_not_prepaid", "this buyer of the account is not prepaid")
    return FundsView(**found[0].__dict__)


# --- invoices and checks --------------------------------------------------------------------


async def _invoice(request: Request, invoice_id: uuid.UUID) -> InvoiceView:
    rt: Runtime = request.app.state.runtime
    async with rt.db.begin() as conn:
        row = await store.invoice(conn, invoice_id)
    if row is None:
        raise _not_found("invoice_not_found", "no such invoice (or not projected yet)")
    return invoice_view(row)


# The suffixed routes first: ``{invoice_id}`` alone would take "<id>.csv" and refuse it.
@router.get(
    "/invoices/{invoice_id}.csv",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/csv": {}}}},
)
async def get_invoice_csv(invoice_id: uuid.UUID, request: Request) -> Response:
    view = await _invoice(request, invoice_id)
    return Response(
        invoice_csv(view),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="invoice-{view.invoice_id}.csv"'},
    )


@router.get("/invoices/{invoice_id}.html", response_class=HTMLResponse)
async def get_invoice_html(invoice_id: uuid.UUID, request: Request) -> HTMLResponse:
    return HTMLResponse(invoice_html(await _invoice(request, invoice_id)))


@router.get("/invoices/{invoice_id}", response_model=InvoiceView)
async def get_invoice(invoice_id: uuid.UUID, request: Request) -> InvoiceView:
    """An invoice with its lines and totals (``.csv`` and ``.html`` for those formats)."""
    return await _invoice(request, invoice_id)


class LedgerTotals(Frozen):
    account_id: uuid.UUID
    month: str
    totals: dict[str, Decimal]


@router.get("/accounts/{account_id}/ledger-totals", response_model=LedgerTotals)
async def ledger_totals(account_id: uuid.UUID, month: Month, request: Request) -> LedgerTotals:
    """An invoice's totals as the ledger's entries of the month sum them: an invoice
    issued for the month reconciles with these to the cent."""
    rt: Runtime = request.app.state.runtime
    start = _month(month)
    async with rt.db.begin() as conn:
        totals = await store.ledger_totals(conn, account_id, start)
    return LedgerTotals(account_id=account_id, month=month, totals=totals)


class LedgerCheck(Frozen):
    balanced: bool
    unbalanced: list[dict[str, Any]]


@router.get("/ledger/check", response_model=LedgerCheck)
async def ledger_check(request: Request) -> LedgerCheck:
    """Every transaction's entries sum to zero; lists any that do not (there should be
    none)."""
    rt: Runtime = request.app.state.runtime
    async with rt.db.begin() as conn:
        wrong = await store.unbalanced_transactions(conn)
    return LedgerCheck(balanced=not wrong, unbalanced=wrong)
