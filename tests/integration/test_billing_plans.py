"""Plans, caps, prepaid buyers, payments and invoices, against real Kafka and PostgreSQL.

Billing and ingest run in-process on one topic prefix: ingest's accepted leads meter
usage, billing publishes the account's limit on ``billing.limits``, and ingest refuses
its next post. Sales are published as delivery would. Operators' commands go through
billing's API, out through its outbox and back in through its projection; the last test
rebuilds billing from the log and finds every answer unchanged.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest
from lx_billing.main import create_service as create_billing
from lx_billing.settings import BillingSettings
from lx_devstack.infra import Infra
from lx_platform.runtime import Runtime
from lx_schemas import events as ev
from lx_schemas.topics import BILLING_LIMITS, LEAD_RECEIVED
from lx_sre.projections import rebuild_projection, verify_projection

from tests.support.ingest import LEAD, Service, configure, running_ingest
from tests.support.kafka import of_type, publish, read_events
from tests.support.services import OPERATOR, eventually, hosted, settings_for

D = Decimal
NOW = dt.datetime.now(dt.UTC)
MONTH = NOW.strftime("%Y-%m")
NEXT = dt.datetime(NOW.year + NOW.month // 12, NOW.month % 12 + 1, 1, tzinfo=dt.UTC)


@dataclass
class Stack:
    ingest: Service
    billing: httpx.AsyncClient
    billing_rt: Runtime
    bootstrap: str
    prefix: str


@pytest.fixture(scope="module")
async def stack(infra: Infra, isolation: str) -> AsyncIterator[Stack]:
    billing = settings_for(BillingSettings, infra, isolation, "billing")
    async with (
        running_ingest(infra, isolation) as ingest,
        hosted(create_billing(billing)) as (client, rt),
    ):
        yield Stack(ingest, client, rt, infra.kafka_bootstrap, billing.kafka.topic_prefix)


@pytest.fixture(scope="module")
def seen() -> dict[str, Any]:
    """What earlier tests read, for the rebuild test to read again."""
    return {}


async def command(s: Stack, url: str, body: Any, *, method: str = "POST") -> dict[str, Any]:
    r = await s.billing.request(method, url, json=body, headers=OPERATOR)
    assert r.status_code == 202, r.text
    out: dict[str, Any] = r.json()
    return out


async def get(s: Stack, url: str, **params: str) -> httpx.Response:
    return await s.billing.get(url, params=params, headers=OPERATOR)


async def projected(s: Stack, url: str) -> dict[str, Any]:
    async def found() -> dict[str, Any] | None:
        r = await get(s, url)
        return r.json() if r.status_code == 200 else None

    body = await eventually(found, what=f"{url} projected")
    assert body is not None
    return body


async def plan(s: Stack, **fields: Any) -> str:
    plan_id: str = (await command(s, "/v1/plans", fields))["id"]
    await projected(s, f"/v1/plans/{plan_id}")
    return plan_id


def sold(
    account: uuid.UUID, buyer: uuid.UUID, price: str, at: dt.datetime = NOW
) -> tuple[ev.LeadSold, uuid.UUID]:
    lead = uuid.uuid4()
    event = ev.LeadSold.new(
        account_id=account,
        correlation_id=lead,
        producer="test",
        occurred_at=at,
        payload=ev.LeadSoldPayload(
            lead_id=lead,
            campaign_id=uuid.uuid4(),
            source_id=uuid.uuid4(),
            buyer_id=buyer,
            delivery_id=uuid.uuid4(),
            price=D(price),
            payout=D("5.00"),
        ),
    )
    return event, lead


def usage(account: uuid.UUID, n: int) -> list[tuple[ev.UsageIncremented, uuid.UUID]]:
    return [
        (
            ev.UsageIncremented.new(
                account_id=account,
                correlation_id=lead,
                producer="test",
                payload=ev.UsageIncrementedPayload(
                    metric=ev.UsageMetric.LEADS_RECEIVED, subject_id=lead
                ),
            ),
            account,
        )
        for lead in (uuid.uuid4() for _ in range(n))
    ]


async def post(s: Stack, auth: dict[str, str]) -> httpx.Response:
    return await s.ingest.client.post("/v1/leads", json=LEAD, headers=auth)


async def test_an_account_at_its_plan_cap_is_refused_at_ingest_until_its_plan_allows_more(
    stack: Stack, seen: dict[str, Any]
) -> None:
    (src,) = await configure(stack.ingest)
    account = src.account_id
    capped = await plan(
        stack,
        name="Starter",
        monthly_fee="49.00",
        included_leads=2,
        overage_price="1.50",
        hard_cap=3,
    )
    sub = await command(
        stack, f"/v1/accounts/{account}/subscriptions", {"plan_id": capped, "start_month": MONTH}
    )
    await eventually(lambda: _subscribed(stack, account), what="subscription projected")
    for _ in range(3):
        r = await post(stack, src.auth)
        assert r.status_code == 202, r.text

    async def refused() -> httpx.Response | None:
        r = await post(stack, src.auth)
        return r if r.status_code == 429 else None

    refusal = await eventually(refused, what="ingest refuses the account over its plan")
    assert refusal is not None
    error = refusal.json()["error"]
    assert (error["code"], error["reason"]) == ("account_over_plan", "account_over_plan")
    assert "Starter" in error["detail"] and "cap of 3 leads" in error["detail"]
    assert error["resets_at"] == NEXT.isoformat()
    assert 0 < int(refusal.headers["retry-after"]) <= (NEXT - NOW).total_seconds() + 60
    # Enforced once billing's word reaches ingest: posts in flight meanwhile get in (and
    # are metered and billed as overage), none after.
    taken = await stack.ingest.count("leads", "source_id = :s", s=src.source_id)
    assert taken >= 3

    async def metered() -> dict[str, Any] | None:
        limit = (await get(stack, f"/v1/accounts/{account}/limit")).json()
        return limit if limit["used"] == taken else None

    limit = await eventually(metered, what="every accepted lead metered")
    assert limit is not None
    assert (limit["over_plan"], limit["hard_cap"]) == (True, 3)

    # Recorded like every refusal: a LeadRejected with its reason and status.
    lead_id = uuid.UUID(error["lead_id"])

    async def rejected() -> ev.LeadRejected | None:
        events = await stack.ingest.events_of(LEAD_RECEIVED, account)
        return next(
            (e for e in of_type(events, ev.LeadRejected) if e.payload.lead_id == lead_id), None
        )

    event = await eventually(rejected, what="LeadRejected")
    assert event is not None
    assert event.payload.http_status == 429
    assert event.payload.rejections[0].code is ev.RejectionCode.ACCOUNT_OVER_PLAN

    # A bigger plan from this month on lifts the limit: billing says so, ingest accepts.
    bigger = await plan(
        stack, name="Growth", monthly_fee="99.00", included_leads=100, overage_price="1.00"
    )
    await command(
        stack,
        f"/v1/subscriptions/{sub['id']}/change",
        {"plan_id": bigger, "from_month": MONTH},
    )

    async def accepted() -> bool:
        return (await post(stack, src.auth)).status_code == 202

    await eventually(accepted, what="ingest accepts again")
    limits = await read_events(
        stack.bootstrap,
        BILLING_LIMITS.qualified(stack.prefix),
        until=lambda es: len([e for e in es if e.account_id == account]) >= 2,
    )
    mine = [e for e in of_type(limits, ev.AccountLimitChanged) if e.account_id == account]
    assert [(e.payload.over_plan, e.payload.plan_name) for e in mine] == [
        (True, "Starter"),
        (False, "Growth"),
    ]
    assert mine[0].payload.period_end == NEXT
    seen["limit_account"] = account


async def _subscribed(s: Stack, account: uuid.UUID) -> bool:
    r = await get(s, f"/v1/accounts/{account}/subscriptions")
    return bool(r.json())


async def test_an_invoice_lists_fees_charges_returns_and_a_payment_and_equals_the_ledger(
    stack: Stack, seen: dict[str, Any]
) -> None:
    account, b1, b2 = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    pro = await plan(
        stack,
        name='Pro <b>"&"</b>',
        monthly_fee="199.00",
        included_leads=3,
        overage_price="0.75",
    )
    await command(
        stack, f"/v1/accounts/{account}/subscriptions", {"plan_id": pro, "start_month": MONTH}
    )
    (s1, l1), (s2, _), (s3, _) = (
        sold(account, b1, "35.10"),
        sold(account, b1, "20.00"),
        sold(account, b2, "12.35"),
    )
    returned = ev.LeadReturned.new(
        account_id=account,
        correlation_id=l1,
        producer="test",
        payload=ev.LeadReturnedPayload(
            lead_id=l1,
            campaign_id=s1.payload.campaign_id,
            source_id=s1.payload.source_id,
            buyer_id=b1,
            delivery_id=s1.payload.delivery_id,
            return_id=uuid.uuid4(),
            price=D("35.10"),
            payout=D("5.00"),
            reason_code=ev.ReturnReason.FRAUD,
            returned_by="operator:test",
        ),
    )
    await publish(
        stack.bootstrap,
        stack.prefix,
        [
            (s1, l1),
            (s2, s2.payload.lead_id),
            (s3, s3.payload.lead_id),
            (returned, l1),
            *usage(account, 7),
        ],
    )
    payment = await command(
        stack,
        f"/v1/accounts/{account}/payments",
        {
            "amount": "150.00",
            "method": "card",
            "reference": "PO-7781",
            "provider": "stripe",
            "provider_ref": "ch_3PqRsT",
        },
    )

    async def all_in() -> bool:
        body = (await get(stack, f"/v1/accounts/{account}/ledger-totals", month=MONTH)).json()
        statement = (await get(stack, f"/v1/accounts/{account}/statement", month=MONTH)).json()
        return bool(
            body["totals"]["returns"] == "-35.10"
            and body["totals"]["payments"] == "-150.00"
            and statement["usage"].get("leads_received") == 7
        )

    await eventually(all_in, what="sales, return, usage and payment projected")
    r = await stack.billing.post(
        f"/v1/accounts/{account}/invoices", json={"month": MONTH}, headers=OPERATOR
    )
    assert r.status_code == 202, r.text
    invoice_id = r.json()["invoice_id"]
    invoice = await projected(stack, f"/v1/invoices/{invoice_id}")
    assert invoice == r.json()  # as issued, as projected
    assert [(li["kind"], li["quantity"], li["amount"]) for li in invoice["lines"]] == [
        ("plan_fee", 1, "199.00"),
        ("overage", 4, "3.00"),
        *sorted(
            [("lead_charges", 2, "55.10"), ("lead_charges", 1, "12.35")],
            key=lambda x: str(b1 if x[2] == "55.10" else b2),
        ),
        ("returns", 1, "-35.10"),
        ("payment", 1, "-150.00"),
    ]
    pay_line = invoice["lines"][-1]
    assert pay_line["reference"] == "PO-7781" and "stripe ch_3PqRsT" in pay_line["description"]
    assert invoice["totals"]["amount_due"] == "52.00"  # 199 + 3 - 150

    # The invoice reconciles with the ledger to the cent, total by total.
    ledger = (await get(stack, f"/v1/accounts/{account}/ledger-totals", month=MONTH)).json()
    assert ledger["totals"] == invoice["totals"]
    balances = (await get(stack, f"/v1/accounts/{account}/balances")).json()["balances"]
    assert D(balances[f"account:{account}:platform_payable"]) == -D("52.00")
    assert sum(D(v) for v in balances.values()) == 0
    check = (await get(stack, "/v1/ledger/check")).json()
    assert check == {"balanced": True, "unbalanced": []}

    # One invoice in force per period.
    again = await stack.billing.post(
        f"/v1/accounts/{account}/invoices", json={"month": MONTH}, headers=OPERATOR
    )
    assert again.status_code == 409 and again.json()["error"]["code"] == "invoice_exists"

    # CSV and HTML say the same, the HTML escaped.
    text_csv = await get(stack, f"/v1/invoices/{invoice_id}.csv")
    assert text_csv.status_code == 200 and text_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(text_csv.text)))
    lines = [r for r in rows if r["kind"] != "total"]
    assert sum(D(r["amount"]) for r in lines) == D("84.35")  # every line, signed
    assert {r["description"]: r["amount"] for r in rows if r["kind"] == "total"}[
        "amount_due"
    ] == "52.00"
    page = await get(stack, f"/v1/invoices/{invoice_id}.html")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<b>" not in page.text and "Pro &lt;b&gt;&quot;&amp;&quot;&lt;/b&gt; plan" in page.text
    assert "52.00" in page.text

    # Paid, naming the payment; a paid invoice cannot be voided.
    await command(stack, f"/v1/invoices/{invoice_id}/pay", {"payment_id": payment["id"]})

    async def paid() -> bool:
        return bool((await get(stack, f"/v1/invoices/{invoice_id}")).json()["status"] == "paid")

    await eventually(paid, what="invoice paid")
    r = await stack.billing.post(
        f"/v1/invoices/{invoice_id}/void", json={"reason": "late"}, headers=OPERATOR
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_transition"
    assert (await get(stack, f"/v1/invoices/{uuid.uuid4()}")).status_code == 404
    bad = await stack.billing.post(
        f"/v1/accounts/{account}/payments",
        json={"amount": "-1", "method": "card"},
        headers=OPERATOR,
    )
    assert bad.status_code == 422
    seen["invoice"] = (account, invoice_id)


async def test_a_prepaid_buyer_out_of_funds_is_published_and_again_when_topped_up(
    stack: Stack, seen: dict[str, Any]
) -> None:
    account, buyer = uuid.uuid4(), uuid.uuid4()
    base = f"/v1/accounts/{account}/buyers/{buyer}"
    deposit = {"amount": "50.00", "method": "wire", "reference": "WIRE-1"}
    await command(stack, f"{base}/deposits", deposit)
    funds = await projected(stack, f"{base}/funds")
    assert (funds["balance"], funds["has_funds"]) == ("50.00", True)
    first, second = sold(account, buyer, "30.00"), sold(account, buyer, "25.00")
    await publish(stack.bootstrap, stack.prefix, [first, second])

    async def spent() -> dict[str, Any] | None:
        body = (await get(stack, f"{base}/funds")).json()
        return body if body["balance"] == "-5.00" else None

    drawn = await eventually(spent, what="sales drawn")
    assert drawn is not None and drawn["has_funds"] is False
    await command(stack, f"{base}/deposits", {**deposit, "amount": "100.00"})
    topic = BILLING_LIMITS.qualified(stack.prefix)

    async def changes() -> list[ev.BuyerFundsChanged]:
        events = await read_events(stack.bootstrap, topic, until=lambda es: False, timeout=1)
        return [e for e in of_type(events, ev.BuyerFundsChanged) if e.payload.buyer_id == buyer]

    async def both() -> list[ev.BuyerFundsChanged] | None:
        got = await changes()
        return got if len(got) >= 2 else None

    published = await eventually(both, what="BuyerFundsChanged false then true")
    assert published is not None
    out, back = published
    assert (out.payload.has_funds, out.payload.balance, out.account_id) == (
        False,
        D("-5.00"),
        account,
    )
    assert (back.payload.has_funds, back.payload.balance) == (True, D("95.00"))
    seen["funds"] = base


async def _view(s: Stack, seen: dict[str, Any]) -> dict[str, Any]:
    account, invoice_id = seen["invoice"]
    urls = [
        f"/v1/accounts/{account}/statement?month={MONTH}",
        f"/v1/accounts/{account}/balances",
        f"/v1/accounts/{account}/ledger-totals?month={MONTH}",
        f"/v1/invoices/{invoice_id}",
        f"/v1/invoices/{invoice_id}.csv",
        f"/v1/accounts/{seen['limit_account']}/limit",
        f"/v1/accounts/{seen['limit_account']}/subscriptions",
        seen["funds"] + "/funds",
    ]
    out = {}
    for url in urls:
        r = await s.billing.get(url, headers=OPERATOR)
        assert r.status_code == 200, f"{url}: {r.text}"
        out[url] = r.text
    return out


async def test_billing_rebuilt_from_the_log_answers_the_same(
    stack: Stack, seen: dict[str, Any]
) -> None:
    before = await _view(stack, seen)
    live = stack.billing_rt.settings
    _, differences = await verify_projection("billing", live=live)
    assert differences == []
    stats = await rebuild_projection("billing", fresh=True, live=live)
    assert stats.applied > 0 and stats.skipped_failing == 0
    assert await _view(stack, seen) == before
