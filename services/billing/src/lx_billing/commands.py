"""Billing's operator commands: each is validated against the projection and published
as an event on ``billing.operations`` through the outbox; the projection (handlers)
builds its state from that event, as a rebuild from the log does. So a command's effect
is visible once projected (``202 Accepted``), usually within a second.

Who: what an account owes the platform (plans, subscriptions, payments, invoices) is
the platform's staff's to say (``platform:manage``). An account's ``billing:write``
covers its own prepaid buyers' deposits and credit limits, for buyers billing already
holds as prepaid in that account: billing does not know which account a buyer belongs
to until then, so staff enrol a buyer first (its first deposit or credit limit)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from lx_platform.access import Permission, Principal
from lx_platform.http import GUARD_ERRORS, principal_guard, require_visible
from lx_platform.runtime import Runtime
from lx_schemas import events as ev
from lx_schemas.envelope import Event, Frozen, derived_id
from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_billing import domain, store
from lx_billing.views import InvoiceView, invoice_view

router = APIRouter(prefix="/v1", tags=["billing"])
Writer = Annotated[Principal, Depends(principal_guard(Permission.BILLING_WRITE))]
Staff = Annotated[Principal, Depends(principal_guard(Permission.PLATFORM))]
ERRORS: dict[int | str, dict[str, Any]] = {
    **GUARD_ERRORS,
    404: {"description": "no such entity (or one of another account)"},
}
MonthText = Annotated[str, Field(pattern=r"^\d{4}-\d{2}$", description="YYYY-MM (UTC)")]


class Accepted(Frozen):
    event_id: uuid.UUID
    id: uuid.UUID


def _month(value: str) -> dt.date:
    try:
        return domain.parse_month(value)
    except ValueError:
        raise HTTPException(
            422, {"code": "invalid_month", "detail": "month must be YYYY-MM"}
        ) from None


def _conflict(status: int, code: str, detail: str) -> HTTPException:
    return HTTPException(status, {"code": code, "detail": detail})


async def _publish(request: Request, conn: AsyncConnection, event: Event, key: uuid.UUID) -> None:
    rt: Runtime = request.app.state.runtime
    await rt.outbox.stage(conn, event, key)


def _wake(request: Request) -> None:
    rt: Runtime = request.app.state.runtime
    rt.relay.wake()


def _envelope(account_id: uuid.UUID, correlation: uuid.UUID) -> dict[str, Any]:
    return {"account_id": account_id, "correlation_id": correlation, "producer": "billing"}


# --- plans and subscriptions ----------------------------------------------------------------


class PlanIn(Frozen):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    monthly_fee: ev.Usd
    included_leads: Annotated[int, Field(ge=0)]
    overage_price: ev.Usd
    hard_cap: Annotated[int, Field(ge=0)] | None = None


@router.post("/plans", status_code=202, response_model=Accepted, responses=ERRORS)
async def define_plan(body: PlanIn, request: Request, who: Staff) -> Accepted:
    """Define a plan (``PlanDefined``). Plans are immutable: a new price is a new plan."""
    plan_id = uuid.uuid4()
    event = ev.PlanDefined.new(
        **_envelope(domain.PLATFORM_ACCOUNT, plan_id),
        payload=ev.PlanDefinedPayload(plan_id=plan_id, **body.model_dump()),
    )
    rt: Runtime = request.app.state.runtime
    async with rt.db.begin() as conn:
        await _publish(request, conn, event, plan_id)
    _wake(request)
    return Accepted(event_id=event.event_id, id=plan_id)


async def _known_plan(conn: AsyncConnection, plan_id: uuid.UUID) -> domain.Plan:
    plan = await store.plan(conn, plan_id)
    if plan is None:
        raise _conflict(422, "unknown_plan", "no such plan (or not projected yet)")
    return plan


class SubscriptionIn(Frozen):
    plan_id: uuid.UUID
    start_month: MonthText
    end_month: MonthText | None = Field(None, description="the last month covered (inclusive)")


@router.post(
    "/accounts/{account_id}/subscriptions",
    status_code=202,
    response_model=Accepted,
    responses=ERRORS,
)
async def start_subscription(
    account_id: uuid.UUID, body: SubscriptionIn, request: Request, who: Staff
) -> Accepted:
    """Subscribe the account to a plan for whole UTC months (``SubscriptionStarted``)."""
    starts = _month(body.start_month)
    ends = domain.next_period(_month(body.end_month)) if body.end_month else None
    if ends is not None and ends <= starts:
        raise _conflict(422, "invalid_period", "end_month is before start_month")
    rt: Runtime = request.app.state.runtime
    subscription_id = uuid.uuid4()
    async with rt.db.begin() as conn:
        await _known_plan(conn, body.plan_id)
        for s in await store.subscriptions(conn, account_id):
            if (s["ends_on"] is None or s["ends_on"] > starts) and (
                ends is None or s["starts_on"] < ends
            ):
                raise _conflict(
                    409,
                    "subscription_overlaps",
                    f"subscription {s['subscription_id']} already covers part of this period",
                )
        event = ev.SubscriptionStarted.new(
            **_envelope(account_id, subscription_id),
            payload=ev.SubscriptionStartedPayload(
                subscription_id=subscription_id,
                plan_id=body.plan_id,
                starts_on=starts,
                ends_on=ends,
            ),
        )
        await _publish(request, conn, event, account_id)
    _wake(request)
    return Accepted(event_id=event.event_id, id=subscription_id)


async def _subscription(
    conn: AsyncConnection, subscription_id: uuid.UUID
) -> tuple[uuid.UUID, dt.date, dt.date | None]:
    found = await store.subscription_account(conn, subscription_id)
    if found is None:
        raise _conflict(404, "subscription_not_found", "no such subscription")
    return found


class SubscriptionChange(Frozen):
    plan_id: uuid.UUID
    from_month: MonthText


@router.post(
    "/subscriptions/{subscription_id}/change",
    status_code=202,
    response_model=Accepted,
    responses=ERRORS,
)
async def change_subscription(
    subscription_id: uuid.UUID, body: SubscriptionChange, request: Request, who: Staff
) -> Accepted:
    """Move the subscription to another plan from a month on (``SubscriptionChanged``);
    a change of the current month re-decides the account's limit at once."""
    effective = _month(body.from_month)
    rt: Runtime = request.app.state.runtime
    async with rt.db.begin() as conn:
        account_id, starts, ends = await _subscription(conn, subscription_id)
        await _known_plan(conn, body.plan_id)
        if effective < starts or (ends is not None and effective >= ends):
            raise _conflict(422, "invalid_period", "from_month is outside the subscription")
        event = ev.SubscriptionChanged.new(
            **_envelope(account_id, subscription_id),
            payload=ev.SubscriptionChangedPayload(
                subscription_id=subscription_id, plan_id=body.plan_id, effective_from=effective
            ),
        )
        await _publish(request, conn, event, account_id)
    _wake(request)
    return Accepted(event_id=event.event_id, id=subscription_id)


class SubscriptionEnd(Frozen):
    last_month: MonthText


@router.post(
    "/subscriptions/{subscription_id}/end",
    status_code=202,
    response_model=Accepted,
    responses=ERRORS,
)
async def end_subscription(
    subscription_id: uuid.UUID, body: SubscriptionEnd, request: Request, who: Staff
) -> Accepted:
    """End the subscription after ``last_month`` (``SubscriptionEnded``)."""
    ends = domain.next_period(_month(body.last_month))
    rt: Runtime = request.app.state.runtime
    async with rt.db.begin() as conn:
        account_id, starts, _ = await _subscription(conn, subscription_id)
        if ends <= starts:
            raise _conflict(422, "invalid_period", "last_month is before the subscription starts")
        event = ev.SubscriptionEnded.new(
            **_envelope(account_id, subscription_id),
            payload=ev.SubscriptionEndedPayload(subscription_id=subscription_id, ends_on=ends),
        )
        await _publish(request, conn, event, account_id)
    _wake(request)
    return Accepted(event_id=event.event_id, id=subscription_id)


# --- money ----------------------------------------------------------------------------------


class PaymentIn(Frozen):
    amount: ev.PositiveUsd
    method: ev.PaymentMethod
    reference: Annotated[str, Field(min_length=1, max_length=200)]
    provider: Annotated[str, Field(max_length=100)] | None = None
    provider_ref: Annotated[str, Field(max_length=200)] | None = None


@router.post(
    "/accounts/{account_id}/payments", status_code=202, response_model=Accepted, responses=ERRORS
)
async def record_payment(
    account_id: uuid.UUID, body: PaymentIn, request: Request, who: Staff
) -> Accepted:
    """Record a payment the account made to the platform (``PaymentRecorded``), with the
    operator's reference and the payment provider's (e.g. a card processor's charge id)."""
    payment_id = uuid.uuid4()
    event = ev.PaymentRecorded.new(
        **_envelope(account_id, payment_id),
        payload=ev.PaymentRecordedPayload(payment_id=payment_id, **body.model_dump()),
    )
    rt: Runtime = request.app.state.runtime
    async with rt.db.begin() as conn:
        await _publish(request, conn, event, account_id)
    _wake(request)
    return Accepted(event_id=event.event_id, id=payment_id)


async def _own_prepaid_buyer(
    request: Request, who: Principal, account_id: uuid.UUID, buyer_id: uuid.UUID
) -> None:
    """404 unless the account is the caller's and, for a tenant, the buyer is prepaid in
    it already: a tenant must never enrol another account's buyer (its sales would then
    draw on funds it does not have, and router would pass it over)."""
    require_visible(who, account_id, "account")
    if who.staff:
        return
    rt: Runtime = request.app.state.runtime
    async with rt.db.begin() as conn:
        found = await store.prepaid_funds(conn, [buyer_id])
    if not found or found[0].account_id != account_id:
        raise _conflict(404, "buyer_not_prepaid", "this buyer of the account is not prepaid")


@router.post(
    "/accounts/{account_id}/buyers/{buyer_id}/deposits",
    status_code=202,
    response_model=Accepted,
    responses=ERRORS,
)
async def deposit_funds(
    account_id: uuid.UUID, buyer_id: uuid.UUID, body: PaymentIn, request: Request, who: Writer
) -> Accepted:
    """Record a prepaid buyer's deposit (``FundsDeposited``): its sales draw on it."""
    await _own_prepaid_buyer(request, who, account_id, buyer_id)
    deposit_id = uuid.uuid4()
    event = ev.FundsDeposited.new(
        **_envelope(account_id, buyer_id),
        payload=ev.FundsDepositedPayload(
            deposit_id=deposit_id, buyer_id=buyer_id, **body.model_dump()
        ),
    )
    rt: Runtime = request.app.state.runtime
    async with rt.db.begin() as conn:
        await _publish(request, conn, event, account_id)
    _wake(request)
    return Accepted(event_id=event.event_id, id=deposit_id)


class CreditLimitIn(Frozen):
    credit_limit: ev.Usd


@router.put(
    "/accounts/{account_id}/buyers/{buyer_id}/credit-limit",
    status_code=202,
    response_model=Accepted,
    responses=ERRORS,
)
async def set_credit_limit(
    account_id: uuid.UUID, buyer_id: uuid.UUID, body: CreditLimitIn, request: Request, who: Writer
) -> Accepted:
    """Make the buyer prepaid with a credit limit (``BuyerCreditLimitSet``)."""
    await _own_prepaid_buyer(request, who, account_id, buyer_id)
    event = ev.BuyerCreditLimitSet.new(
        **_envelope(account_id, buyer_id),
        payload=ev.BuyerCreditLimitSetPayload(buyer_id=buyer_id, credit_limit=body.credit_limit),
    )
    rt: Runtime = request.app.state.runtime
    async with rt.db.begin() as conn:
        await _publish(request, conn, event, account_id)
    _wake(request)
    return Accepted(event_id=event.event_id, id=buyer_id)


# --- invoices -------------------------------------------------------------------------------


class InvoiceIn(Frozen):
    month: MonthText


@router.post(
    "/accounts/{account_id}/invoices",
    status_code=202,
    response_model=InvoiceView,
    responses=ERRORS,
)
async def issue_invoice(
    account_id: uuid.UUID, body: InvoiceIn, request: Request, who: Staff
) -> InvoiceView:
    """Issue the account's invoice for a month (``InvoiceIssued``), its lines taken from
    the ledger now: the plan's fee and overage (booked as platform fees once projected),
    each buyer's charges and returns, the payments received. One invoice in force per
    period: void it to issue another."""
    start = _month(body.month)
    rt: Runtime = request.app.state.runtime
    async with rt.db.begin() as conn:
        if existing := await store.invoice_in_force(conn, account_id, start):
            raise _conflict(
                409, "invoice_exists", f"invoice {existing} is in force for {body.month}"
            )
        plan = await store.plan_for(conn, account_id, start)
        lines = domain.invoice_lines(
            start,
            plan,
            await store.usage_of(conn, account_id, start),
            await store.charges(conn, account_id, start, "lead_sale"),
            await store.charges(conn, account_id, start, "lead_return"),
            await store.period_payments(conn, account_id, start),
        )
        invoice_id = domain.invoice_id_for(
            account_id, start, await store.voided_invoices(conn, account_id, start)
        )
        totals = domain.invoice_totals(lines)
        event = ev.InvoiceIssued.new(
            **_envelope(account_id, invoice_id),
            event_id=derived_id("invoice.issued", invoice_id),
            payload=ev.InvoiceIssuedPayload(
                invoice_id=invoice_id,
                period_start=start,
                period_end=domain.next_period(start),
                plan_id=plan.plan_id if plan else None,
                lines=tuple(lines),
                amount_due=totals["amount_due"],
            ),
        )
        await _publish(request, conn, event, account_id)
    _wake(request)
    return invoice_view(
        {
            "invoice_id": invoice_id,
            "account_id": account_id,
            "period_start": start,
            "period_end": domain.next_period(start),
            "plan_id": event.payload.plan_id,
            "status": "issued",
            "amount_due": totals["amount_due"],
            "issued_at": event.occurred_at,
            "lines": [{**line.model_dump(), "line_no": n} for n, line in enumerate(lines, start=1)],
        }
    )


async def _issued_invoice(conn: AsyncConnection, invoice_id: uuid.UUID) -> dict[str, Any]:
    found = await store.invoice(conn, invoice_id)
    if found is None:
        raise _conflict(404, "invoice_not_found", "no such invoice (or not projected yet)")
    if found["status"] != "issued":
        raise _conflict(409, "invalid_transition", f"the invoice is {found['status']}, not issued")
    return found


class InvoicePayment(Frozen):
    payment_id: uuid.UUID | None = None


@router.post(
    "/invoices/{invoice_id}/pay", status_code=202, response_model=Accepted, responses=ERRORS
)
async def mark_paid(
    invoice_id: uuid.UUID, body: InvoicePayment, request: Request, who: Staff
) -> Accepted:
    """Mark an issued invoice paid (``InvoicePaid``), naming the payment if recorded."""
    rt: Runtime = request.app.state.runtime
    async with rt.db.begin() as conn:
        found = await _issued_invoice(conn, invoice_id)
        if body.payment_id is not None:
            paid = await store.payment(conn, body.payment_id)
            if paid is None or paid["account_id"] != found["account_id"]:
                raise _conflict(422, "unknown_payment", "no such payment of this account")
        event = ev.InvoicePaid.new(
            **_envelope(found["account_id"], invoice_id),
            payload=ev.InvoicePaidPayload(invoice_id=invoice_id, payment_id=body.payment_id),
        )
        await _publish(request, conn, event, found["account_id"])
    _wake(request)
    return Accepted(event_id=event.event_id, id=invoice_id)


class InvoiceVoid(Frozen):
    reason: Annotated[str, Field(min_length=1, max_length=1000)]


@router.post(
    "/invoices/{invoice_id}/void", status_code=202, response_model=Accepted, responses=ERRORS
)
async def void_invoice(
    invoice_id: uuid.UUID, body: InvoiceVoid, request: Request, who: Staff
) -> Accepted:
    """Void an issued invoice (``InvoiceVoided``): its platform fees are reversed."""
    rt: Runtime = request.app.state.runtime
    async with rt.db.begin() as conn:
        found = await _issued_invoice(conn, invoice_id)
        event = ev.InvoiceVoided.new(
            **_envelope(found["account_id"], invoice_id),
            payload=ev.InvoiceVoidedPayload(invoice_id=invoice_id, reason=body.reason),
        )
        await _publish(request, conn, event, found["account_id"])
    _wake(request)
    return Accepted(event_id=event.event_id, id=invoice_id)
