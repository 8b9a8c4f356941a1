"""A return moves exactly the sale's price and payout back (real Kafka and PostgreSQL).

Admin and billing run in-process on one topic prefix: a sale is published as delivery
would, admin records it, an operator returns it through admin, admin's outbox publishes
``LeadReturned``, and billing books the reversal once, however often it is delivered.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest
from lx_admin.main import create_service as create_admin
from lx_admin.settings import AdminSettings
from lx_billing.main import create_service as create_billing
from lx_billing.settings import BillingSettings
from lx_devstack.infra import Infra
from lx_platform.runtime import Runtime
from lx_schemas import events as ev
from lx_schemas.topics import DELIVERY_OUTCOME
from sqlalchemy import text

from tests.support.dns import StubDns
from tests.support.kafka import of_type, publish, read_events
from tests.support.services import OPERATOR, eventually, hosted, settings_for

DNS = StubDns({"buyer.example": ["93.184.216.34"]})
PRICE, PAYOUT = Decimal("35.10"), Decimal("12.00")


@dataclass
class Pair:
    admin: httpx.AsyncClient
    admin_rt: Runtime
    billing: httpx.AsyncClient
    billing_rt: Runtime
    bootstrap: str
    prefix: str


@pytest.fixture(scope="module")
async def pair(infra: Infra, isolation: str) -> AsyncIterator[Pair]:
    admin = settings_for(AdminSettings, infra, isolation, "admin")
    billing = settings_for(BillingSettings, infra, isolation, "billing")
    async with (
        hosted(create_admin(admin, resolver=DNS)) as (admin_client, admin_rt),
        hosted(create_billing(billing)) as (billing_client, billing_rt),
    ):
        yield Pair(
            admin_client,
            admin_rt,
            billing_client,
            billing_rt,
            infra.kafka_bootstrap,
            admin.kafka.topic_prefix,
        )


async def created(client: httpx.AsyncClient, url: str, body: Any) -> dict[str, Any]:
    r = await client.post(url, json=body, headers=OPERATOR)
    assert r.status_code == 201, r.text
    result: dict[str, Any] = r.json()
    return result


async def balances(p: Pair, account: str) -> dict[str, Decimal]:
    r = await p.billing.get(f"/v1/accounts/{account}/balances", headers=OPERATOR)
    assert r.status_code == 200, r.text
    return {k: Decimal(v) for k, v in r.json()["balances"].items()}


async def test_a_return_moves_exactly_the_price_and_the_payout_once(pair: Pair) -> None:
    account = await created(pair.admin, "/v1/accounts", {"name": "Acme"})
    aid = account["account_id"]
    campaign = await created(
        pair.admin,
        f"/v1/accounts/{aid}/campaigns",
        {"name": "C", "vertical": "solar", "fields": [{"name": "state", "type": "us_state"}]},
    )
    cid = campaign["campaign_id"]
    source = await created(
        pair.admin, f"/v1/campaigns/{cid}/sources", {"name": "S", "payout": "12.00"}
    )
    buyer = await created(
        pair.admin,
        f"/v1/campaigns/{cid}/buyers",
        {
            "name": "B",
            "endpoint_url": "https://buyer.example/",
            "price": "35.10",
            "return_window_days": 7,
        },
    )
    lead = uuid.uuid4()
    sale = ev.LeadSold.new(
        account_id=uuid.UUID(aid),
        correlation_id=lead,
        producer="delivery",
        occurred_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=3),
        payload=ev.LeadSoldPayload(
            lead_id=lead,
            campaign_id=uuid.UUID(cid),
            source_id=uuid.UUID(source["source_id"]),
            buyer_id=uuid.UUID(buyer["buyer_id"]),
            delivery_id=uuid.uuid4(),
            price=PRICE,
            payout=PAYOUT,
        ),
    )
    await publish(pair.bootstrap, pair.prefix, [(sale, lead)])
    receivable = f"buyer:{buyer['buyer_id']}:receivable"
    payable = f"source:{source['source_id']}:payable"

    async def sale_booked() -> dict[str, Decimal]:
        b = await balances(pair, aid)
        return b if receivable in b else {}

    before = await eventually(sale_booked, what="billing booked the sale")
    assert before == {
        receivable: PRICE,
        f"account:{aid}:lead_revenue": -PRICE,
        f"account:{aid}:source_payouts": PAYOUT,
        payable: -PAYOUT,
    }

    async def sale_known() -> bool:
        async with pair.admin_rt.db.begin() as conn:
            n = await conn.scalar(
                text("select count(*) from sales where lead_id = :l"), {"l": lead}
            )
        return n == 1

    await eventually(sale_known, what="admin recorded the sale")
    r = await pair.admin.post(
        f"/v1/leads/{lead}/returns", json={"reason_code": "fraud"}, headers=OPERATOR
    )
    assert r.status_code == 201, r.text
    return_id = r.json()["return_id"]

    async def return_booked() -> dict[str, Decimal]:
        b = await balances(pair, aid)
        return b if f"account:{aid}:lead_returns" in b else {}

    after = await eventually(return_booked, what="billing booked the return")
    moved = {k: after.get(k, Decimal(0)) - before.get(k, Decimal(0)) for k in {*before, *after}}
    assert {k: v for k, v in moved.items() if v} == {
        receivable: -PRICE,  # the buyer is credited the price
        f"account:{aid}:lead_returns": PRICE,
        payable: PAYOUT,  # the source's payout is clawed back
        f"account:{aid}:source_payouts": -PAYOUT,
    }
    assert sum(after.values()) == 0
    assert after[receivable] == after[payable] == 0

    # The same return delivered again, even as another event, books nothing more.
    events = await read_events(
        pair.bootstrap,
        DELIVERY_OUTCOME.qualified(pair.prefix),
        until=lambda es: bool(of_type(es, ev.LeadReturned)),
    )
    (returned,) = of_type(events, ev.LeadReturned)
    assert str(returned.payload.return_id) == return_id
    copy = returned.model_copy(update={"event_id": uuid.uuid4()})
    await publish(pair.bootstrap, pair.prefix, [(returned, lead), (copy, lead)])

    async def copy_processed() -> bool:
        async with pair.billing_rt.db.begin() as conn:
            n = await conn.scalar(
                text("select count(*) from processed_events where event_id = :e"),
                {"e": copy.event_id},
            )
        return n == 1

    await eventually(copy_processed, what="billing processed the copy")
    assert await balances(pair, aid) == after
    async with pair.billing_rt.db.begin() as conn:
        kinds = list(
            await conn.scalars(
                text("select kind from ledger_transactions where lead_id = :l order by kind"),
                {"l": lead},
            )
        )
    assert kinds == ["lead_return", "lead_sale"]
