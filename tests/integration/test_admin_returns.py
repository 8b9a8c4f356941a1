"""Returns through admin, in-process against real Kafka and PostgreSQL.

Sales reach admin as ``LeadSold`` on ``delivery.outcome`` (published here as delivery
would); buyers see and return their own sales with a buyer-scoped token, operators any
sale; each return is published as ``LeadReturned`` with the sale's price and payout.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest
from lx_admin.main import create_service
from lx_admin.settings import AdminSettings
from lx_devstack.infra import Infra
from lx_platform.runtime import Runtime
from lx_schemas import events as ev
from lx_schemas.topics import DELIVERY_OUTCOME
from sqlalchemy import text

from tests.support.dns import StubDns
from tests.support.kafka import of_type, publish, read_events
from tests.support.services import OPERATOR, eventually, hosted, settings_for

DNS = StubDns({"buyer.example": ["93.184.216.34"]})
FIELDS = [
    {"name": "email", "type": "email", "required": True, "pii": True},
    {"name": "state", "type": "us_state", "required": True},
]
NOW = dt.datetime.now(dt.UTC)


@dataclass
class World:
    client: httpx.AsyncClient
    rt: Runtime
    bootstrap: str
    account_id: uuid.UUID
    campaign_id: uuid.UUID
    source_id: uuid.UUID
    buyers: dict[str, uuid.UUID]  # weekly (7-day window), other (7 days), strict (no returns)
    leads: dict[str, uuid.UUID]
    sales: dict[uuid.UUID, ev.LeadSold]

    @property
    def prefix(self) -> str:
        return self.rt.settings.kafka.topic_prefix

    async def token(self, buyer: str) -> dict[str, Any]:
        r = await self.client.post(
            f"/v1/buyers/{self.buyers[buyer]}/tokens", json={"name": "crm"}, headers=OPERATOR
        )
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body

    async def as_buyer(
        self, token: str, method: str, url: str, body: Any = None, **params: Any
    ) -> httpx.Response:
        headers = {"authorization": f"Bearer {token}"}
        return await self.client.request(method, url, json=body, headers=headers, params=params)

    async def returns_of(self, lead: uuid.UUID) -> list[ev.LeadReturned]:
        """The lead's LeadReturned events on delivery.outcome, once there is one."""

        def found(events: list[Any]) -> list[ev.LeadReturned]:
            return [e for e in of_type(events, ev.LeadReturned) if e.payload.lead_id == lead]

        events = await read_events(
            self.bootstrap,
            DELIVERY_OUTCOME.qualified(self.prefix),
            until=lambda es: bool(found(es)),
        )
        return found(events)


def sold(w: dict[str, Any], lead: uuid.UUID, buyer: uuid.UUID, days_ago: float) -> ev.LeadSold:
    return ev.LeadSold.new(
        account_id=w["account_id"],
        correlation_id=lead,
        producer="delivery",
        occurred_at=NOW - dt.timedelta(days=days_ago),
        payload=ev.LeadSoldPayload(
            lead_id=lead,
            campaign_id=w["campaign_id"],
            source_id=w["source_id"],
            buyer_id=buyer,
            delivery_id=uuid.uuid4(),
            price=Decimal("35.10"),
            payout=Decimal("12.00"),
            buyer_lead_id=f"crm-{lead.hex[:6]}",
        ),
    )


@pytest.fixture(scope="module")
async def world(infra: Infra, isolation: str) -> AsyncIterator[World]:
    settings = settings_for(AdminSettings, infra, isolation, "admin")
    async with hosted(create_service(settings, resolver=DNS)) as (client, rt):

        async def created(url: str, body: Any) -> dict[str, Any]:
            r = await client.post(url, json=body, headers=OPERATOR)
            assert r.status_code == 201, r.text
            result: dict[str, Any] = r.json()
            return result

        account = await created("/v1/accounts", {"name": "Acme"})
        campaign = await created(
            f"/v1/accounts/{account['account_id']}/campaigns",
            {"name": "Solar", "vertical": "solar", "fields": FIELDS},
        )
        cid = campaign["campaign_id"]
        source = await created(f"/v1/campaigns/{cid}/sources", {"name": "Aff", "payout": "12.00"})
        buyers = {}
        for name, window in (("weekly", 7), ("other", 7), ("strict", 0)):
            b = await created(
                f"/v1/campaigns/{cid}/buyers",
                {
                    "name": name,
                    "endpoint_url": "https://buyer.example/leads",
                    "price": "35.10",
                    "return_window_days": window,
                },
            )
            buyers[name] = uuid.UUID(b["buyer_id"])
        ids = {
            "account_id": uuid.UUID(account["account_id"]),
            "campaign_id": uuid.UUID(cid),
            "source_id": uuid.UUID(source["source_id"]),
        }
        plan = [  # lead name, buyer, days since the sale
            ("fresh", "weekly", 1),
            ("old", "weekly", 10),
            ("fresh2", "weekly", 2),
            ("racy", "weekly", 0.5),
            ("others", "other", 1),
            ("strict", "strict", 0.1),
            ("twice_a", "weekly", 1),
        ]
        leads = {name: uuid.uuid4() for name, _, _ in plan}
        events = [sold(ids, leads[n], buyers[b], d) for n, b, d in plan]
        # Multi-sell: the same lead also sold to "other".
        events.append(sold(ids, leads["twice_a"], buyers["other"], 1))
        await publish(
            infra.kafka_bootstrap,
            settings.kafka.topic_prefix,
            [(e, e.correlation_id) for e in events],
        )

        async def all_sales() -> bool:
            async with rt.db.begin() as conn:
                return await conn.scalar(text("select count(*) from sales")) == len(events)

        await eventually(all_sales, what="admin recorded every sale")
        yield World(
            client,
            rt,
            infra.kafka_bootstrap,
            ids["account_id"],
            ids["campaign_id"],
            ids["source_id"],
            buyers,
            leads,
            {e.payload.delivery_id: e for e in events},
        )


async def test_a_buyer_token_is_shown_once_and_kept_only_as_its_sha256(world: World) -> None:
    created = await world.token("weekly")
    token = created["token"]
    assert token.startswith("lxbt_") and len(token) >= 40
    assert created["token_prefix"] == token[:11]
    r = await world.client.get(f"/v1/buyers/{world.buyers['weekly']}/tokens", headers=OPERATOR)
    assert token not in r.text
    assert created["token_id"] in r.text
    async with world.rt.db.begin() as conn:
        tables = list(
            await conn.scalars(
                text(
                    "select table_name from information_schema.tables"
                    " where table_schema = 'public' and table_type = 'BASE TABLE'"
                )
            )
        )
        for table in tables:
            hits = await conn.scalar(
                text(f"select count(*) from {table} t where t::text like :k"), {"k": f"%{token}%"}
            )
            assert hits == 0, f"the buyer token is stored in {table}"


async def test_a_buyer_sees_only_its_own_sales_page_by_page_without_payouts(world: World) -> None:
    token = (await world.token("weekly"))["token"]
    seen: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        r = await world.as_buyer(token, "GET", "/v1/buyer/deliveries", **params)
        assert r.status_code == 200, r.text
        body = r.json()
        pages += 1
        assert len(body["deliveries"]) <= 2
        seen.extend(body["deliveries"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    mine = {
        str(e.payload.lead_id)
        for e in world.sales.values()
        if e.payload.buyer_id == world.buyers["weekly"]
    }
    assert {d["lead_id"] for d in seen} == mine
    assert len(seen) == len(mine) == 5 and pages == 3
    sold_at = [dt.datetime.fromisoformat(d["sold_at"]) for d in seen]
    assert sold_at == sorted(sold_at, reverse=True)  # newest first
    assert all("payout" not in d for d in seen)  # what the source earns is not its business
    assert all(d["price"] == "35.10" and d["buyer_lead_id"].startswith("crm-") for d in seen)

    r = await world.as_buyer(token, "GET", "/v1/buyer/deliveries", cursor="not a cursor")
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_cursor"


async def test_tokens_open_only_their_own_door(world: World) -> None:
    created = await world.token("other")
    token = created["token"]
    # The operator's token is no buyer's; a buyer's token is no operator's.
    r = await world.client.get("/v1/buyer/deliveries", headers=OPERATOR)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    for method, url in (
        ("GET", f"/v1/campaigns/{world.campaign_id}/buyers"),
        ("POST", f"/v1/buyers/{world.buyers['other']}/tokens"),
        ("GET", f"/v1/leads/{world.leads['others']}/trace"),
    ):
        r = await world.as_buyer(token, method, url)
        assert r.status_code == 401, f"{method} {url}: {r.text}"
    r = await world.as_buyer(
        token, "POST", f"/v1/leads/{world.leads['others']}/returns", {"reason_code": "fraud"}
    )
    assert r.status_code == 401
    for bad in ("", "Bearer ", "Bearer lxbt_guess", f"Basic {token}", token):
        r = await world.client.get("/v1/buyer/deliveries", headers={"authorization": bad})
        assert r.status_code == 401, bad

    assert (await world.as_buyer(token, "GET", "/v1/buyer/deliveries")).status_code == 200
    r = await world.client.delete(
        f"/v1/buyers/{world.buyers['other']}/tokens/{created['token_id']}", headers=OPERATOR
    )
    assert r.status_code == 204, r.text
    r = await world.as_buyer(token, "GET", "/v1/buyer/deliveries")
    assert r.status_code == 401  # revoked
    r = await world.client.get(f"/v1/buyers/{world.buyers['other']}/tokens", headers=OPERATOR)
    (listed,) = [t for t in r.json() if t["token_id"] == created["token_id"]]
    assert listed["revoked_at"] is not None
    # Another buyer's token id is not this buyer's to revoke.
    mine = await world.token("weekly")
    r = await world.client.delete(
        f"/v1/buyers/{world.buyers['other']}/tokens/{mine['token_id']}", headers=OPERATOR
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "token_not_found"
    assert (await world.as_buyer(mine["token"], "GET", "/v1/buyer/deliveries")).status_code == 200


async def test_a_buyer_returns_its_sale_inside_the_window_once(world: World) -> None:
    token = (await world.token("weekly"))["token"]
    lead = world.leads["fresh"]
    url = f"/v1/buyer/leads/{lead}/returns"
    r = await world.as_buyer(
        token, "POST", url, {"reason_code": "invalid_contact", "reason": "phone disconnected"}
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["lead_id"], body["buyer_id"]) == (str(lead), str(world.buyers["weekly"]))
    assert (body["price"], body["returned_by"]) == ("35.10", f"buyer:{world.buyers['weekly']}")
    assert "payout" not in body

    again = await world.as_buyer(token, "POST", url, {"reason_code": "fraud"})
    assert again.status_code == 409, again.text
    assert again.json()["error"]["code"] == "already_returned"

    (event,) = await world.returns_of(lead)
    sale = next(s for s in world.sales.values() if s.payload.lead_id == lead)
    assert event.payload.return_id == uuid.UUID(body["return_id"])
    assert event.payload.delivery_id == sale.payload.delivery_id
    assert (event.payload.price, event.payload.payout) == (Decimal("35.10"), Decimal("12.00"))
    assert event.payload.reason_code is ev.ReturnReason.INVALID_CONTACT
    assert event.payload.reason == "phone disconnected"
    assert event.payload.returned_by == f"buyer:{world.buyers['weekly']}"
    assert (event.account_id, event.correlation_id) == (world.account_id, lead)
    assert (event.payload.source_id, event.payload.campaign_id) == (
        world.source_id,
        world.campaign_id,
    )

    r = await world.as_buyer(token, "GET", "/v1/buyer/deliveries", limit=100)
    (listed,) = [d for d in r.json()["deliveries"] if d["lead_id"] == str(lead)]
    assert listed["returned"]["return_id"] == body["return_id"]


async def test_a_return_outside_the_window_or_to_a_buyer_without_one_is_422(world: World) -> None:
    token = (await world.token("weekly"))["token"]
    r = await world.as_buyer(
        token, "POST", f"/v1/buyer/leads/{world.leads['old']}/returns", {"reason_code": "other"}
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "return_window_closed"
    assert "7-day" in r.json()["error"]["detail"]
    r = await world.client.post(
        f"/v1/leads/{world.leads['strict']}/returns",
        json={"reason_code": "fraud"},
        headers=OPERATOR,
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "return_window_closed"


async def test_another_buyers_lead_is_404_exactly_like_an_unknown_one(world: World) -> None:
    token = (await world.token("weekly"))["token"]
    theirs = await world.as_buyer(
        token, "POST", f"/v1/buyer/leads/{world.leads['others']}/returns", {"reason_code": "fraud"}
    )
    nobody = await world.as_buyer(
        token, "POST", f"/v1/buyer/leads/{uuid.uuid4()}/returns", {"reason_code": "fraud"}
    )
    assert theirs.status_code == nobody.status_code == 404
    assert theirs.json() == nobody.json()
    assert theirs.json()["error"]["code"] == "sale_not_found"
    async with world.rt.db.begin() as conn:
        n = await conn.scalar(
            text("select count(*) from returns where lead_id = :l"), {"l": world.leads["others"]}
        )
    assert n == 0


async def test_an_operator_returns_any_sale_and_names_the_buyer_of_a_multi_sold_lead(
    world: World,
) -> None:
    r = await world.client.post(
        f"/v1/leads/{world.leads['others']}/returns",
        json={"reason_code": "duplicate"},
        headers=OPERATOR,
    )
    assert r.status_code == 201, r.text
    assert (r.json()["returned_by"], r.json()["payout"]) == ("operator", "12.00")

    url = f"/v1/leads/{world.leads['twice_a']}/returns"
    r = await world.client.post(url, json={"reason_code": "duplicate"}, headers=OPERATOR)
    assert r.status_code == 422 and r.json()["error"]["code"] == "buyer_required"
    body = {"reason_code": "duplicate", "buyer_id": str(world.buyers["other"])}
    r = await world.client.post(url, json=body, headers=OPERATOR)
    assert r.status_code == 201, r.text
    assert r.json()["buyer_id"] == str(world.buyers["other"])
    # The lead's sale to the other buyer is untouched and still returnable by its buyer.
    token = (await world.token("weekly"))["token"]
    r = await world.as_buyer(
        token, "POST", f"/v1/buyer/leads/{world.leads['twice_a']}/returns", {"reason_code": "other"}
    )
    assert r.status_code == 201, r.text

    r = await world.client.post(
        f"/v1/leads/{uuid.uuid4()}/returns", json={"reason_code": "fraud"}, headers=OPERATOR
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "sale_not_found"
    r = await world.client.post(
        f"/v1/leads/{world.leads['fresh2']}/returns",
        json={"reason_code": "bored"},
        headers=OPERATOR,
    )
    assert r.status_code == 422 and r.json()["error"]["errors"][0]["field"] == "reason_code"


async def test_concurrent_returns_of_one_sale_record_exactly_one(world: World) -> None:
    lead = world.leads["racy"]
    token = (await world.token("weekly"))["token"]

    async def by_buyer() -> httpx.Response:
        return await world.as_buyer(
            token, "POST", f"/v1/buyer/leads/{lead}/returns", {"reason_code": "fraud"}
        )

    async def by_operator() -> httpx.Response:
        return await world.client.post(
            f"/v1/leads/{lead}/returns", json={"reason_code": "fraud"}, headers=OPERATOR
        )

    answers = await asyncio.gather(*(by_buyer() if i % 2 else by_operator() for i in range(12)))
    codes = sorted(r.status_code for r in answers)
    assert codes == [201] + [409] * 11, [r.text for r in answers]
    async with world.rt.db.begin() as conn:
        n = await conn.scalar(text("select count(*) from returns where lead_id = :l"), {"l": lead})
    assert n == 1
    (won,) = [r for r in answers if r.status_code == 201]
    found = await world.returns_of(lead)
    assert [str(e.payload.return_id) for e in found] == [won.json()["return_id"]]
