""" "Why was my lead rejected?" over HTTP, every service its own process: a refusal at
each stage names its reason to the source, and the operator's trace names it buyer by
buyer. Also a ping-post auction from the ping to the delivered post."""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal
from typing import Any

import httpx
import pytest
from lx_devstack.stack import DEMO_FIELDS, Stack, config_settled, wait_groups_caught_up

from tests.e2e.support import a_lead, buyer_inbox, operator_get, post_lead, wait_for

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class Admin:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.client = httpx.Client(
            base_url=stack.layout.url("admin"),
            headers={"authorization": f"Bearer {stack.layout.operator_token}"},
            timeout=10,
        )

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = self.client.post(path, json=body)
        assert r.status_code == 201, r.text
        created: dict[str, Any] = r.json()
        return created

    def buyer(self, campaign_id: str, name: str, mode: str, **extra: Any) -> str:
        body = {
            "name": name,
            "endpoint_url": f"{self.stack.layout.buyer_url}/buyers/{name.lower()}/{mode}",
            "price": "30.00",
            "timeout_ms": 2000,
            **extra,
        }
        buyer_id: str = self.post(f"/v1/campaigns/{campaign_id}/buyers", body)["buyer_id"]
        return buyer_id


@pytest.fixture(scope="module")
def world(stack: Stack) -> dict[str, Any]:
    admin = Admin(stack)
    account = admin.post("/v1/accounts", {"name": "Reasons Co"})["account_id"]
    dedupe = {"fields": ["email"], "window_days": 30}
    campaign = admin.post(
        f"/v1/accounts/{account}/campaigns",
        {"name": "Refi", "vertical": "mortgage", "fields": DEMO_FIELDS, "dedupe": dedupe},
    )["campaign_id"]
    empty = admin.post(
        f"/v1/accounts/{account}/campaigns",
        {"name": "Nobody buys", "vertical": "mortgage", "fields": DEMO_FIELDS},
    )["campaign_id"]
    auction = admin.post(
        f"/v1/accounts/{account}/campaigns",
        {
            "name": "Auctioned",
            "vertical": "mortgage",
            "fields": DEMO_FIELDS,
            "ping_post": {"enabled": True, "auction_ms": 1500, "ttl_s": 120},
            "margin": {"fixed": "2.00", "percent": "0.00"},
        },
    )["campaign_id"]
    sources = {
        "main": admin.post(f"/v1/campaigns/{campaign}/sources", {"name": "Main", "payout": "10"}),
        "capped": admin.post(
            f"/v1/campaigns/{campaign}/sources",
            {
                "name": "Capped",
                "payout": "10",
                "controls": {"caps": [{"period": "day", "max_leads": 1}]},
            },
        ),
        "empty": admin.post(f"/v1/campaigns/{empty}/sources", {"name": "E", "payout": "10"}),
        "pinger": admin.post(
            f"/v1/campaigns/{auction}/sources", {"name": "Pinger", "payout": {"percent": "50"}}
        ),
    }
    # Open every day but today (UTC): closed whenever this test runs.
    today = WEEKDAYS[dt.datetime.now(dt.UTC).weekday()]
    buyers = {
        "night": admin.buyer(
            campaign,
            "NightOwl",
            "accept",
            priority=1,
            schedule={"windows": [{"days": [d for d in WEEKDAYS if d != today]}]},
        ),
        "texas": admin.buyer(
            campaign,
            "TexasOnly",
            "accept",
            priority=2,
            filters=[{"field": "state", "op": "in", "values": ["TX"], "label": "Texas only"}],
        ),
        "tiny": admin.buyer(
            campaign,
            "TinyCap",
            "accept",
            priority=3,
            caps=[{"period": "total", "max_leads": 1}],
        ),
        "picky": admin.buyer(campaign, "Picky", "reject", priority=4),
    }
    bidders = {
        name: admin.buyer(
            auction,
            name,
            "accept",
            priority=i,
            ping={
                "url": f"{stack.layout.buyer_url}/buyers/{name.lower()}/bid?price={price}&ms={ms}",
                "timeout_ms": 400,
            },
        )
        for i, (name, price, ms) in enumerate(
            [("Low", "20.00", 0), ("High", "44.00", 30), ("Late", "90.00", 900)]
        )
    }
    keys = [account, campaign, empty, auction, *buyers.values(), *bidders.values()]
    keys += [s["source_id"] for s in sources.values()]
    bootstrap, topic, groups = config_settled(stack.layout, stack.infra.kafka_bootstrap)
    prefix = stack.layout.topic_prefix
    wait_groups_caught_up(bootstrap, topic, [*groups, f"{prefix}ingest"], keys=set(keys))
    return {"sources": sources, "buyers": buyers, "bidders": bidders}


def key(world: dict[str, Any], source: str) -> str:
    api_key: str = world["sources"][source]["api_key"]
    return api_key


def refused(r: httpx.Response, status: int, reason: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert error["reason"] == reason, error
    assert error["detail"] and error["lead_id"]
    return error


def source_status(stack: Stack, api_key: str, lead_id: str) -> dict[str, Any]:
    r = httpx.get(
        f"{stack.layout.url('ingest')}/v1/leads/{lead_id}",
        headers={"authorization": f"Bearer {api_key}"},
        timeout=10,
    )
    r.raise_for_status()
    status: dict[str, Any] = r.json()
    return status


def final_status(stack: Stack, api_key: str, lead_id: str) -> dict[str, Any]:
    def decided() -> dict[str, Any] | None:
        status = source_status(stack, api_key, lead_id)
        return status if status["status"] in ("sold", "unsold") else None

    return wait_for(decided, timeout=60, what=f"lead {lead_id} decided")


def test_ingest_refusals_name_their_reason(stack: Stack, world: dict[str, Any]) -> None:
    main = key(world, "main")
    bad = {**a_lead(0), "phone": "12", "state": "XX"}
    error = refused(post_lead(stack, main, bad), 422, "validation")
    assert {e["field"] for e in error["errors"]} == {"phone", "state"}

    first = a_lead(1)
    assert post_lead(stack, main, first).status_code == 202
    error = refused(
        post_lead(stack, main, {**a_lead(2), "email": first["email"]}), 422, "duplicate"
    )
    assert "email" in error["detail"]

    capped = key(world, "capped")
    assert post_lead(stack, capped, a_lead(3)).status_code == 202
    r = post_lead(stack, capped, a_lead(4))
    error = refused(r, 429, "source_cap")
    assert int(r.headers["retry-after"]) > 0
    # The source can ask again later by the id its refusal carried.
    status = source_status(stack, capped, error["lead_id"])
    assert (status["status"], status["reason"]) == ("rejected", "source_cap")


def test_routing_names_each_buyers_reason_to_the_operator_and_codes_to_the_source(
    stack: Stack, world: dict[str, Any]
) -> None:
    main = key(world, "main")
    # A first lead takes TinyCap's only slot (if no earlier test's lead took it); the
    # second finds every buyer closed to it.
    ids = []
    for n in (10, 11):
        r = post_lead(stack, main, a_lead(n))
        assert r.status_code == 202, r.text
        ids.append(r.json()["lead_id"])
        final_status(stack, main, ids[-1])
    assert len(buyer_inbox(stack, "tinycap")) == 1  # its total cap of one held
    unsold = source_status(stack, main, ids[1])
    assert unsold["status"] == "unsold", unsold
    assert {r["code"] for r in unsold["rejections"]} == {
        "schedule_closed",
        "filter",
        "buyer_cap",
        "buyer_rejected",
    }
    assert "Picky" not in str(unsold) and world["buyers"]["picky"] not in str(unsold)

    trace = operator_get(stack, "admin", f"/v1/leads/{ids[1]}/trace")
    why = trace["why"]
    by_buyer = {r["buyer_name"]: r for r in why["reasons"]}
    assert by_buyer["NightOwl"]["code"] == "schedule_closed"
    assert by_buyer["TexasOnly"]["code"] == "filter"
    assert "Texas only" in by_buyer["TexasOnly"]["detail"]
    assert by_buyer["TinyCap"]["code"] == "buyer_cap"
    assert by_buyer["Picky"]["code"] == "buyer_rejected"
    assert "not buying this one" in by_buyer["Picky"]["detail"]  # the buyer's own words


def test_a_campaign_without_buyers_says_so(stack: Stack, world: dict[str, Any]) -> None:
    empty = key(world, "empty")
    r = post_lead(stack, empty, a_lead(20))
    assert r.status_code == 202, r.text
    status = final_status(stack, empty, r.json()["lead_id"])
    assert (status["status"], status["reason"]) == ("unsold", "no_eligible_buyers")


def test_a_ping_is_answered_with_the_best_timely_bid_and_its_post_is_delivered(
    stack: Stack, world: dict[str, Any]
) -> None:
    pinger = key(world, "pinger")
    headers = {"authorization": f"Bearer {pinger}"}
    ingest = stack.layout.url("ingest")
    lead = a_lead(30)
    ping_fields = {k: v for k, v in lead.items() if k in ("state", "zip", "loan_amount")}
    started = time.monotonic()
    r = httpx.post(f"{ingest}/v1/pings", json=ping_fields, headers=headers, timeout=10)
    answered_in = time.monotonic() - started
    assert r.status_code == 200, r.text
    ping = r.json()
    # High's 44.00 wins (Late bid 90.00 past its 400 ms); the source earns half of it.
    assert ping["outcome"] == "bid"
    assert Decimal(ping["price"]) == Decimal("22.00")
    assert answered_in < 10  # answered at once, not after the late buyer's sleep finishes

    r = httpx.post(
        f"{ingest}/v1/pings/{ping['ping_id']}/post", json=lead, headers=headers, timeout=10
    )
    assert r.status_code == 202, r.text
    lead_id = r.json()["lead_id"]
    status = final_status(stack, pinger, lead_id)
    assert status["status"] == "sold"
    assert Decimal(status["payout"]) == Decimal("22.00")
    delivered = [x for x in buyer_inbox(stack, "high") if x["lead_id"] == lead_id]
    assert len(delivered) == 1
    assert not [x for x in buyer_inbox(stack, "late") if x["lead_id"] == lead_id]

    trace = operator_get(stack, "admin", f"/v1/leads/{lead_id}/trace")
    pinged = {
        e["payload"]["buyer_id"]: e["payload"]["result"]
        for e in trace["auction"]["events"]
        if e["type"] == "BuyerPinged"
    }
    bidders = world["bidders"]
    assert pinged == {bidders["Low"]: "bid", bidders["High"]: "bid", bidders["Late"]: "timeout"}
    sold = [e for e in trace["events"] if e["type"] == "LeadSold"]
    assert [e["payload"]["buyer_id"] for e in sold] == [bidders["High"]]
    assert Decimal(sold[0]["payload"]["price"]) == Decimal("44.00")
