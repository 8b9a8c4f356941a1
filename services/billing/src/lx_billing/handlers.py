"""Billing's projection of usage.incremented, delivery.outcome and billing.operations,
and what it derives for the services that enforce it (billing.limits).

The limit states are functions of the tables (an account's latest period with usage, its
usage and plan there; a prepaid buyer's ledger balance), recomputed for every account and
buyer a batch touches: sums and maxima, so a replay in any interleaving of the topics ends
in the same states. Only a change of state is published, staged in the outbox in the
batch's own transaction. A rebuild (lxctl) runs the projection without an outbox: it
reproduces the states, and what they published is in the log already.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal

from lx_platform.consumer import Consumed
from lx_platform.logging import get_logger
from lx_platform.outbox import Outbox
from lx_schemas import events as ev
from lx_schemas.envelope import Event, derived_id
from sqlalchemy.ext.asyncio import AsyncConnection

from lx_billing import domain, store

log = get_logger(__name__)


def _booking(
    event: Event,
    txn_id: uuid.UUID,
    kind: str,
    entries: list[domain.Entry],
    *,
    amount: Decimal,
    lead_id: uuid.UUID | None = None,
    buyer_id: uuid.UUID | None = None,
    occurred_at: dt.datetime | None = None,
) -> domain.Booking:
    return domain.Booking(
        txn_id=txn_id,
        account_id=event.account_id,
        kind=kind,
        lead_id=lead_id,
        buyer_id=buyer_id,
        amount=amount,
        occurred_at=occurred_at or event.occurred_at,
        source_event_id=event.event_id,
        entries=tuple(entries),
    )


class Projector:
    """The billing projection; with an ``outbox``, it publishes limit changes too."""

    def __init__(self, outbox: Outbox | None = None) -> None:
        self.outbox = outbox

    async def __call__(self, conn: AsyncConnection, batch: Sequence[Consumed]) -> None:
        usage: Counter[tuple[uuid.UUID, dt.date, str]] = Counter()
        bookings: list[domain.Booking] = []
        accounts: set[uuid.UUID] = set()
        buyers: dict[uuid.UUID, Event] = {}  # buyer -> the last event touching it
        for item in batch:
            event = item.event
            if isinstance(event, ev.UsageIncremented):
                metric = event.payload.metric.value
                key = (event.account_id, domain.month_of(event.occurred_at), metric)
                usage[key] += event.payload.quantity
                if metric == domain.PLAN_METRIC:
                    accounts.add(event.account_id)
            elif isinstance(event, ev.LeadSold):
                p = event.payload
                entries = domain.sale_entries(
                    event.account_id, p.buyer_id, p.price, source_id=p.source_id, payout=p.payout
                )
                bookings.append(
                    _booking(
                        event,
                        domain.sale_txn_id(p.lead_id, p.sale),
                        "lead_sale",
                        entries,
                        amount=p.price,
                        lead_id=p.lead_id,
                        buyer_id=p.buyer_id,
                    )
                )
                buyers[p.buyer_id] = event
            elif isinstance(event, ev.LeadReturned):
                r = event.payload
                entries = domain.return_entries(
                    event.account_id, r.buyer_id, r.price, source_id=r.source_id, payout=r.payout
                )
                bookings.append(
                    _booking(
                        event,
                        domain.return_txn_id(r.return_id),
                        "lead_return",
                        entries,
                        amount=r.price,
                        lead_id=r.lead_id,
                        buyer_id=r.buyer_id,
                    )
                )
                buyers[r.buyer_id] = event
            else:
                # Operators' decisions, one by one and in order: a void needs its invoice.
                await self._operation(conn, event, accounts, buyers)
        await store.book(conn, bookings)
        await store.add_usage(conn, dict(usage))
        await self._limits(conn, accounts, batch[-1].event if batch else None)
        await self._funds(conn, buyers)

    async def _operation(
        self,
        conn: AsyncConnection,
        event: Event,
        accounts: set[uuid.UUID],
        buyers: dict[uuid.UUID, Event],
    ) -> None:
        a = event.account_id
        if isinstance(event, ev.PlanDefined):
            await store.insert_plan(conn, event.payload)
            accounts |= await store.accounts_on_plan(conn, event.payload.plan_id)
        elif isinstance(event, ev.SubscriptionStarted):
            await store.start_subscription(conn, a, event.payload)
            accounts.add(a)
        elif isinstance(event, ev.SubscriptionChanged):
            s = event.payload
            await store.change_subscription(conn, s.subscription_id, s.plan_id, s.effective_from)
            accounts.add(a)
        elif isinstance(event, ev.SubscriptionEnded):
            await store.end_subscription(conn, event.payload.subscription_id, event.payload.ends_on)
            accounts.add(a)
        elif isinstance(event, ev.PaymentRecorded):
            p = event.payload
            await store.insert_payment(
                conn,
                payment_id=p.payment_id,
                account_id=a,
                buyer_id=None,
                kind="payment",
                p=p,
                at=event.occurred_at,
            )
            txn = domain.payment_txn_id(p.payment_id)
            entries = domain.payment_entries(a, p.amount)
            await store.book(conn, [_booking(event, txn, "payment", entries, amount=p.amount)])
        elif isinstance(event, ev.FundsDeposited):
            d = event.payload
            await store.insert_payment(
                conn,
                payment_id=d.deposit_id,
                account_id=a,
                buyer_id=d.buyer_id,
                kind="deposit",
                p=d,
                at=event.occurred_at,
            )
            await store.enrol_prepaid(conn, d.buyer_id, a)
            txn = domain.deposit_txn_id(d.deposit_id)
            entries = domain.deposit_entries(a, d.buyer_id, d.amount)
            booking = _booking(
                event, txn, "funds_deposit", entries, amount=d.amount, buyer_id=d.buyer_id
            )
            await store.book(conn, [booking])
            buyers[d.buyer_id] = event
        elif isinstance(event, ev.BuyerCreditLimitSet):
            c = event.payload
            await store.enrol_prepaid(conn, c.buyer_id, a, c.credit_limit)
            buyers[c.buyer_id] = event
        elif isinstance(event, ev.InvoiceIssued):
            await self._issued(conn, event)
        elif isinstance(event, ev.InvoicePaid):
            paid = event.payload
            await store.mark_invoice(
                conn, paid.invoice_id, "paid", event.occurred_at, payment_id=paid.payment_id
            )
        elif isinstance(event, ev.InvoiceVoided):
            v = event.payload
            if await store.mark_invoice(
                conn, v.invoice_id, "void", event.occurred_at, reason=v.reason
            ):
                fees = await store.fee_entries_of(conn, domain.fees_txn_id(v.invoice_id))
                if fees:
                    reversal = domain.reversed_entries(fees)
                    amount = sum((e.amount for e in reversal if e.amount > 0), Decimal(0))
                    start = await store.invoice(conn, v.invoice_id)
                    assert start is not None
                    at, _ = domain.period_bounds(start["period_start"])
                    txn = domain.fees_void_txn_id(v.invoice_id)
                    booking = _booking(
                        event, txn, "platform_fee_void", reversal, amount=amount, occurred_at=at
                    )
                    await store.book(conn, [booking])

    async def _issued(self, conn: AsyncConnection, event: ev.InvoiceIssued) -> None:
        p = event.payload
        if not await store.insert_invoice(conn, event.account_id, p, event.occurred_at):
            log.warning("invoice_ignored_period_taken", invoice_id=str(p.invoice_id))
            return
        totals = domain.invoice_totals(list(p.lines))
        entries = domain.fee_entries(event.account_id, totals["plan_fee"], totals["overage"])
        if entries:
            # Fees belong to the period they are for, whenever the invoice was issued.
            at, _ = domain.period_bounds(p.period_start)
            txn = domain.fees_txn_id(p.invoice_id)
            booking = _booking(
                event, txn, "platform_fee", entries, amount=totals["platform_fees"], occurred_at=at
            )
            await store.book(conn, [booking])

    async def _limits(
        self, conn: AsyncConnection, accounts: set[uuid.UUID], cause: Event | None
    ) -> None:
        changed: list[tuple[Event, uuid.UUID | str]] = []
        for li in await store.limit_inputs(conn, accounts):
            over = domain.over_plan(li.plan, li.used)
            plan_id = li.plan.plan_id if li.plan else None
            await store.save_limit(conn, li, over)
            if not domain.limit_changed(li.stored, li.period_start, over):
                continue
            _, end = domain.period_bounds(li.period_start)
            changed.append(
                (
                    ev.AccountLimitChanged.new(
                        # Unique per change: a state can come back (a plan changed and back).
                        event_id=derived_id(
                            "billing.limit",
                            li.account_id,
                            li.period_start,
                            over,
                            plan_id,
                            cause.event_id if cause else None,
                        ),
                        account_id=li.account_id,
                        correlation_id=li.account_id,
                        causation_id=cause.event_id if cause else None,
                        producer="billing",
                        payload=ev.AccountLimitChangedPayload(
                            over_plan=over,
                            reason=domain.limit_reason(li.plan, li.period_start, over),
                            plan_id=plan_id,
                            plan_name=li.plan.name if li.plan else None,
                            hard_cap=li.plan.hard_cap if li.plan else None,
                            period_start=li.period_start,
                            period_end=end,
                        ),
                    ),
                    li.account_id,
                )
            )
            log.info("account_limit_changed", account_id=str(li.account_id), over_plan=over)
        if changed and self.outbox is not None:
            await self.outbox.stage_many(conn, changed)

    async def _funds(self, conn: AsyncConnection, buyers: dict[uuid.UUID, Event]) -> None:
        changed: list[tuple[Event, uuid.UUID | str]] = []
        for f in await store.prepaid_funds(conn, list(buyers)):
            has = domain.has_funds(f.balance, f.credit_limit)
            if has == f.has_funds:
                continue
            await store.set_has_funds(conn, f.buyer_id, has)
            cause = buyers[f.buyer_id]
            changed.append(
                (
                    ev.BuyerFundsChanged.new(
                        event_id=derived_id("billing.funds", f.buyer_id, has, cause.event_id),
                        account_id=f.account_id,
                        correlation_id=f.buyer_id,
                        causation_id=cause.event_id,
                        producer="billing",
                        payload=ev.BuyerFundsChangedPayload(
                            buyer_id=f.buyer_id,
                            has_funds=has,
                            balance=f.balance,
                            credit_limit=f.credit_limit,
                        ),
                    ),
                    f.buyer_id,
                )
            )
            log.info("buyer_funds_changed", buyer_id=str(f.buyer_id), has_funds=has)
        if changed and self.outbox is not None:
            await self.outbox.stage_many(conn, changed)


# What lxctl's rebuild and verify run: the same projection, publishing nothing.
project = Projector()
