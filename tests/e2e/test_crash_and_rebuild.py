"""Survival: kill -9 each service in turn during a stream of leads, then rebuild the
billing and analytics projections from the log and compare."""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter, defaultdict
from decimal import Decimal
from typing import Any

import pytest
from lx_devstack.stack import Seeded, Stack, config_settled, seed
from lx_schemas import events as ev

from tests.e2e.support import LeadStream, buyer_inbox, final_outcomes, operator_get, wait_for

# Every service consumes something; ingest and admin also answer HTTP while they die.
KILL_ORDER = ("router", "delivery", "billing", "analytics", "admin", "ingest")
RATE_PER_S = 15
PRICE = Decimal("35.00")


@pytest.fixture(scope="module")
def demo(stack: Stack) -> Seeded:
    buyer = stack.layout.buyer_url
    return seed(
        stack.layout.url("admin"),
        stack.layout.operator_token,
        [
            ("Picky Lender", f"{buyer}/buyers/picky/reject", "40.00", 1),
            ("Good Lender", f"{buyer}/buyers/good/accept", str(PRICE), 2),
        ],
        wait_ingest_url=stack.layout.url("ingest"),
        wait_for_groups=config_settled(stack.layout, stack.infra.kafka_bootstrap),
    )


@pytest.fixture(scope="module")
def crashed(stack: Stack, demo: Seeded) -> dict[str, Any]:
    """The stream with its kills; returns what happened for the tests to judge."""
    kills = []
    with LeadStream(stack, demo.api_key, rate_per_s=RATE_PER_S) as stream:
        time.sleep(2)
        for name in KILL_ORDER:
            before = len(stream.accepted)
            stack.processes[name].kill9()
            time.sleep(1.0)
            stack.restart(name)
            kills.append((name, before))
            time.sleep(2)
    accepted = set(stream.accepted)
    assert len(accepted) >= 200, f"too few leads accepted to prove anything: {len(accepted)}"
    outcomes = final_outcomes(stack, accepted)
    print(
        f"\ncrash test: {len(accepted)} leads accepted, refused while down: "
        f"{dict(stream.refused)}, kills: {kills}"
    )
    return {"accepted": accepted, "outcomes": outcomes}


def test_every_accepted_lead_reaches_exactly_one_final_outcome(crashed: dict[str, Any]) -> None:
    finals: defaultdict[str, set[tuple[str, str]]] = defaultdict(set)
    for e in crashed["outcomes"]:
        if isinstance(e, ev.LeadSold | ev.LeadUnsold):
            # The outbox may re-send after a crash: the same event id is the same outcome.
            finals[str(e.correlation_id)].add((e.type, str(e.event_id)))
    missing = crashed["accepted"] - set(finals)
    assert not missing, f"{len(missing)} accepted leads have no final outcome"
    several = {lead: f for lead, f in finals.items() if len(f) != 1}
    assert not several, f"leads with more than one final outcome: {several}"
    unsold = {lead for lead, f in finals.items() if any(t != "LeadSold" for t, _ in f)}
    attempts = [
        (
            str(e.correlation_id)[:8],
            e.payload.attempt,
            e.payload.try_number,
            e.payload.result.value,
            e.payload.reason,
        )
        for e in crashed["outcomes"]
        if isinstance(e, ev.DeliveryAttempted) and str(e.correlation_id) in unsold
    ]
    assert not unsold, f"{len(unsold)} leads unsold though the good buyer buys all: {attempts[:12]}"


def test_no_buyer_gets_a_lead_twice(stack: Stack, crashed: dict[str, Any]) -> None:
    repeats = 0
    for buyer in ("picky", "good"):
        deliveries: defaultdict[str, Counter[str]] = defaultdict(Counter)
        for row in buyer_inbox(stack, buyer):
            deliveries[row["lead_id"]][row["delivery_id"]] += 1
        twice = {lead: d for lead, d in deliveries.items() if len(d) > 1}
        assert not twice, f"{buyer} got a lead under two delivery ids: {twice}"
        # The same delivery id again is the outcome-unknown retry the buyer can dedupe.
        repeats += sum(n - 1 for d in deliveries.values() for n in d.values())
        assert crashed["accepted"] <= set(deliveries)
    print(f"\nre-sent with the same delivery id after a crash: {repeats}")


def test_billing_total_equals_the_sum_of_sold_prices(
    stack: Stack, demo: Seeded, crashed: dict[str, Any]
) -> None:
    sold = {
        str(e.correlation_id): e.payload.price
        for e in crashed["outcomes"]
        if isinstance(e, ev.LeadSold)
    }
    expected = sum(sold.values(), Decimal("0.00"))
    month = dt.datetime.now(dt.UTC).strftime("%Y-%m")

    def caught_up() -> dict[str, Any] | None:
        s = operator_get(
            stack, "billing", f"/v1/accounts/{demo.account_id}/statement?month={month}"
        )
        return s if s["sold_leads"] >= len(sold) else None

    statement = wait_for(caught_up, timeout=120, what="billing caught up")
    assert statement["sold_leads"] == len(sold)
    assert Decimal(statement["revenue"]) == expected == PRICE * len(sold)


def _snapshot(stack: Stack, demo: Seeded) -> dict[str, Any]:
    month = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    return {
        "statement": operator_get(
            stack, "billing", f"/v1/accounts/{demo.account_id}/statement?month={month}"
        ),
        "balances": operator_get(stack, "billing", f"/v1/accounts/{demo.account_id}/balances"),
        "hourly": operator_get(
            stack, "analytics", f"/v1/stats/hourly?campaign_id={demo.campaign_id}"
        ),
    }


def test_rebuilding_billing_and_analytics_from_the_log_gives_the_same_state(
    stack: Stack, demo: Seeded, crashed: dict[str, Any]
) -> None:
    sold = sum(
        isinstance(e, ev.LeadSold) for e in {e.event_id: e for e in crashed["outcomes"]}.values()
    )

    def settled() -> dict[str, Any] | None:
        snap = _snapshot(stack, demo)
        lead_rows = [r for r in snap["hourly"] if r["buyer_id"] is None]
        ok = snap["statement"]["sold_leads"] == sold and sum(r["sold"] for r in lead_rows) == sold
        return snap if ok else None

    live = wait_for(settled, timeout=120, what="projections caught up")
    time.sleep(1.0)
    assert _snapshot(stack, demo) == live, "projections still moving after the stream ended"

    for name in ("billing", "analytics"):
        stack.processes[name].stop()
        stack.infra.drop_database(stack.layout.database(name))
        # A rebuild replays the whole log under a consumer group of its own.
        stack.processes[name].env[f"LX_{name.upper()}_CONSUMER_GROUP"] = f"{name}-rebuild"
        stack.start(name)
    rebuilt = wait_for(
        lambda: (s := _snapshot(stack, demo)) == live and s,
        timeout=120,
        what="rebuilt projections equal to the live ones",
    )
    assert rebuilt == live
