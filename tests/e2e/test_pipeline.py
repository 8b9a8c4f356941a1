"""The whole pipeline over HTTP: leads posted to ingest reach the fake buyer, and
billing, analytics and the lead trace tell the same story."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
from lx_devstack.postgres import libpq_dsn
from lx_devstack.stack import Seeded, Stack, config_settled, seed

from tests.e2e.support import a_lead, buyer_inbox, lead_status, operator_get, post_lead, wait_for

LEADS = 20


@pytest.fixture(scope="module")
def demo(stack: Stack) -> Seeded:
    buyer = stack.layout.buyer_url
    return seed(
        stack.layout.url("admin"),
        stack.layout.operator_token,
        [
            ("Picky Lender", f"{buyer}/buyers/picky/reject", "40.00", 1),
            ("Good Lender", f"{buyer}/buyers/good/accept", "35.00", 2),
        ],
        wait_ingest_url=stack.layout.url("ingest"),
        wait_for_groups=config_settled(stack.layout, stack.infra.kafka_bootstrap),
    )


@pytest.fixture(scope="module")
def sold(stack: Stack, demo: Seeded) -> list[str]:
    leads = [a_lead(n) for n in range(LEADS)]
    ids = []
    for lead in leads:
        r = post_lead(stack, demo.api_key, lead)
        assert r.status_code == 202, r.text
        ids.append(r.json()["lead_id"])
    wait_for(
        lambda: all(lead_status(stack, demo.api_key, i) == "sold" for i in ids),
        timeout=90,
        what="every lead sold",
    )
    return ids


def test_every_lead_falls_through_the_picky_buyer_to_the_one_that_buys(
    stack: Stack, demo: Seeded, sold: list[str]
) -> None:
    picky, good = buyer_inbox(stack, "picky"), buyer_inbox(stack, "good")
    assert Counter(r["lead_id"] for r in picky) == Counter(dict.fromkeys(sold, 1))
    assert Counter(r["lead_id"] for r in good) == Counter(dict.fromkeys(sold, 1))
    full = httpx.get(
        f"{stack.layout.buyer_url}/received", params={"buyer": "good", "full": "1"}, timeout=10
    ).json()
    assert all(r["lead"]["email"].endswith("@example.com") for r in full)  # PII decrypted
    assert all(r["lead"]["phone"] == "+14155550132" for r in full)  # normalised to E.164


def test_the_trace_tells_a_leads_whole_story(stack: Stack, sold: list[str]) -> None:
    trace = operator_get(stack, "admin", f"/v1/leads/{sold[0]}/trace")
    assert trace["status"] == "sold"
    assert [e["type"] for e in trace["events"]] == [
        "LeadReceived",
        "LeadRouted",
        "DeliveryAttempted",
        "LeadRouted",
        "DeliveryAttempted",
        "LeadSold",
    ]
    assert [
        e["payload"].get("result") for e in trace["events"] if e["type"] == "DeliveryAttempted"
    ] == ["rejected", "accepted"]
    assert trace["deliveries_error"] is None
    deliveries = trace["deliveries"]
    assert [d["result"] for d in deliveries] == ["rejected", "accepted"]
    (try_,) = deliveries[1]["tries"]
    assert try_["request"]["headers"]["X-LeadExchange-Delivery-Id"] == deliveries[1]["delivery_id"]
    assert '"status":"accepted"' in try_["response"]["body"]
    assert "@example.com" in try_["request"]["body"]
    # The trace's events themselves carry no PII.
    assert "@example.com" not in str(trace["events"])


def test_billing_books_every_sale_in_usd_to_the_cent(
    stack: Stack, demo: Seeded, sold: list[str]
) -> None:
    month = dt.datetime.now(dt.UTC).strftime("%Y-%m")

    def caught_up() -> dict[str, Any] | None:
        s = operator_get(
            stack, "billing", f"/v1/accounts/{demo.account_id}/statement?month={month}"
        )
        return s if s["sold_leads"] == LEADS else None

    statement = wait_for(caught_up, what="billing caught up")
    assert Decimal(statement["revenue"]) == Decimal("35.00") * LEADS
    assert statement["usage"] == {"leads_received": LEADS, "leads_sold": LEADS}
    balances = operator_get(stack, "billing", f"/v1/accounts/{demo.account_id}/balances")
    assert sum(Decimal(v) for v in balances["balances"].values()) == 0
    assert Decimal(balances["balances"][f"buyer:{demo.buyer_ids[1]}:receivable"]) == Decimal(
        "700.00"
    )


def test_analytics_counts_per_campaign_source_and_buyer(
    stack: Stack, demo: Seeded, sold: list[str]
) -> None:
    path = f"/v1/stats/hourly?campaign_id={demo.campaign_id}"

    def totals() -> dict[str | None, Counter[str]] | None:
        out: dict[str | None, Counter[str]] = {}
        for row in operator_get(stack, "analytics", path):
            c = out.setdefault(row["buyer_id"], Counter())
            for k in ("received", "offered", "sold", "unsold", "rejected", "errors"):
                c[k] += row[k]
            c["revenue_cents"] += int(Decimal(row["revenue"]) * 100)
        return out if out.get(None, Counter())["sold"] == LEADS else None

    by_buyer = wait_for(totals, what="analytics caught up")
    picky, good = demo.buyer_ids
    assert by_buyer[None] == Counter(received=LEADS, sold=LEADS)
    assert by_buyer[picky] == Counter(offered=LEADS, rejected=LEADS)
    assert by_buyer[good] == Counter(offered=LEADS, sold=LEADS, revenue_cents=3500 * LEADS)


def test_bad_input_gets_the_right_4xx_and_leaves_nothing_behind(
    stack: Stack, demo: Seeded, sold: list[str]
) -> None:
    dsn = libpq_dsn(stack.infra.dsn(stack.layout.database("ingest")))

    def counts() -> tuple[int, int]:
        with psycopg.connect(dsn) as conn:
            leads = conn.execute("select count(*) from leads").fetchone()
            keys = conn.execute("select count(*) from lead_keys").fetchone()
        assert leads is not None and keys is not None
        return leads[0], keys[0]

    before = counts()
    url = f"{stack.layout.url('ingest')}/v1/leads"
    auth = {"authorization": f"Bearer {demo.api_key}"}
    cases = [
        (
            httpx.post(url, json=a_lead(1), headers={"authorization": "Bearer lxsk_wrong"}),
            401,
            "invalid_api_key",
        ),
        (httpx.post(url, content=b"{not json", headers=auth), 400, "malformed_json"),
        (httpx.post(url, json=["a", "list"], headers=auth), 400, "malformed_json"),
        (httpx.post(url, content=b"x" * 70_000, headers=auth), 413, "payload_too_large"),
        (
            httpx.post(url, json={**a_lead(1), "email": "nope", "zip": "1"}, headers=auth),
            422,
            "invalid_fields",
        ),
    ]
    for response, status, code in cases:
        assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    invalid = cases[-1][0].json()["error"]["errors"]
    assert {(e["field"], e["code"]) for e in invalid} == {
        ("email", "invalid_email"),
        ("zip", "invalid_zip"),
    }
    assert counts() == before
